"""What a part hands the shared runner: its model and how to train, report and rebuild it (`ModelSpec`), and the
layers a report inspects (`Layers`). Below both the trainer and the report, so neither imports the other."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from sweepcnn.train.engine import Phase, fit


@dataclass(frozen=True)
class Layers:
    first: nn.Module  # a Conv2d whose kernels are the first-layer filters
    target: nn.Module  # where Grad-CAM and guided backpropagation look


@dataclass
class ModelSpec:
    model: nn.Module
    info: dict  # goes into the summary (e.g. params, flops)
    normalization: tuple[list[float], list[float]] | None = None  # None: per-channel stats of the training split
    phases: list[Phase] | None = None  # None: one phase training every parameter with requires_grad
    train_mode: Callable[[], None] | None = None  # runs after model.train() each epoch (see sweepcnn.train.engine.fit)
    run: Callable[..., dict] = fit  # fit, or another function with fit's signature (e.g. an LR range test)
    # What the shared report and compare need, recorded in run.json (sweepcnn.train.record):
    layers: Layers | None = None  # filters, Grad-CAM and guided backprop layers (None: first and last Conv2d)
    identity: dict | None = None  # tells the run apart in comparisons; "model" names the architecture
    label: str | None = None  # the run in a comparison plot (None: the identity's values but the model)
    # the part's module-level rebuild(cfg, classes) -> ModelSpec: the model for best.pt, built without downloads
    rebuild: Callable[[dict, list[str]], ModelSpec] | None = None
