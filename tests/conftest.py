import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never talk to a W&B server and never write into the user's cache; each test that wants offline W&B
# sets it explicitly.
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SWEEPCNN_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def imagenette() -> Path:
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"imagenette not found at {IMAGENETTE}")
    return IMAGENETTE


def run_script(script: str, *args: str, env: dict | None = None, check: bool = True, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """Run a repository script (e.g. part_a/train.py) from the repository root; fail with its output if check."""
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def python() -> str:
    return sys.executable


def write_class_folders(root: Path, classes=("cat", "dog", "owl"), per_class: int = 10, size=(40, 30)) -> Path:
    """Tiny real JPEGs, one colour tint per class (learnable), in `root/<class>/`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(abs(hash(str(root))) % 2**32)
    tints = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(0, 60, (size[1], size[0], 3))
            pixels = np.clip(np.array(tints[c % len(tints)]) + noise, 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"img_{i:03d}.jpg", quality=90)
    return root
