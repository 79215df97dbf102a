"""Pretrained ViTs at input sizes other than their weights': position embeddings interpolated on load. The weights are
a local state dict of a vit_b_16 built at 64 px (4x4 patches), so nothing is downloaded."""
import json
from pathlib import Path

import pytest
import torch
from torchvision.models import get_model

from sweepcnn.errors import UserError
from tests.helpers import run_script
from part_b.finetune import main
from part_b.models import load_backbone
from sweepcnn.predictor import Predictor

SAVED_SIZE = 64


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A vit_b_16 built for 64 px (as --weights none builds it) and its state dict's file."""
    torch.manual_seed(0)
    model = get_model("vit_b_16", weights=None, image_size=SAVED_SIZE).eval()
    path = tmp_path_factory.mktemp("weights") / "vit_b_16_64px.pth"
    torch.save(model.state_dict(), path)
    return model, path


def grid(model: torch.nn.Module) -> torch.Tensor:
    """The patch tokens' position embeddings as [side, side, hidden]."""
    patches = model.encoder.pos_embedding[0, 1:].detach()
    side = int(len(patches) ** 0.5)
    return patches.reshape(side, side, -1)


def test_weights_of_another_size_load_with_their_position_embeddings_interpolated(saved):
    original, path = saved
    small = load_backbone("vit_b_16", str(path), 32, 3).model
    assert small.encoder.pos_embedding.shape == (1, 2 * 2 + 1, 768)
    # the class token's embedding is kept, not interpolated
    assert torch.equal(small.encoder.pos_embedding[:, :1], original.encoder.pos_embedding[:, :1])
    # 4x4 -> 2x2 with align_corners: the new grid's corners are the old grid's corners
    assert torch.allclose(grid(small), grid(original)[::3, ::3], atol=1e-6)
    assert torch.equal(small.conv_proj.weight, original.conv_proj.weight)
    assert torch.equal(small.heads.head.weight, original.heads.head.weight)


def test_a_weights_name_from_the_hub_cache_loads_at_another_size(saved, tmp_path, monkeypatch):
    # As if IMAGENET1K_SWAG_E2E_V1 (384 px) had been downloaded: its cache file holds the 64 px state dict.
    _, path = saved
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vit_b_16_swag-9ac1b537.pth").symlink_to(path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    backbone = load_backbone("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", 96, 3)
    assert backbone.weights == "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1" and backbone.preset.input_size == 384
    assert backbone.model.encoder.pos_embedding.shape == (1, 6 * 6 + 1, 768)


def test_weights_at_their_own_size_give_the_original_outputs(saved):
    original, path = saved
    same = load_backbone("vit_b_16", str(path), SAVED_SIZE, 3).model.eval()
    x = torch.randn(2, 3, SAVED_SIZE, SAVED_SIZE)
    with torch.no_grad():
        assert torch.equal(same(x), original(x))


@pytest.mark.slow
def test_an_input_size_off_the_patch_grid_is_refused_before_weights_are_read(tmp_path):
    # The file does not exist: reading it first would say so instead.
    with pytest.raises(UserError) as err:
        main(["--model=vit_b_16", f"--weights={tmp_path / 'missing.pth'}", "--input_size=40", "--dry_run",
              "--num_classes=3"])
    assert str(err.value).startswith("--input_size=40:") and "sizes are 32 and 48" in str(err.value)
    # A weights name with no cache and no network: a download attempt would fail with a --weights error.
    offline = {"TORCH_HOME": str(tmp_path), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = run_script("part_b/finetune.py", "--model=vit_b_16", "--weights=IMAGENET1K_SWAG_E2E_V1",
                      "--input_size=200", "--dry_run", "--num_classes=3", env=offline, check=False)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --input_size=200:") and "multiple of 16" in last and "192 and 208" in last


@pytest.mark.slow
def test_finetune_runs_at_another_size_and_its_best_checkpoint_rebuilds(saved, tmp_path):
    _, path = saved
    run_script("part_b/finetune.py", "--model=vit_b_16", f"--weights={path}", "--input_size=32", "--data=digits",
               "--epochs=1", "--max_images_per_class=5", "--wandb_mode=disabled", f"--out_dir={tmp_path}",
               "--run_name=r")
    run = tmp_path / "r"
    assert json.loads((run / "summary.json").read_text())["input_size"] == 32
    predictor = Predictor([run / "best.pt"], torch.device("cpu"))  # rebuild() without downloads, strict load
    assert predictor.inputs == [(32, 3)] and predictor.models[0].encoder.pos_embedding.shape == (1, 5, 768)
