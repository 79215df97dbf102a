"""LR range test (Smith 2017, as fastai's lr_find): train for a few hundred batches while the learning rate grows
exponentially, record the smoothed loss, plot loss against learning rate and suggest a learning rate.

It has `sweepcnn.train.engine.fit`'s signature, so a runner can call it instead of training (`ModelSpec.run`). Parameter groups
keep their ratios to the last group (the head, for Part B): the swept and suggested value is `--learning_rate`.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sweepcnn.data.augment import augmenter
from sweepcnn.data.datasets import Data, make_loader
from sweepcnn.errors import UserError
from sweepcnn.runtime import autocast
from sweepcnn.tracking import active_wandb_run
from sweepcnn.train.engine import Phase, default_phases, place_model
from sweepcnn.train.optim import build_optimizer

SMOOTHING = 0.98  # of the exponential moving average of the loss (bias-corrected)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of the best one


def check_range(cfg: dict) -> None:
    """--lr_find_min must be below --lr_find_max (the test sweeps upwards); for a part's prepare."""
    if cfg["lr_find"] and cfg["lr_find_min"] >= cfg["lr_find_max"]:
        raise UserError(f"--lr_find_min={cfg['lr_find_min']:g} must be below --lr_find_max={cfg['lr_find_max']:g}: "
                        "the test raises the learning rate from the first to the last")


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(the learning rate where the smoothed loss falls fastest, before its minimum; the one at its minimum)."""
    lowest = int(np.argmin(losses))
    if lowest < 2:
        return lrs[lowest], lrs[lowest]
    slopes = np.gradient(np.asarray(losses[: lowest + 1]), np.log10(lrs[: lowest + 1]))
    return lrs[int(np.argmin(slopes))], lrs[lowest]


def plot(lrs: list[float], losses: list[float], suggested: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    index = lrs.index(suggested)
    ax.plot([suggested], [losses[index]], "o", color="red", label=f"suggested {suggested:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def lr_range_test(model: nn.Module, data: Data, cfg: dict, run_dir: Path, log: Callable[[dict, int], None],
                  normalization: tuple[list[float], list[float]], resume: bool = False, extra: dict | None = None,
                  phases: list[Phase] | None = None, train_mode: Callable[[], None] | None = None,
                  test: bool = False) -> dict:
    """Uses the first phase's parameters, the config's optimiser, loss, AMP and augmentation. `log`, `resume` and
    `test` are accepted for fit's signature: there are no epochs to log or resume, and no checkpoint to test."""
    device, amp, batches = place_model(model, cfg, normalization)
    generator = torch.Generator().manual_seed(cfg["seed"])
    loader = make_loader(data.train, cfg["batch_size"], True, cfg, generator, device.type == "cuda")
    batches = batches.augmented(augmenter(cfg, data.train.pixels.shape[1]), torch.Generator().manual_seed(cfg["seed"]))
    optimizer = build_optimizer((phases or default_phases(model))[0].param_groups(), cfg)
    ratios = [g["lr"] / optimizer.param_groups[-1]["lr"] for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])

    start, stop, steps = cfg["lr_find_min"], cfg["lr_find_max"], cfg["lr_find_steps"]
    lrs, losses, raw = [], [], []
    average, best = 0.0, math.inf
    model.train()
    if train_mode is not None:
        train_mode()
    batch_iter = iter(loader)
    for step in tqdm(range(steps), desc="lr_find", unit="batch", disable=None):
        lr = start * (stop / start) ** (step / (steps - 1))
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        try:
            images, labels = next(batch_iter)
        except StopIteration:
            batch_iter = iter(loader)
            images, labels = next(batch_iter)
        images, labels = batches(images, labels)
        with autocast(device, amp):
            loss = loss_fn(model(images).float(), labels)
        if not torch.isfinite(loss):
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        value = loss.item()
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        raw.append(value)
        best = min(best, smoothed)
        if step > 5 and smoothed > DIVERGED * best:
            break
    if not lrs:
        raise FloatingPointError(f"the loss was not finite at --lr_find_min={start}: lower it")
    suggested, at_minimum = suggest(lrs, losses)
    with open(run_dir / "lr_find.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
        writer.writerows((i, lr, loss, smooth) for i, (lr, loss, smooth) in enumerate(zip(lrs, raw, losses)))
    plot(lrs, losses, suggested, run_dir / "lr_find.png")
    run = active_wandb_run()
    if run is not None:
        import wandb

        run.log({"lr_find": wandb.Image(str(run_dir / "lr_find.png"))})
    print(f"lr_find: suggested --learning_rate={suggested:.2e} (steepest fall of the loss); the loss is lowest at "
          f"{at_minimum:.2e}; plot: {run_dir / 'lr_find.png'}")
    return {**(extra or {}), "suggested_lr": suggested, "lr_at_min_loss": at_minimum, "lr_find_steps_run": len(lrs)}
