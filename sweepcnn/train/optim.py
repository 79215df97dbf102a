"""Optimisers and learning-rate schedules, built from the config (one phase's, see `sweepcnn.train.engine.Phase`).

Extending a run (`--resume` with another `--epochs`; Part B's fine_tune: its last phase) continues the schedule:
- none, step, exponential, cyclic and plateau do not depend on the run's length: they just go on;
- cosine and onecycle are planned over the phase's length, so they are re-planned from the epoch where the run
  stopped: a warm-up (cosine) or rise (onecycle) still under way ends where it was planned to; after it, the rest is
  one cosine from the LR reached down to the schedule's final LR at the new end. If the LR reached is below
  WARM_RESTART (a tenth) of the peak (the schedule had ended or nearly), the new cosine starts at a tenth of the
  peak instead: a warm restart as in SGDR, so no epoch trains at LR 0. Onecycle's momentum follows the LR inversely.
Resuming with the same --epochs restores the saved state unchanged (bit-identical to an uninterrupted run).
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from sweepcnn.errors import UserError
from sweepcnn.train.schedules import Cosine, Replanned, WarmUp, planned_steps, replan


def build_optimizer(params: Iterable, cfg: dict, fused: bool = False) -> torch.optim.Optimizer:
    """cfg's optimiser over `params` (tensors, or groups as dicts with their own "lr"). `fused` (for CUDA): one
    kernel per step for sgd, adam and adamw, which also take fp16's GradScaler step without reading its inf check
    back to the host every step (rmsprop has no fused form)."""
    lr, wd = cfg["learning_rate"], cfg["weight_decay"]
    name = cfg["optimizer"]
    fused_kw = {"fused": True} if fused else {}
    if name == "sgd":
        if cfg["nesterov"] and cfg["momentum"] == 0:
            raise UserError("--nesterov=true needs --momentum > 0")
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=wd,
                               **fused_kw)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **fused_kw)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fused_kw)
    return torch.optim.RMSprop(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd)


Scheduler = Any  # a torch LR scheduler, ReduceLROnPlateau, or one of sweepcnn.train.schedules


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int) -> tuple[Scheduler | None, str]:
    """Returns (scheduler or None, when it steps: 'batch' | 'epoch' | 'plateau'). The schedule spans cfg["epochs"]
    (a phase's epochs, when the engine trains in phases)."""
    name, epochs = cfg["scheduler"], max(cfg["epochs"], 1)
    total = epochs * steps_per_epoch
    warmup = round(cfg["warmup_epochs"] * steps_per_epoch)
    cycles_momentum = cfg["optimizer"] in ("adam", "adamw") or cfg["momentum"] > 0
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, Cosine(warmup, total)), "batch"
    if name == "onecycle":
        rise = cfg["warmup_epochs"] / epochs if cfg["warmup_epochs"] > 0 else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=min(rise, 0.95), cycle_momentum=cycles_momentum), "batch"
    if name == "plateau":
        if warmup:
            print("note: --warmup_epochs is ignored by --scheduler plateau (it steps once per epoch, on the "
                  "validation metric)", file=sys.stderr)
        mode = "max" if cfg["monitor"] == "val_acc" else "min"
        return ReduceLROnPlateau(optimizer, mode=mode, factor=cfg["gamma"], patience=cfg["plateau_patience"]), \
            "plateau"
    main, step_on = _length_free(optimizer, cfg, steps_per_epoch, cycles_momentum)
    if not warmup:
        return main, step_on
    return WarmUp(optimizer, main, warmup, steps_per_epoch, step_on == "batch"), "batch"


def _length_free(optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int, cycles_momentum: bool
                 ) -> tuple[Scheduler | None, str]:
    """none, step, exponential or cyclic, without a warm-up."""
    name = cfg["scheduler"]
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg["step_size"], cfg["gamma"]), "epoch"
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, cfg["gamma"]), "epoch"
    if name == "cyclic":
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=[g["lr"] / 10 for g in optimizer.param_groups],
            max_lr=[g["lr"] for g in optimizer.param_groups], step_size_up=max(1, 2 * steps_per_epoch),
            cycle_momentum=cycles_momentum), "batch"
    return None, "epoch"


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimiser state but keep this optimiser's own `fused` choice: a run may resume on another device
    than it started on (or from a checkpoint saved before fused optimisers), and the saved groups' flag would
    override it, leaving an optimiser that takes the fp16 GradScaler's fused arguments into its unfused step (an
    AssertionError). The step counters move to where each form keeps them: the device (fused), the host (unfused)."""
    # each group's own choice (None: the optimiser has no fused form, rmsprop)
    fused = [bool(group["fused"]) if "fused" in group else None for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flag in zip(optimizer.param_groups, fused):
        if flag is None:
            continue
        group["fused"] = flag
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if torch.is_tensor(step):
                optimizer.state[param]["step"] = step.to(device=param.device if flag else "cpu", dtype=torch.float32)


def restore_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Load a saved GradScaler state. `--amp auto` resolves per device, so a run may resume on a card of another
    precision: a disabled scaler (bf16, fp32) saved {}, which an enabled one (fp16, a T4) refuses to load; it then
    starts from its initial scale, as a new fp16 run does."""
    if state:
        scaler.load_state_dict(state)


def restore_scheduler(scheduler: Scheduler | None, state: dict | None) -> Scheduler | None:
    """`scheduler`, freshly built for this phase (after its optimiser's state was loaded), continued from its saved
    `state`; re-planned when the phase's length changed since (see the module docstring)."""
    if scheduler is None:
        return None
    total = planned_steps(scheduler)
    if isinstance(state, dict) and "replanned" in state:
        restored = Replanned(scheduler.optimizer, {})
        restored.load_state_dict(state)
    else:
        if not isinstance(state, dict) or set(state) != set(scheduler.state_dict()):
            raise UserError("--resume: last.pt holds another kind of learning-rate schedule than this run builds "
                            "(it was written by another version of this code, or --scheduler/--warmup_epochs "
                            "differ): resume with the settings and code it was started with, or start a new run")
        scheduler.load_state_dict(state)
        restored = scheduler
    if total is not None and planned_steps(restored) != total:
        return replan(restored, total)
    return restored
