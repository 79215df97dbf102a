import pytest
import torch

from sweepcnn.tracking import read_history
from sweepcnn.train.engine import Progress
from sweepcnn.train.schedules import WARM_RESTART
from tests.helpers import FAST, train


@pytest.mark.parametrize("monitor, values, best_epoch, stop_after", [
    ("val_acc", [0.5, 0.6, 0.6, 0.59, 0.58], 2, 5),
    ("val_loss", [1.0, 0.9, 0.95, 0.96, 0.97], 2, 5),
])
def test_progress_tracks_best_and_patience(monitor, values, best_epoch, stop_after):
    progress = Progress()
    for epoch, value in enumerate(values, 1):
        progress.update({"epoch": epoch, monitor: value}, monitor, min_delta=0.0)
    assert progress.best_epoch == best_epoch and progress.bad_epochs == len(values) - best_epoch


def test_min_delta():
    progress = Progress()
    progress.update({"epoch": 1, "val_acc": 0.5}, "val_acc", 0.01)
    assert not progress.update({"epoch": 2, "val_acc": 0.505}, "val_acc", 0.01)
    assert progress.update({"epoch": 3, "val_acc": 0.52}, "val_acc", 0.01)


def test_a_signal_during_a_checkpoint_write_stops_the_run_after_the_write(tmp_path, monkeypatch):
    import os
    import signal

    import sweepcnn.train.checkpoint
    from sweepcnn.train.checkpoint import load_checkpoint, save_atomic
    from sweepcnn.runtime import Interrupted, install_signal_handlers

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    real_save = sweepcnn.train.checkpoint.torch.save

    def save_then_get_terminated(obj, f):  # SIGTERM lands in the middle of torch.save
        real_save(obj, f)
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(b"")  # Python code after the signal: where the handler would run if not deferred

    try:
        install_signal_handlers()
        monkeypatch.setattr(sweepcnn.train.checkpoint.torch, "save", save_then_get_terminated)
        with pytest.raises(Interrupted):
            save_atomic({"x": torch.arange(3)}, tmp_path / "last.pt")
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["x"], torch.arange(3))  # written whole, then stopped
    assert not list(tmp_path.glob(".last.pt.*"))


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_resume_with_more_epochs_extends_the_schedule(tmp_path, scheduler):
    args = ["--data=digits", "--max_images_per_class=30", f"--scheduler={scheduler}", f"--out_dir={tmp_path}",
            "--run_name=r", "--report=false", *FAST]
    train(*args, "--epochs=2")
    proc = train("--resume", "--run_name=r", f"--out_dir={tmp_path}", "--epochs=3", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]  # onecycle: "Tried to step 13 times" before
    history = read_history(tmp_path / "r")
    assert [row["epoch"] for row in history] == [1, 2, 3]
    # cosine had reached 0 (onecycle nearly): a warm restart (see tests/sweepcnn/train/test_optim.py for the rest)
    assert history[2]["learning_rate"] == pytest.approx(WARM_RESTART * 1e-3)
