import os

import pytest

from tests.helpers import IMAGENETTE

# Tests never talk to a W&B server and never write into the user's cache; each test that wants offline W&B
# sets it explicitly.
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SWEEPCNN_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def imagenette():
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"imagenette not found at {IMAGENETTE}")
    return IMAGENETTE
