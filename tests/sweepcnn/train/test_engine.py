import io

import pytest
import torch
from torch import nn

from sweepcnn.config import parse_args
from sweepcnn.train.engine import ENGINE_OPTIONS, Progress
from sweepcnn.train.optim import OPTIM_OPTIONS, OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler

DEFAULTS, _ = parse_args([], {**OPTIM_OPTIONS, **ENGINE_OPTIONS})


def _cfg(**overrides):
    return {**DEFAULTS, "epochs": 4, **overrides}


def _lrs(cfg, steps_per_epoch=5):
    model = nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), cfg)
    sched, step_on = build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for epoch in range(cfg["epochs"]):
        for _ in range(steps_per_epoch):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None and step_on == "batch":
                sched.step()
        if sched is not None and step_on == "epoch":
            sched.step()
        if step_on == "plateau":
            sched.step(0.5)  # never improves
    return lrs, opt, sched


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_scheduler_and_optimizer_state_round_trips_with_weights_only(name, optimizer):
    cfg = _cfg(scheduler=name, optimizer=optimizer, warmup_epochs=1.0)
    lrs, opt, sched = _lrs(cfg)
    assert all(lr > 0 for lr in lrs)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict() if sched else None}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    # A fresh optimizer/scheduler restored from the state continues with the same learning rates.
    model = nn.Linear(3, 2)
    opt2 = build_optimizer(model.parameters(), cfg)
    sched2, _ = build_scheduler(opt2, cfg, 5)
    opt2.load_state_dict(state["opt"])
    if sched2 is not None:
        sched2.load_state_dict(state["sched"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_schedule_shapes():
    lrs, _, _ = _lrs(_cfg(scheduler="cosine", warmup_epochs=1.0))
    assert lrs[0] == pytest.approx(1e-3 / 5) and lrs[4] == pytest.approx(1e-3)  # linear warm-up over epoch 1
    assert lrs[-1] < 0.05 * 1e-3 and all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # then cosine decay
    lrs, _, _ = _lrs(_cfg(scheduler="step", step_size=2, gamma=0.1))
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-4)
    lrs, _, _ = _lrs(_cfg(scheduler="onecycle"))
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and max(lrs) == pytest.approx(1e-3, rel=1e-2)
    lrs, _, _ = _lrs(_cfg(scheduler="plateau", plateau_patience=0, gamma=0.5))
    # The first epoch sets the best value, the second does not improve on it: the LR halves after epoch 2.
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(5e-4)
    lrs, _, _ = _lrs(_cfg(scheduler="none"))
    assert set(lrs) == {1e-3}


def test_onecycle_cycles_momentum_for_adam():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), _cfg(optimizer="adam"))
    sched, _ = build_scheduler(opt, _cfg(scheduler="onecycle", optimizer="adam"), 10)
    betas = []
    for _ in range(20):
        opt.step()
        sched.step()
        betas.append(opt.param_groups[0]["betas"][0])
    assert max(betas) - min(betas) > 0.05


def test_nesterov_needs_momentum():
    from sweepcnn.errors import UserError

    with pytest.raises(UserError, match="--nesterov"):
        build_optimizer(nn.Linear(2, 2).parameters(), _cfg(optimizer="sgd", nesterov=True, momentum=0.0))


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
