"""Report on a trained run (Part A or Part B): what the model predicts on the test split, where it fails, what its
first layer learned and what it looks at.

    python -m sweepcnn.report RUN_DIR [--wandb] [--device cpu]

Writes RUN_DIR/report/: predictions.png (3 test images for each of up to 10 classes), filters.png (first-layer
kernels), confusion_matrix.png/.csv, confusion_matrix_normalized.csv, per_class.csv (precision, recall, F1, macro and
weighted averages), roc_pr.png, roc.csv and precision_recall.csv (two-class tasks only), mistakes.png/.csv
(the highest-loss test images),
curves.png (loss, accuracy and learning rate per epoch), guided_backprop.png, gradcam.png, predictions.csv (every
test image) and report.html, one page with everything, images embedded, that opens offline. With --wandb (or, from
Python, into the active W&B run) the figures, tables and charts are logged to W&B as well.

Interpretability layers: the Part A CNN's last convolution (`part_a.model.last_conv`), a ResNet's layer4, a ViT's
last encoder block (the input of its attention, `ln_1`: the block's output reaches the logits only through the class
token, so its patch tokens get no gradient), any other model's last Conv2d. ViT tokens are reshaped to the patch grid.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from sweepcnn.train.checkpoint import load_checkpoint
from sweepcnn.data.datasets import Data, ImageSet, load_data, make_loader
from sweepcnn.train.engine import Batches, evaluate, place_model
from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.runtime import resolve_device
from sweepcnn.tracking import describe_wandb_run, read_history, read_summary

Normalization = tuple[Sequence[float], Sequence[float]]  # per-channel mean and std, in [0, 1] units

DPI = 100
CELL = 1.8  # inches per image cell: 180 px at DPI
GRID_CLASSES, GRID_PER_CLASS = 10, 3
MISTAKES, MISTAKE_COLUMNS = 12, 4
NEURONS = 10
MAX_FILTERS = 64
# W&B keys, each under report/: the figures (also the PNG file stems) and the tables (see log_report)
PANEL_KEYS = ("predictions", "mistakes", "confusion_matrix", "roc_pr", "filters", "curves", "guided_backprop",
              "gradcam")
WANDB_TABLE_KEYS = ("per_class_table", "predictions_table", "mistakes_table")
# Activation modules that guided backpropagation hooks (see `guided`).
GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Hardswish, nn.Tanh)


# ---------------------------------------------------------------------------------------------------- run folders
def run_architecture(cfg: dict) -> tuple[str, int, int]:
    """('part_a' | 'part_b', input size, channels): the one place that tells a Part B run (its config names a
    `model`) from a Part A run."""
    if "model" in cfg:
        from part_b.models import resolve_preset

        return "part_b", cfg["input_size"] or resolve_preset(cfg["model"], cfg["weights"]).input_size, \
            cfg["in_channels"]
    return "part_a", cfg["input_size"], cfg["in_channels"]


def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: no config.yaml: not a run folder of part_a/train.py or part_b/finetune.py")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    return config


def load_run_model(run_dir: Path) -> tuple[nn.Module, dict, list[str], Normalization]:
    """Rebuild a run's best model from `config.yaml` and `best.pt`: (model in eval mode on the CPU, config,
    classes, (mean, std))."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    state = load_checkpoint(run_dir / "best.pt")
    missing = {"model", "classes", "normalization"} - set(state)
    if missing:
        raise UserError(f"{run_dir / 'best.pt'}: not a best checkpoint of this project ({', '.join(sorted(missing))} "
                        "missing)")
    classes = list(state["classes"])
    kind, size, channels = run_architecture(cfg)
    if kind == "part_b":
        from part_b.models import load_backbone, replace_head

        backbone = load_backbone(cfg["model"], None, size, channels)
        replace_head(backbone.model, backbone.layout, len(classes))
        model = backbone.model
    else:
        from part_a.model import MODEL_OPTIONS, build_cnn

        model = build_cnn({k: cfg[k] for k in MODEL_OPTIONS if k in cfg})  # keys a config lacks take defaults
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"{run_dir / 'best.pt'} does not fit the model of {run_dir / 'config.yaml'}: "
                        f"{str(exc).splitlines()[0]}") from None
    norm = state["normalization"]
    return model.eval(), cfg, classes, (list(norm["mean"]), list(norm["std"]))


