"""Optimisers and learning-rate schedules, built from the config (one phase's, see `sweepcnn.train.engine.Phase`)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from sweepcnn.config import Option, grouped
from sweepcnn.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "exponential", "cosine", "onecycle", "cyclic", "plateau")

OPTIM_OPTIONS = grouped("optimiser and schedule", {
    "learning_rate": Option(1e-3, "peak learning rate", "float", min=1e-12, max=10),
    "optimizer": Option("adam", "optimiser", choices=OPTIMIZERS),
    "momentum": Option(0.9, "momentum for sgd and rmsprop", "float", min=0, max=0.999),
    "nesterov": Option(False, "Nesterov momentum (sgd)", "bool"),
    "weight_decay": Option(0.0, "weight decay (decoupled for adamw)", "float", min=0, max=1),
    "scheduler": Option("cosine", "learning-rate schedule", choices=SCHEDULERS),
    "warmup_epochs": Option(0.0, "linear warm-up (cosine; onecycle's rise when > 0)", "float", min=0),
    "step_size": Option(5, "epochs between decays (step)", "int", min=1),
    "gamma": Option(0.1, "decay factor (step, exponential per epoch, plateau)", "float", min=1e-6, max=1),
    "plateau_patience": Option(2, "epochs without improvement before plateau decays the LR", "int", min=0),
})


def build_optimizer(params: Iterable, cfg: dict) -> torch.optim.Optimizer:
    """cfg's optimiser over `params` (tensors, or groups as dicts with their own "lr")."""
    lr, wd = cfg["learning_rate"], cfg["weight_decay"]
    name = cfg["optimizer"]
    if name == "sgd":
        if cfg["nesterov"] and cfg["momentum"] == 0:
            raise UserError("--nesterov=true needs --momentum > 0")
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.RMSprop(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int
                    ) -> tuple[torch.optim.lr_scheduler.LRScheduler | ReduceLROnPlateau | None, str]:
    """Returns (scheduler or None, when it steps: 'batch' | 'epoch' | 'plateau'). The schedule spans cfg["epochs"]
    (a phase's epochs, when the engine trains in phases)."""
    name, epochs = cfg["scheduler"], max(cfg["epochs"], 1)
    total = epochs * steps_per_epoch
    cycles_momentum = cfg["optimizer"] in ("adam", "adamw") or cfg["momentum"] > 0
    if name == "none":
        return None, "epoch"
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg["step_size"], cfg["gamma"]), "epoch"
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, cfg["gamma"]), "epoch"
    if name == "cosine":
        warmup = round(cfg["warmup_epochs"] * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "batch"
    if name == "onecycle":
        rise = cfg["warmup_epochs"] / epochs if cfg["warmup_epochs"] > 0 else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=min(rise, 0.95), cycle_momentum=cycles_momentum), "batch"
    if name == "cyclic":
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=[g["lr"] / 10 for g in optimizer.param_groups],
            max_lr=[g["lr"] for g in optimizer.param_groups], step_size_up=max(1, 2 * steps_per_epoch),
            cycle_momentum=cycles_momentum), "batch"
    mode = "max" if cfg["monitor"] == "val_acc" else "min"
    return ReduceLROnPlateau(optimizer, mode=mode, factor=cfg["gamma"], patience=cfg["plateau_patience"]), "plateau"
