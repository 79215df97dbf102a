"""Optimisers and LR schedules (sweepcnn.train.optim, sweepcnn.train.schedules): shapes, warm-ups, exact resume and
what extending a run (--resume with more --epochs) does to every schedule."""
import io

import pytest
import torch
from torch import nn

from sweepcnn.config import parse_args
from sweepcnn.errors import UserError
from sweepcnn.train.optim import build_optimizer, build_scheduler, restore_scaler, restore_optimizer, restore_scheduler
from sweepcnn.options import OPTIM_OPTIONS, OPTIMIZERS, SCHEDULERS
from sweepcnn.train.schedules import WARM_RESTART

DEFAULTS = {**parse_args([], OPTIM_OPTIONS)[0], "monitor": "val_acc"}  # the engine's key that plateau reads
PEAK, SPE = 1e-3, 5  # the default --learning_rate; batches per epoch
LENGTH_FREE = ("none", "step", "exponential", "cyclic", "plateau")


def _cfg(**overrides):
    return {**DEFAULTS, "epochs": 4, **overrides}


def _round_trip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _train(cfg, epochs=None, saved=None, stop=None, steps_per_epoch=SPE):
    """Step a schedule planned for `epochs` (default cfg's) as the engine does, from `saved` (a state from an
    earlier call) or from the start, to epoch `stop` (default: the end): the LR (and momentum) of every batch, and
    the state at the end."""
    cfg = {**cfg, "epochs": epochs or cfg["epochs"]}
    torch.manual_seed(0)
    opt = build_optimizer(nn.Linear(3, 2).parameters(), cfg)
    sched, step_on = build_scheduler(opt, cfg, steps_per_epoch)
    done = 0
    if saved is not None:
        opt.load_state_dict(saved["opt"])
        sched = restore_scheduler(sched, saved["sched"])
        done = saved["epochs"]
    lrs, momenta = [], []
    stop = stop or cfg["epochs"]
    for _ in range(done, stop):
        for _ in range(steps_per_epoch):
            group = opt.param_groups[0]
            lrs.append(group["lr"])
            momenta.append(group["betas"][0] if "betas" in group else group.get("momentum"))
            opt.step()
            if sched is not None and step_on == "batch":
                sched.step()
        if sched is not None and step_on == "epoch":
            sched.step()
        if step_on == "plateau":
            sched.step(0.5)  # never improves
    state = _round_trip({"opt": opt.state_dict(), "sched": sched.state_dict() if sched else None,
                         "epochs": stop})
    return lrs, momenta, state


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_scheduler_and_optimizer_state_round_trips_with_weights_only(name, optimizer):
    cfg = _cfg(scheduler=name, optimizer=optimizer, warmup_epochs=1.0)
    whole, _, _ = _train(cfg)
    assert all(lr > 0 for lr in whole)
    first, _, saved = _train(cfg, stop=2)
    rest, _, _ = _train(cfg, saved=saved)
    assert first + rest == whole  # exact: a resumed schedule continues bit for bit


def test_schedule_shapes():
    lrs, _, _ = _train(_cfg(scheduler="cosine", warmup_epochs=1.0))
    assert lrs[0] == pytest.approx(PEAK / 5) and lrs[4] == pytest.approx(PEAK)  # linear warm-up over epoch 1
    assert lrs[-1] < 0.05 * PEAK and all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # then cosine decay
    lrs, _, _ = _train(_cfg(scheduler="step", step_size=2, gamma=0.1))
    assert lrs[9] == pytest.approx(PEAK) and lrs[10] == pytest.approx(PEAK / 10)
    lrs, _, _ = _train(_cfg(scheduler="onecycle"))
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and max(lrs) == pytest.approx(PEAK, rel=1e-2)
    lrs, _, _ = _train(_cfg(scheduler="plateau", plateau_patience=0, gamma=0.5))
    # The first epoch sets the best value, the second does not improve on it: the LR halves after epoch 2.
    assert lrs[9] == pytest.approx(PEAK) and lrs[10] == pytest.approx(PEAK / 2)
    lrs, _, _ = _train(_cfg(scheduler="none"))
    assert set(lrs) == {PEAK}