def load_run_data(run_dir: Path, cfg: dict, classes: list[str]) -> Data:
    """The run's data at its input size, split as in training (the split is reproducible from the config); refuses
    data whose classes or test split differ from the run's."""
    _, size, channels = run_architecture(cfg)
    data = load_data(cfg, size, channels)
    if data.classes != classes:
        raise UserError(f"the data {cfg['data']} has classes {data.classes}, the run {run_dir} was trained on "
                        f"{classes}")
    split = Path(run_dir) / "split.json"
    if split.is_file() and [n for n, _ in json.loads(split.read_text())["test"]] != data.test.names:
        raise UserError(f"the test split of {cfg['data']} differs from {split}: the data changed since the run")
    return data


# ---------------------------------------------------------------------------------------------------- predictions
@dataclass
class TestResults:
    images: ImageSet
    logits: torch.Tensor  # [N, classes], float32 on the CPU

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.images.labels, dtype=torch.long)
        self.probs = self.logits.softmax(1)
        self.confidence, self.preds = self.probs.max(1)
        self.losses = F.cross_entropy(self.logits, self.labels, reduction="none")

    def image(self, index: int) -> torch.Tensor:
        """The uint8 test image [C, S, S] as the model saw it before normalisation."""
        return self.images[index][0]


def predict(model: nn.Module, images: ImageSet, batches: Batches, amp: torch.dtype | None, batch_size: int
            ) -> TestResults:
    """sweepcnn.train.engine.evaluate over the split, in order, keeping the logits."""
    loader = make_loader(images, batch_size, False, {"balanced_sampler": False, "num_workers": 0},
                         torch.Generator(), False)
    return TestResults(images, evaluate(model, loader, batches, amp, desc="report", keep_outputs=True)["logits"])


