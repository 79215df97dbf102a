import os
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
