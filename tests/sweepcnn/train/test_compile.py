"""--compile (torch.compile of the model) end to end on the CPU: the same metrics as without, resume, and
checkpoints that hold the model's own parameter names (no torch.compile `_orig_mod.` prefix)."""
import pytest
import torch

from sweepcnn.tracking import read_history
from tests.helpers import FAST, train

# No dropout: compiled code draws its masks from its own generator. Plain SGD at a small learning rate: the compiled
# kernels round differently (1e-6 in the first step's logits), and training amplifies that step by step; measured
# here, at most 1e-3 in a batch's loss after 8 steps. No schedule: a resume with more epochs re-plans one.
TINY = ["--data=digits", "--max_images_per_class=30", "--amp=off", "--deterministic", "--dropout_rate=0",
        "--optimizer=sgd", "--momentum=0", "--learning_rate=0.01", "--scheduler=none", "--report=false", *FAST]


@pytest.mark.slow
def test_a_compiled_run_matches_an_uncompiled_one_resumes_and_saves_plain_names(tmp_path):
    train(*TINY, "--epochs=2", f"--out_dir={tmp_path}", "--run_name=plain")
    train(*TINY, "--epochs=1", "--compile=true", f"--out_dir={tmp_path}", "--run_name=compiled", timeout=1800)
    train("--resume", "--epochs=2", f"--out_dir={tmp_path}", "--run_name=compiled", timeout=1800)
    plain, compiled = read_history(tmp_path / "plain"), read_history(tmp_path / "compiled")
    assert [row["epoch"] for row in compiled] == [1, 2]
    for ours, theirs in zip(compiled, plain):
        for key, tolerance in (("train_loss", 2e-3), ("val_loss", 2e-3), ("val_acc", 0.04)):  # val_acc: 1 image
            assert ours[key] == pytest.approx(theirs[key], abs=tolerance), (ours["epoch"], key)
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "compiled" / name, weights_only=True)["model"]
        plain_state = torch.load(tmp_path / "plain" / name, weights_only=True)["model"]
        assert list(state) == list(plain_state), name  # no "_orig_mod." prefix
