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
    monkeypatch.setenv("SWEEPCNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def imagenette() -> Path:
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"imagenette not found at {IMAGENETTE}")
    return IMAGENETTE


def python() -> str:
    return sys.executable