def to_uint8(images: torch.Tensor, normalization: Normalization) -> np.ndarray:
    """Normalised [N, C, H, W] (or [C, H, W]) tensors back to uint8 pixels [N, H, W, C], for display and W&B
    (wandb saves float images in [0, 1] all black)."""
    batch = images.detach().float().cpu()
    batch = batch[None] if batch.dim() == 3 else batch
    shape = (1, -1, 1, 1)
    mean, std = torch.tensor(normalization[0]).view(shape), torch.tensor(normalization[1]).view(shape)
    return (batch * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] -> [H, W, C]."""
    return image.permute(1, 2, 0).numpy()


def grid_indices(labels: np.ndarray, num_classes: int, per_class: int = GRID_PER_CLASS,
                 max_classes: int = GRID_CLASSES) -> list[list[int]]:
    """For each of the first `max_classes` classes, its first `per_class` test images (fewer if it has fewer)."""
    return [np.flatnonzero(labels == c)[:per_class].tolist() for c in range(min(num_classes, max_classes))]


def highest_loss(results: TestResults, count: int = MISTAKES) -> list[int]:
    return results.losses.argsort(descending=True)[:count].tolist()


# ---------------------------------------------------------------------------------------------------- interpretability
@dataclass(frozen=True)
class Layers:
    first: nn.Module  # a Conv2d whose kernels are the first-layer filters
    target: nn.Module  # where Grad-CAM and guided backpropagation look


def interpretability_layers(model: nn.Module) -> Layers:
    """Part A CNN: conv1 and the last conv; ResNet: conv1 and layer4; ViT: the patch embedding and the last block's
    ln_1; anything else: its first and last Conv2d."""
    from torchvision.models import ResNet, VisionTransformer

    from part_a.model import CNN, first_conv, last_conv

    if isinstance(model, CNN):
        return Layers(first_conv(model), last_conv(model))
    if isinstance(model, ResNet):
        return Layers(model.conv1, model.layer4)
    if isinstance(model, VisionTransformer):
        return Layers(model.conv_proj, model.encoder.layers[-1].ln_1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"{type(model).__name__} has no Conv2d layer: no filters, Grad-CAM or guided backpropagation")
    return Layers(convs[0], convs[-1])


def module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def as_grid(activation: torch.Tensor) -> torch.Tensor:
    """A layer's output as [N, C, h, w]: feature maps as they are; ViT tokens [N, T, D] reshaped to the patch grid
    (without the class token, which torchvision puts first)."""
    if activation.dim() == 4:
        return activation
    if activation.dim() != 3:
        raise ValueError(f"cannot map a layer output of shape {tuple(activation.shape)} onto the image")
    tokens = activation.shape[1]
    side = math.isqrt(tokens - 1)
    if side * side == tokens - 1:
        activation = activation[:, 1:]
    else:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"{tokens} tokens do not form a square patch grid")
    return activation.transpose(1, 2).reshape(activation.shape[0], -1, side, side)


@contextmanager
def capture(layer: nn.Module) -> Iterator[dict]:
    """Records the layer's output of the next forward pass in `captured["output"]`."""
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda module, args, output: captured.__setitem__("output", output))
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def guided(model: nn.Module) -> Iterator[list[str]]:
    """Guided backpropagation (Springenberg et al., 2015) while inside: the gradient leaving every activation module
    towards its input is clamped at 0. Yields the activation types hooked.

    Full backward hooks see grad_input = grad_output * f'(x); clamping it gives max(0, grad_output * f'(x)). For
    ReLU that is exactly the guided rule, (x > 0) * max(0, grad_output). GELU, SiLU and Mish are not monotonic:
    f'(x) < 0 below about x = -0.75, -1.28 and -1.19, where a negative grad_output passes as a positive gradient,
    and slightly negative inputs pass gradient where ReLU would block it; the map is then a close analogue, not the
    published method. Activations called as functions (F.relu in a forward) are not modules and are not hooked.
    In-place activations run out of place while hooked: full backward hooks forbid in-place changes of a hooked
    module's output."""
    def clamp(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple | None:
        return None if grad_input[0] is None else (grad_input[0].clamp(min=0), *grad_input[1:])

    activations = [m for m in model.modules() if isinstance(m, GUIDED_ACTIVATIONS)]
    in_place = [m for m in activations if getattr(m, "inplace", False)]
    handles = [m.register_full_backward_hook(clamp) for m in activations]
    for m in in_place:
        m.inplace = False
    try:
        yield sorted({type(m).__name__ for m in activations})
    finally:
        for m in in_place:
            m.inplace = True
        for h in handles:
            h.remove()


@dataclass
class GuidedMaps:
    maps: torch.Tensor  # [n, C, H, W] input gradients, one per neuron
    neurons: list[tuple[int, int, int]]  # (channel, y, x) on the layer's grid
    activations: list[str]  # activation types hooked


def guided_backprop(model: nn.Module, layer: nn.Module, image: torch.Tensor, count: int = NEURONS) -> GuidedMaps:
    """Guided backpropagation from `count` neurons of `layer` to a normalised image [1, C, H, W]: the channels with
    the strongest peak activation, each at the position of its peak. The model should be in eval mode."""
    with torch.no_grad(), capture(layer) as out:
        model(image)
    grid = as_grid(out["output"])[0]
    peaks, where = grid.flatten(1).max(1)
    channels = peaks.argsort(descending=True)[:count]
    ys, xs = where[channels] // grid.shape[2], where[channels] % grid.shape[2]
    # one copy of the image per neuron: one forward and one backward pass for all of them (eval mode keeps the
    # copies independent)
    batch = image.detach().expand(len(channels), -1, -1, -1).clone().requires_grad_(True)
    with guided(model) as kinds, capture(layer) as out:
        model(batch)
    selected = as_grid(out["output"])[torch.arange(len(channels)), channels, ys, xs]
    maps, = torch.autograd.grad(selected.sum(), batch)
    neurons = [(int(c), int(y), int(x)) for c, y, x in zip(channels, ys, xs)]
    return GuidedMaps(maps.detach(), neurons, kinds)


def grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM (Selvaraju et al., 2017) of normalised images [N, C, H, W] for `targets` (default: the predicted
    classes): (maps [N, H, W] in [0, 1], upsampled bilinearly to the input size; the classes explained)."""
    images = images.detach().clone().requires_grad_(True)  # gives frozen layers a gradient path
    with capture(layer) as out:
        logits = model(images)
    targets = logits.argmax(1) if targets is None else targets.to(logits.device)
    grads, = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), out["output"])
    acts, grads = as_grid(out["output"].detach()), as_grid(grads)
    cam = F.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)
    return (cam / peak[:, None, None]).cpu(), targets.cpu()


def gradient_image(gradient: torch.Tensor) -> np.ndarray:
    """An input gradient [C, H, W] as a uint8 image [H, W, C]: zero-mean at mid-grey, one standard deviation a tenth
    of the grey range (the usual way guided-backprop maps are shown)."""
    g = gradient.detach().float().cpu()
    g = (g - g.mean()) / (g.std() + 1e-12) * 0.1 + 0.5
    return g.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------------- figures
# matplotlib.figure.Figure renders with Agg on savefig: no pyplot figure registry, no backend switch.
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def image_grid(rows: int, columns: int, title: str):
    """A titled figure of rows x columns image cells of CELL inches each, with fixed margins in inches
    (constrained layout costs about a second per grid and is not needed for equal cells)."""
    from matplotlib.figure import Figure

    height = rows * CELL
    fig = Figure(figsize=(columns * CELL, height), dpi=DPI)
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height)
    axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw={
        "left": 0.02, "right": 0.98, "bottom": 0.01, "top": 1 - 0.7 / height, "hspace": 0.35, "wspace": 0.1})
    return fig, axes


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _show(ax, image: np.ndarray, title: str = "", color: str = "black") -> None:
    """A uint8 [H, W, C] image (C = 1 shown in grey) in an axis without ticks."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_title(title, fontsize=7, color=color)
    ax.set_axis_off()


def _show_prediction(ax, results: TestResults, classes: list[str], i: int, with_loss: bool = False) -> None:
    """Test image i titled with its true and predicted class and the predicted probability: green when right,
    red when wrong."""
    right = bool(results.preds[i] == results.labels[i])
    title = (f"true: {classes[int(results.labels[i])]}\npred: {classes[int(results.preds[i])]} "
             f"({float(results.confidence[i]):.2f})" + (f" loss {float(results.losses[i]):.2f}" if with_loss else ""))
    _show(ax, _hwc(results.image(i)), title, "tab:green" if right else "tab:red")


def prediction_grid(results: TestResults, classes: list[str]):
    """Rows: the first 10 classes; columns: 3 of their test images (cells stay empty for a class with fewer)."""
    rows = grid_indices(results.images.labels, len(classes))
    shown = f"the first {len(rows)} of {len(classes)} classes" if len(rows) < len(classes) else "every class"
    fig, axes = image_grid(len(rows), GRID_PER_CLASS, f"test predictions: up to {GRID_PER_CLASS} images of {shown}")
    for row, indices in zip(axes, rows):
        for ax, i in zip(row, indices):
            _show_prediction(ax, results, classes, i)
        for ax in row[len(indices):]:
            ax.set_axis_off()
    return fig


def mistakes_figure(results: TestResults, classes: list[str], indices: list[int]):
    fig, axes = image_grid(math.ceil(len(indices) / MISTAKE_COLUMNS), MISTAKE_COLUMNS, "highest-loss test images")
    axes = axes.ravel()
    for ax, i in zip(axes, indices):
        _show_prediction(ax, results, classes, i, with_loss=True)
    for ax in axes[len(indices):]:
        ax.set_axis_off()
    return fig


def filters_figure(conv: nn.Module, name: str):
    """Up to 64 first-layer kernels, each scaled to its own range: RGB for three input channels, grey otherwise
    (the mean over input channels)."""
    from torchvision.utils import make_grid

    weight = conv.weight.detach().float().cpu()[:MAX_FILTERS]
    if weight.shape[1] not in (1, 3):
        weight = weight.mean(1, keepdim=True)
    nrow = math.ceil(math.sqrt(len(weight)))
    grid = make_grid(weight, nrow=nrow, padding=1, normalize=True, scale_each=True, pad_value=1.0)
    fig = _figure(6, 6)
    ax = fig.add_subplot()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    total = conv.weight.shape[0]
    ax.set_title(f"{name}: {len(weight)} of {total} filters, {tuple(conv.weight.shape[1:])} each", fontsize=9)
    return fig


def confusion_size(num_classes: int) -> tuple[float, float]:
    side = max(4.5, 0.45 * num_classes + 2.5)
    return 2 * side, side + 1


def confusion_figure(counts: np.ndarray, classes: list[str]):
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = _figure(*confusion_size(len(classes)))
    left, right = fig.subplots(1, 2)
    ConfusionMatrixDisplay(counts, display_labels=classes).plot(ax=left, colorbar=False, xticks_rotation=45,
                                                                values_format="d")
    left.set_title("counts")
    ConfusionMatrixDisplay(row_normalized(counts), display_labels=classes).plot(
        ax=right, colorbar=False, xticks_rotation=45, values_format=".2f", im_kw={"vmin": 0, "vmax": 1})
    right.set_title("row-normalised (recall per true class)")
    return fig


def row_normalized(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def roc_pr_figure(labels: np.ndarray, scores: np.ndarray, positive: str):
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    fig = _figure(10, 4.5)
    left, right = fig.subplots(1, 2)
    RocCurveDisplay.from_predictions(labels, scores, pos_label=1, name=positive, ax=left, plot_chance_level=True)
    left.set_title(f"ROC, positive class {positive}")
    PrecisionRecallDisplay.from_predictions(labels, scores, pos_label=1, name=positive, ax=right,
                                            plot_chance_level=True)
    right.set_title(f"precision-recall, positive class {positive}")
    return fig


def curves_figure(history: list[dict]):
    """Loss and accuracy (train and validation) and the learning rate, per epoch."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(13, 3.8)
    axes = fig.subplots(1, 3)
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, ("loss", "acc")):
        for split in ("train", "val"):
            ax.plot(epochs, [row.get(f"{split}_{metric}") for row in history], "o-", label=split)
        ax.set(xlabel="epoch", ylabel=metric, title={"loss": "loss", "acc": "accuracy"}[metric])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    rates = [row.get("learning_rate") for row in history]
    axes[2].plot(epochs, rates, "o-", color="tab:purple")
    if all(r is not None and r > 0 for r in rates):
        axes[2].set_yscale("log")
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate (at the start of each epoch)")
    axes[2].grid(alpha=0.3, which="both")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def guided_figure(image: np.ndarray, result: GuidedMaps, layer: str, title: str):
    """The input, then one guided-backprop map per neuron, 6 cells per row."""
    columns = 6
    fig, axes = image_grid(math.ceil((1 + len(result.neurons)) / columns), columns,
                           f"guided backpropagation from {len(result.neurons)} neurons of {layer} "
                           f"({', '.join(result.activations) or 'no activation modules'} hooked)")
    axes = axes.ravel()
    _show(axes[0], image, title)
    for ax, gradient, (c, y, x) in zip(axes[1:], result.maps, result.neurons):
        _show(ax, gradient_image(gradient), f"channel {c} at ({y}, {x})")
    for ax in axes[1 + len(result.neurons):]:
        ax.set_axis_off()
    return fig


def gradcam_figure(images: np.ndarray, cams: torch.Tensor, titles: list[str], layer: str):
    """Each image above its Grad-CAM overlay."""
    fig, axes = image_grid(2, len(images), f"Grad-CAM of the predicted class at {layer}")
    for column, (image, cam, title) in enumerate(zip(images, cams, titles)):
        _show(axes[0, column], image, title)
        _show(axes[1, column], image)
        axes[1, column].imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1,
                               extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
    return fig


# ---------------------------------------------------------------------------------------------------- the report
@dataclass
class Panel:
    key: str  # file stem, and the W&B key report/<key>
    title: str
    caption: str
    path: Path


@dataclass
class Report:
    out_dir: Path
    classes: list[str]
    results: TestResults
    panels: list[Panel] = field(default_factory=list)
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)  # also written as CSV
    metrics: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, title: str, caption: str, fig) -> None:
        self.panels.append(Panel(key, title, caption, save_figure(fig, self.out_dir / f"{key}.png")))

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables[key] = (columns, rows)
        with (self.out_dir / f"{key}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)


def write_panels(out_dir: Path, model: nn.Module, data: Data, normalization: Normalization, cfg: dict,
                 history: list[dict]) -> Report:
    """Every figure and table of the report for the test split, into out_dir. The test split is evaluated as
    training evaluated it (the model's device, the run's --amp, --channels_last and evaluation batch size), so the
    report's test accuracy is the summary's (a --channels_last run's model is converted, as fit converts it);
    gradients are computed in float32."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device, amp, batches = place_model(model, {**cfg, "device": str(next(model.parameters()).device)},
                                       (list(normalization[0]), list(normalization[1])))
    was_training = model.training
    model.eval()
    try:
        results = predict(model, data.test, batches, amp, 2 * cfg["batch_size"])
        report = Report(out_dir, data.classes, results)
        _prediction_panels(report)
        _metric_panels(report)
        layers = interpretability_layers(model)
        report.add("filters", "First-layer filters", "The kernels of the first convolution (for a ViT: the "
                   "patch embedding), each scaled to its own range.",
                   filters_figure(layers.first, module_name(model, layers.first)))
        if history:
            report.add("curves", "Training curves", "Loss and accuracy on the training and validation splits, "
                       "and the learning rate, per epoch (metrics.jsonl).", curves_figure(history))
        _interpretability_panels(report, model, layers, batches, normalization)
    finally:
        model.train(was_training)
    return report


def _prediction_panels(report: Report) -> None:
    r, classes = report.results, report.classes
    names = r.images.names
    report.table("predictions", ["file", "true", "predicted", "confidence", "loss", "correct"],
                 [[names[i], classes[int(r.labels[i])], classes[int(r.preds[i])], round(float(r.confidence[i]), 6),
                   round(float(r.losses[i]), 6), bool(r.preds[i] == r.labels[i])] for i in range(len(names))])
    report.add("predictions", "Test predictions", "Up to three test images of each of the first 10 classes (rows) with "
               "the true class, the predicted class and its probability; green when right, red when wrong.",
               prediction_grid(r, classes))
    worst = highest_loss(r)
    columns, rows = report.tables["predictions"]
    report.table("mistakes", columns, [rows[i] for i in worst])
    report.add("mistakes", "Highest-loss test images", "The test images with the largest cross-entropy: true and "
               "predicted class, the predicted probability and the loss (red: wrong).",
               mistakes_figure(r, classes, worst))


def _metric_panels(report: Report) -> None:
    from sklearn.metrics import (average_precision_score, classification_report, confusion_matrix,
                                 precision_recall_curve, roc_auc_score, roc_curve)

    r, classes = report.results, report.classes
    labels, preds = r.labels.numpy(), r.preds.numpy()
    counts = confusion_matrix(labels, preds, labels=list(range(len(classes))))
    report.table("confusion_matrix", ["true \\ predicted", *classes],
                 [[c, *map(int, row)] for c, row in zip(classes, counts)])
    report.table("confusion_matrix_normalized", ["true \\ predicted", *classes],
                 [[c, *(round(float(v), 6) for v in row)] for c, row in zip(classes, row_normalized(counts))])
    report.add("confusion_matrix", "Confusion matrix", "Test split: counts, and each row divided by the number of "
               "test images of its true class.", confusion_figure(counts, classes))
    per_class = classification_report(labels, preds, labels=list(range(len(classes))), target_names=classes,
                                      output_dict=True, zero_division=0)
    rows = [[name, per_class[name]["precision"], per_class[name]["recall"], per_class[name]["f1-score"],
             int(per_class[name]["support"])] for name in [*classes, "macro avg", "weighted avg"]]
    report.table("per_class", ["class", "precision", "recall", "f1", "support"],
                 [[row[0], *(round(v, 6) for v in row[1:4]), row[4]] for row in rows])
    report.metrics.update(test_images=len(labels), test_acc=float((labels == preds).mean()),
                          test_loss=float(r.losses.mean()), macro_f1=per_class["macro avg"]["f1-score"],
                          weighted_f1=per_class["weighted avg"]["f1-score"])
    if len(classes) == 2 and len(np.unique(labels)) == 2:
        scores = r.probs[:, 1].numpy()
        report.metrics.update(roc_auc=float(roc_auc_score(labels, scores)),
                              average_precision=float(average_precision_score(labels, scores)))
        fpr, tpr, _ = roc_curve(labels, scores)
        report.table("roc", ["false_positive_rate", "true_positive_rate"], np.stack([fpr, tpr], 1).tolist())
        precision, recall, _ = precision_recall_curve(labels, scores)
        report.table("precision_recall", ["recall", "precision"], np.stack([recall, precision], 1).tolist())
        report.add("roc_pr", "ROC and precision-recall", f"Two-class task: curves of the predicted probability of "
                   f"{classes[1]} on the test split (AUC {report.metrics['roc_auc']:.3f}, average precision "
                   f"{report.metrics['average_precision']:.3f}).", roc_pr_figure(labels, scores, classes[1]))


def _interpretability_panels(report: Report, model: nn.Module, layers: Layers, batches: Batches,
                             normalization: Normalization) -> None:
    r, classes = report.results, report.classes
    layer = module_name(model, layers.target)
    correct = (r.preds == r.labels).nonzero()[:, 0]
    pool = correct if len(correct) else torch.arange(len(r.labels))
    index = int(pool[r.confidence[pool].argmax()])  # the most confident correct prediction
    image, _ = batches(r.image(index)[None], r.labels[index:index + 1])
    result = guided_backprop(model, layers.target, image)
    exact = set(result.activations) <= {"ReLU"}
    report.add("guided_backprop", "Guided backpropagation",
               f"Input gradients of the {len(result.neurons)} channels of {layer} with the strongest peak "
               f"activation on this test image, each from its peak position; positive gradients only at every "
               f"activation module ({', '.join(result.activations) or 'none'}). "
               + ("Exact guided backpropagation (ReLU)." if exact else "With non-ReLU activations this is the "
                  "clamped-gradient analogue of guided backpropagation, see sweepcnn.report.run_report.guided."),
               guided_figure(to_uint8(image, normalization)[0], result, layer,
                             f"{classes[int(r.labels[index])]} ({float(r.confidence[index]):.2f})"))
    picks = [rows[0] for rows in grid_indices(r.images.labels, len(classes), per_class=1) if rows]
    images, _ = batches(torch.stack([r.image(i) for i in picks]), r.labels[picks])
    cams, targets = grad_cam(model, layers.target, images)
    titles = [f"true: {classes[int(r.labels[i])]}\npred: {classes[int(t)]}" for i, t in zip(picks, targets)]
    report.add("gradcam", "Grad-CAM", f"Where {layer} supports the predicted class: one test image per class "
               "(up to 10), the map upsampled to the input size and overlaid.",
               gradcam_figure(to_uint8(images, normalization), cams, titles, layer))


# ---------------------------------------------------------------------------------------------------- HTML
COMPARE_FILES = ("strategies.csv", "models.csv", "trainable_params.png")
_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee}section{margin:2em 0}.caption{color:#555}
details{margin:.5em 0}"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    elif isinstance(value, (list, dict)):
        value = json.dumps(value)
    return html.escape("" if value is None else str(value))


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _link(path: Path, base: Path) -> str:
    href = os.path.relpath(path, base)
    return f'<a href="{html.escape(href)}">{html.escape(path.name)}</a>'


def _compare_section(run_dir: Path, out_dir: Path) -> str:
    """Part B's comparison (written by sweepcnn.report.compare into RUN_DIR/compare), shown as it is there."""
    folder = run_dir / "compare"
    if not all((folder / name).is_file() for name in COMPARE_FILES):
        return ""
    parts = ["<section><h2>Strategy and model comparison</h2><p class=caption>From "
             f"<code>python -m sweepcnn.report.compare</code> ({', '.join(_link(folder / n, out_dir) for n in COMPARE_FILES)})."
             "</p>"]
    for name in ("strategies", "models"):
        with (folder / f"{name}.csv").open(newline="") as f:
            rows = list(csv.reader(f))
        parts.append(f"<h3>{name}</h3>" + (html_table(rows[0], rows[1:]) if rows else ""))
    parts.append(_image(folder / "trainable_params.png", "validation accuracy against trainable parameters"))
    return "".join(parts) + "</section>"


def write_html(report: Report, run_dir: Path, cfg: dict, summary: dict) -> Path:
    """report.html: the run's config and summary, the test metrics and every panel and table; images embedded
    (data URIs), so the page opens offline; CSV files linked."""
    out = report.out_dir
    sections = [f"<section><h2>Test metrics</h2>{html_table(['metric', 'value'], list(report.metrics.items()))}"
                f"<h3>Per class</h3>{html_table(*report.tables['per_class'])}<p class=caption>Files: "
                + ", ".join(_link(out / f"{key}.csv", out) for key in report.tables) + "</p></section>"]
    below = {"mistakes": html_table(*report.tables["mistakes"])}
    for panel in report.panels:
        sections.append(f'<section id="{panel.key}"><h2>{html.escape(panel.title)}</h2><p class=caption>'
                        f"{html.escape(panel.caption)} ({_link(panel.path, out)})</p>"
                        f"{_image(panel.path, panel.title)}{below.get(panel.key, '')}</section>")
    sections.append(_compare_section(run_dir, out))
    summary_rows = [(k, v) for k, v in summary.items() if k != "skipped_files"]
    if summary.get("skipped_files"):
        summary_rows.append(("skipped_files", f"{len(summary['skipped_files'])} (listed in summary.json)"))
    title = f"Run {run_dir.name}"
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(report.results.labels)} test images, {len(report.classes)} classes: "
            f"{html.escape(', '.join(report.classes))}.</p>"
            f"<details open><summary>Summary</summary>{html_table(['key', 'value'], summary_rows)}</details>"
            f"<details><summary>Config</summary>{html_table(['key', 'value'], list(cfg.items()))}</details>"
            + "".join(sections) + "</body></html>\n")
    path = out / "report.html"
    path.write_text(page)
    return path


