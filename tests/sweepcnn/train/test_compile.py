"""--compile (torch.compile of the model) end to end on the CPU: the same metrics as without, resume, and
checkpoints that hold the model's own parameter names (no torch.compile `_orig_mod.` prefix)."""
import pytest
import torch

from sweepcnn.tracking import read_history
from tests.helpers import FAST, train

# No dropout: compiled code draws its masks from its own generator. SGD: its step is linear in the gradients, so the
# compiled kernels' rounding differences stay that small (Adam's step divides by the gradients' scale: a near-zero
# gradient's rounding can move a weight by a whole learning rate).
TINY = ["--data=digits", "--max_images_per_class=30", "--amp=off", "--deterministic", "--dropout_rate=0",
        "--optimizer=sgd", "--learning_rate=0.05", "--report=false", *FAST]


@pytest.mark.slow
def test_a_compiled_run_matches_an_uncompiled_one_resumes_and_saves_plain_names(tmp_path):
    train(*TINY, "--epochs=2", f"--out_dir={tmp_path}", "--run_name=plain")
    train(*TINY, "--epochs=1", "--compile=true", f"--out_dir={tmp_path}", "--run_name=compiled", timeout=1800)
    train("--resume", "--epochs=2", f"--out_dir={tmp_path}", "--run_name=compiled", timeout=1800)
    plain, compiled = read_history(tmp_path / "plain"), read_history(tmp_path / "compiled")
    assert [row["epoch"] for row in compiled] == [1, 2]
    for ours, theirs in zip(compiled, plain):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-3), (ours["epoch"], key)
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "compiled" / name, weights_only=True)["model"]
        plain_state = torch.load(tmp_path / "plain" / name, weights_only=True)["model"]
        assert list(state) == list(plain_state), name  # no "_orig_mod." prefix