def test_onecycle_cycles_momentum_for_adam():
    _, betas, _ = _train(_cfg(scheduler="onecycle", optimizer="adam"))
    assert max(betas) - min(betas) > 0.05


def test_nesterov_needs_momentum():
    with pytest.raises(UserError, match="--nesterov"):
        build_optimizer(nn.Linear(2, 2).parameters(), _cfg(optimizer="sgd", nesterov=True, momentum=0.0))


@pytest.mark.parametrize("name", ["none", "step", "exponential", "cyclic"])
def test_warmup_works_in_front_of_every_length_free_schedule(name):
    cfg = _cfg(scheduler=name, step_size=1, gamma=0.5)
    plain, _, _ = _train(cfg)
    warm, _, _ = _train({**cfg, "warmup_epochs": 1.0})
    # a linear ramp over the first epoch's 5 batches, then exactly the schedule without warm-up
    assert warm[:SPE] == pytest.approx([plain[i] * (i + 1) / SPE for i in range(SPE)])
    assert warm[SPE:] == plain[SPE:]


def test_plateau_says_it_ignores_the_warmup(capsys):
    _train(_cfg(scheduler="plateau", warmup_epochs=1.0))
    assert "--warmup_epochs is ignored by --scheduler plateau" in capsys.readouterr().err


@pytest.mark.parametrize("warmup", [0.0, 1.0])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_extending_a_finished_run_works_for_every_schedule_and_never_trains_at_lr_0(name, warmup):
    cfg = _cfg(scheduler=name, warmup_epochs=warmup)
    _, _, finished = _train(cfg)
    extra, _, _ = _train(cfg, epochs=6, saved=finished)  # onecycle: "Tried to step 21 times" before
    assert len(extra) == 2 * SPE and min(extra) > 0
    if name in LENGTH_FREE:  # they just continue, as if the run had been started with --epochs 6
        longer, _, _ = _train(cfg, epochs=6)
        assert extra == longer[4 * SPE:]
    else:  # they had ended near 0: a warm restart at WARM_RESTART of the peak, annealed to the new end
        assert extra[0] == pytest.approx(WARM_RESTART * PEAK)
        assert all(a > b for a, b in zip(extra, extra[1:])) and extra[-1] < 0.01 * PEAK


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_extending_mid_run_continues_from_the_lr_reached(name):
    cfg = _cfg(scheduler=name, epochs=8)
    planned, _, _ = _train(cfg)
    _, _, saved = _train(cfg, stop=4)
    extended, _, _ = _train(cfg, epochs=12, saved=saved)
    assert extended[0] == pytest.approx(planned[4 * SPE])  # no jump where the run stopped
    assert all(a > b for a, b in zip(extended, extended[1:]))
    assert extended[4 * SPE] > planned[-1]  # stretched over the new length: epoch 8 still well above 0
    shortened, _, _ = _train(cfg, epochs=6, saved=saved)  # fewer epochs re-plan the same way
    assert shortened[0] == pytest.approx(planned[4 * SPE]) and len(shortened) == 2 * SPE


@pytest.mark.parametrize("name, warmup", [("cosine", 2.0), ("onecycle", 0.0)])
def test_extending_during_the_warmup_keeps_it(name, warmup):
    cfg = _cfg(scheduler=name, warmup_epochs=warmup, epochs=10)
    planned, _, _ = _train(cfg)
    rise = planned.index(max(planned))  # cosine: the end of the 2-epoch warm-up; onecycle: 30% of 10 epochs
    _, _, saved = _train(cfg, stop=1)
    extended, _, _ = _train(cfg, epochs=20, saved=saved)
    top = extended.index(max(extended))
    assert top + SPE == pytest.approx(rise, abs=1) and max(extended) == pytest.approx(PEAK, rel=1e-3)
    assert all(a <= b for a, b in zip(extended[:top], extended[1:top + 1]))


