import os

import pytest
import torch

from tests.helpers import IMAGENETTE

# Tests never talk to a W&B server and never write into the user's cache; each test that wants offline W&B
# sets it explicitly.
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TQDM_DISABLE", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(no_gpu)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SWEEPCNN_CACHE", str(tmp_path_factory.mktemp("cache")))
    # offline W&B runs stage their model artifacts for `wandb sync` under WANDB_DATA_DIR (default ~/.local/share)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path_factory.mktemp("wandb-data")))


@pytest.fixture
def imagenette():
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"imagenette not found at {IMAGENETTE}")
    return IMAGENETTE
