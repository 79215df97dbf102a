"""An exponential moving average of the model's weights (timm's `ModelEmaV3`): after every optimiser step,
ema <- decay * ema + (1 - decay) * weights, for every floating-point tensor of the state dict (BatchNorm's running
statistics included; integer buffers are copied). With warm-up the decay of update t is
min(ema_decay, 1 - t^-3/4) (0 at the first update, which copies the weights), so an average of a few
hundred steps does not start out dominated by the random initialisation.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


WARMUP_POWER = 3 / 4  # timm's advice for runs of fewer than ~100k steps (2/3 for 1M+)


class WeightAverage:
    """The EMA copy of `model` (same device and memory format), updated from it by `update()`."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.source, self.decay, self.warmup = model, decay, warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def decay_at(self, update: int) -> float:
        """The decay of the `update`-th update (counted from 1)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - update ** -WARMUP_POWER)

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = self.decay_at(self.updates)
        averaged, current = [], []
        for ema_value, value in zip(self.module.state_dict().values(), self.source.state_dict().values()):
            if ema_value.is_floating_point():
                averaged.append(ema_value)
                current.append(value.detach())
            else:
                ema_value.copy_(value)
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = state["updates"]


def weight_average(model: nn.Module, cfg: dict) -> WeightAverage | None:
    """The run's EMA of `model` (placed on its device already), or None without --ema."""
    return WeightAverage(model, cfg["ema_decay"], cfg["ema_warmup"]) if cfg["ema"] else None