def test_onecycle_momentum_follows_a_restart():
    cfg = _cfg(scheduler="onecycle", optimizer="sgd", momentum=0.9)
    _, momenta, finished = _train(cfg)
    _, extra, _ = _train(cfg, epochs=6, saved=finished)
    assert momenta[-1] == pytest.approx(0.95, abs=1e-3)  # one-cycle's maximum at its end
    assert extra[0] < momenta[-1] and extra[-1] > extra[0]  # lower at the raised LR, back up as the LR anneals


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_an_extended_run_resumes_exactly_and_can_be_extended_again(name):
    cfg = _cfg(scheduler=name)
    _, _, finished = _train(cfg)
    extended, _, _ = _train(cfg, epochs=8, saved=finished)
    first, _, interrupted = _train(cfg, epochs=8, saved=finished, stop=6)
    rest, _, _ = _train(cfg, epochs=8, saved=interrupted)
    assert first + rest == extended  # the re-planned schedule is saved and restored exactly
    again, _, _ = _train(cfg, epochs=10, saved=interrupted)  # extended a second time, mid-way
    assert again[0] == pytest.approx(max(rest[0], WARM_RESTART * PEAK)) and len(again) == 4 * SPE
    assert all(a > b for a, b in zip(again, again[1:])) and min(again) > 0


def test_a_checkpoint_with_another_kind_of_schedule_is_refused():
    _, _, saved = _train(_cfg(scheduler="step"), stop=2)
    with pytest.raises(UserError, match="another kind of learning-rate schedule"):
        _train(_cfg(scheduler="step", warmup_epochs=1.0), saved=saved)


def test_a_short_finished_onecycle_restarts_at_the_stated_fraction():
    # after its last step OneCycleLR's curve turns back up (here to 0.19 of the peak): the schedule had ended
    cfg = _cfg(scheduler="onecycle", epochs=1)
    _, _, finished = _train(cfg)
    extra, _, _ = _train(cfg, epochs=2, saved=finished)
    assert extra[0] == pytest.approx(WARM_RESTART * PEAK)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("saved_fused, fused", [(False, True), (True, False)])
def test_a_resume_keeps_the_fused_choice_of_the_device_it_resumes_on(name, saved_fused, fused):
    """A run started unfused (CPU, or before fused optimisers) and resumed fused (CUDA), or the other way round; on
    CUDA with fp16 the GradScaler hands a fused optimiser its scale: here on the CPU, which has both forms."""
    cfg = {**parse_args([], OPTIM_OPTIONS)[0], "optimizer": name}
    model = nn.Linear(3, 2)

    def step(optimizer, scaler):
        optimizer.zero_grad()
        scaler.scale(model(torch.randn(4, 3)).square().mean()).backward()
        scaler.step(optimizer)
        scaler.update()

    saved = build_optimizer(model.parameters(), cfg, fused=saved_fused)
    step(saved, torch.amp.GradScaler("cpu", enabled=False))
    optimizer = build_optimizer(model.parameters(), cfg, fused=fused)
    restore_optimizer(optimizer, saved.state_dict())
    assert [group["fused"] for group in optimizer.param_groups] == [fused]
    step(optimizer, torch.amp.GradScaler("cpu"))  # before: AssertionError in the unfused step, or a fused step
    # with its counters on the host


def test_a_resume_on_a_card_of_another_precision_restores_the_grad_scaler():
    """Started in bf16 or fp32 (its scaler disabled saved {}), resumed on an fp16 card (a T4, whose scaler is
    enabled), and the other way round: before, load_state_dict raised on the empty state."""
    enabled = torch.amp.GradScaler("cpu", init_scale=1024.0)
    restore_scaler(enabled, torch.amp.GradScaler("cpu", enabled=False).state_dict())
    assert enabled.get_scale() == 1024.0
    scaled = torch.amp.GradScaler("cpu", init_scale=8.0)
    restore_scaler(scaled, enabled.state_dict())
    assert scaled.get_scale() == 1024.0
    restore_scaler(torch.amp.GradScaler("cpu", enabled=False), enabled.state_dict())