# ---------------------------------------------------------------------------------------------------- W&B
def active_wandb_run() -> Any:
    wandb = sys.modules.get("wandb")  # an active run implies wandb was imported: no import otherwise
    return None if wandb is None else wandb.run


def start_wandb_run(run_dir: Path, cfg: dict) -> Any:
    """A W&B run for a report rebuilt after training (job type `report`, grouped with the run's name), in the
    run's wandb/ folder; mode from $WANDB_MODE, else online with an API key, else offline."""
    import wandb

    from sweepcnn.tracking import resolve_mode

    return wandb.init(project=cfg.get("wandb_project") or os.environ.get("WANDB_PROJECT"),
                      entity=cfg.get("wandb_entity") or os.environ.get("WANDB_ENTITY"),
                      name=f"{run_dir.name}-report", group=run_dir.name, job_type="report", dir=str(run_dir),
                      mode=resolve_mode(None), config=cfg)


def log_report(run: Any, report: Report) -> None:
    """Figures as wandb.Image (PNG files: uint8), tables as wandb.Table (with uint8 images), the confusion matrix
    (and for two classes the ROC and PR curves) as W&B charts, the test metrics in the summary. (wandb.plot.roc_curve
    and pr_curve would need pandas: the curves come from scikit-learn as line charts.)"""
    import wandb

    r, classes = report.results, report.classes
    payload: dict[str, Any] = {f"report/{p.key}": wandb.Image(str(p.path), caption=p.title) for p in report.panels}
    payload["report/per_class_table"] = wandb.Table(*report.tables["per_class"])

    def image_rows(indices: list[int]) -> list[list[Any]]:
        return [[wandb.Image(_hwc(r.image(i))), classes[int(r.labels[i])], classes[int(r.preds[i])],
                 float(r.confidence[i]), float(r.losses[i])] for i in indices]

    columns = ["image", "true", "predicted", "confidence", "loss"]
    grid = [i for rows in grid_indices(r.images.labels, len(classes)) for i in rows]
    payload["report/predictions_table"] = wandb.Table(columns=columns, data=image_rows(grid))
    payload["report/mistakes_table"] = wandb.Table(columns=columns, data=image_rows(highest_loss(r)))
    labels, preds = r.labels.tolist(), r.preds.tolist()
    payload["report/confusion_matrix_chart"] = wandb.plot.confusion_matrix(y_true=labels, preds=preds,
                                                                          class_names=classes)
    for key, title in (("roc", "ROC"), ("precision_recall", "precision-recall")):
        if key in report.tables:
            columns, rows = report.tables[key]
            payload[f"report/{key}_chart"] = wandb.plot.line(wandb.Table(columns, rows), *columns,
                                                             title=f"{title}, positive class {classes[1]}")
    run.log(payload)
    run.summary.update({f"report/{k}": v for k, v in report.metrics.items()})


