"""The LR schedules that torch lacks: the cosine plan, a warm-up in front of a length-free schedule, and a schedule
re-planned when a resumed run's length changed (see `sweepcnn.train.optim`, which builds and restores them).

All of them keep their state in plain numbers, so checkpoints load with `weights_only=True`.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

# Extending a finished (or nearly finished) cosine/onecycle run restarts its LR at this fraction of the peak (a warm
# restart, as in SGDR), never at 0.
WARM_RESTART = 0.1


class Cosine:
    """LambdaLR factor: linear warm-up over `warmup` steps, then a half cosine from 1 to 0 at step `total`.
    An object, not a function: LambdaLR's state_dict then records the plan, which a resumed run compares with its
    new length."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))))


class WarmUp:
    """A linear warm-up over the first `steps` batches in front of a length-free schedule (`main`, or None for a
    constant LR), stepped per batch. `main` steps every batch (`per_batch`) or once every `per_epoch` batches, and
    always sees the learning rates it would have had without the warm-up."""

    def __init__(self, optimizer: torch.optim.Optimizer, main: Any, steps: int, per_epoch: int, per_batch: bool):
        self.optimizer, self.main, self.steps, self.per_epoch, self.per_batch = (
            optimizer, main, steps, per_epoch, per_batch)
        self.batch = 0
        self.main_lrs = [g["lr"] for g in optimizer.param_groups]
        self._apply()

    def _apply(self) -> None:
        scale = min(1.0, (self.batch + 1) / self.steps)
        for group, lr in zip(self.optimizer.param_groups, self.main_lrs):
            group["lr"] = lr * scale

    def step(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.main_lrs):
            group["lr"] = lr
        self.batch += 1
        if self.main is not None and (self.per_batch or self.batch % self.per_epoch == 0):
            self.main.step()
        self.main_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self._apply()

    def state_dict(self) -> dict:
        return {"warmup": {"batch": self.batch, "steps": self.steps, "main_lrs": list(self.main_lrs)},
                "main": self.main.state_dict() if self.main is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.batch, self.steps = state["warmup"]["batch"], state["warmup"]["steps"]
        self.main_lrs = list(state["warmup"]["main_lrs"])
        if self.main is not None:
            self.main.load_state_dict(state["main"])


class Replanned:
    """A cosine or onecycle schedule re-planned at step `origin` over a new length: `segments` of
    [end step, start factor, end factor, "cos" | "linear"], factors of each group's `peaks` LR. Where the original
    schedule cycled momentum (onecycle), it follows the LR inversely between each group's `momenta` bounds."""

    def __init__(self, optimizer: torch.optim.Optimizer, plan: dict):
        self.optimizer, self.plan = optimizer, plan

    @property
    def last_step(self) -> int:
        return self.plan["step"]

    @property
    def total(self) -> int:
        return self.plan["segments"][-1][0]

    def factor(self, step: int) -> float:
        start = self.plan["origin"]
        for end, first, last, shape in self.plan["segments"]:
            if step < end or end == self.total:
                pct = min(1.0, (step - start) / max(1, end - start))
                if shape == "linear":
                    return first + (last - first) * pct
                return last + (first - last) * 0.5 * (1 + math.cos(math.pi * pct))
            start = end
        raise AssertionError("unreachable: the last segment ends at the total")

    def apply(self) -> None:
        f = self.factor(self.plan["step"])
        momenta = self.plan["momenta"] or [None] * len(self.plan["peaks"])
        for group, peak, bounds in zip(self.optimizer.param_groups, self.plan["peaks"], momenta):
            group["lr"] = peak * f
            if bounds is not None:
                momentum = bounds[1] - (bounds[1] - bounds[0]) * min(1.0, f)
                if "betas" in group:
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum

    def step(self) -> None:
        self.plan["step"] += 1
        self.apply()

    def state_dict(self) -> dict:
        return {"replanned": copy.deepcopy(self.plan)}

    def load_state_dict(self, state: dict) -> None:
        self.plan = copy.deepcopy(state["replanned"])


def planned_steps(scheduler: Any) -> int | None:
    """The length (in batches) a cosine or onecycle schedule was planned for; None for length-free schedules."""
    if isinstance(scheduler, LambdaLR) and isinstance(scheduler.lr_lambdas[0], Cosine):
        return scheduler.lr_lambdas[0].total
    if isinstance(scheduler, OneCycleLR):
        return scheduler.total_steps
    if isinstance(scheduler, Replanned):
        return scheduler.total
    return None


def _shape_of(scheduler: Any) -> dict:
    """What re-planning needs of a schedule: its step, peaks, current factor, warm-up end, final factor, momenta."""
    groups = scheduler.optimizer.param_groups
    if isinstance(scheduler, Replanned):
        return {**scheduler.plan, "now": scheduler.factor(scheduler.last_step)}
    if isinstance(scheduler, OneCycleLR):
        momenta = None
        if scheduler.cycle_momentum:
            momenta = [[g["base_momentum"], g["max_momentum"]] for g in groups]
        end = groups[0]["min_lr"] / groups[0]["max_lr"]
        # after its last planned step, OneCycleLR extrapolates its curve back up: the schedule had ended
        now = groups[0]["lr"] / groups[0]["max_lr"] if scheduler.last_epoch < scheduler.total_steps else end
        return {"step": scheduler.last_epoch, "peaks": [g["max_lr"] for g in groups], "now": now, "end": end,
                "rise": round(scheduler._schedule_phases[0]["end_step"] + 1), "rise_shape": "cos",
                "momenta": momenta}
    plan = scheduler.lr_lambdas[0]
    return {"step": scheduler.last_epoch, "peaks": list(scheduler.base_lrs), "now": plan(scheduler.last_epoch),
            "end": 0.0, "rise": plan.warmup, "rise_shape": "linear", "momenta": None}


def replan(scheduler: Any, total: int) -> Any:
    """`scheduler` (cosine, onecycle or an earlier re-plan) continued over `total` batches instead of its planned
    length: a warm-up or rise still under way ends where it was planned to; after it, one cosine from the LR reached
    (at least WARM_RESTART of the peak) down to the schedule's final LR at the new end."""
    shape = _shape_of(scheduler)
    step, rise = shape["step"], shape["rise"]
    if total <= step:  # no batch left to train
        return scheduler
    if step < rise:
        segments = [[min(rise, total), shape["now"], 1.0, shape["rise_shape"]]]
        if rise < total:
            segments.append([total, 1.0, shape["end"], "cos"])
    else:
        segments = [[total, max(shape["now"], WARM_RESTART), shape["end"], "cos"]]
    plan = {"origin": step, "step": step, "segments": segments, "peaks": shape["peaks"], "end": shape["end"],
            "rise": rise, "rise_shape": shape["rise_shape"], "momenta": shape["momenta"]}
    replanned = Replanned(scheduler.optimizer, plan)
    replanned.apply()
    return replanned