# ---------------------------------------------------------------------------------------------------- entry points
def build_report(run_dir: Path, model: nn.Module, data: Data, normalization: Normalization, cfg: dict,
                 log_to_wandb: bool = False, wandb_run: Any = None, summary: dict | None = None) -> Path:
    """Write RUN_DIR/report/ for `model` on `data.test` and return its report.html. Logged to W&B into `wandb_run`,
    else into the active W&B run, else (log_to_wandb) into a new run that is finished afterwards. `summary`
    defaults to RUN_DIR/summary.json."""
    run_dir = Path(run_dir)
    report = write_panels(run_dir / "report", model, data, normalization, cfg, read_history(run_dir))
    page = write_html(report, run_dir, cfg, read_summary(run_dir) if summary is None else summary)
    run = wandb_run or active_wandb_run()
    own = run is None and log_to_wandb
    if own:
        run = start_wandb_run(run_dir, cfg)
    if run is not None:
        log_report(run, report)
    if own:
        print(describe_wandb_run(run), file=sys.stderr)
        run.finish()
    return page


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m sweepcnn.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder of part_a/train.py or part_b/finetune.py")
    parser.add_argument("--wandb", action="store_true", help="also log the report to a new W&B run (mode: "
                        "$WANDB_MODE, else online with an API key, else offline)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    model, cfg, classes, normalization = load_run_model(args.run_dir)
    data = load_run_data(args.run_dir, cfg, classes)
    page = build_report(args.run_dir, model.to(resolve_device(args.device)), data, normalization, cfg,
                        log_to_wandb=args.wandb)
    print(f"report: {page}")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
