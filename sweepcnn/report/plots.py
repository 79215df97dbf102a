"""The report's figures, each a matplotlib Figure (built with sweepcnn.report.figures.figure) for a panel."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from sweepcnn.report.curves import MACRO, MICRO, Curves
from sweepcnn.report.figures import figure
from sweepcnn.report.interpret import GuidedMaps
from sweepcnn.report.predictions import GRID_PER_CLASS, TestResults, grid_indices, hwc

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CELL = 1.8  # inches per image cell: 180 px at figures.DPI
MISTAKE_COLUMNS = 4
MAX_FILTERS = 64
LABELLED_CLASSES = 10  # ROC/PR: more classes are drawn unlabelled


def image_grid(rows: int, columns: int, title: str) -> tuple[Figure, np.ndarray]:
    """A titled figure of rows x columns image cells of CELL inches each, with fixed margins in inches
    (constrained layout costs about a second per grid and is not needed for equal cells)."""
    height = rows * CELL
    fig = figure(columns * CELL, height, constrained=False)
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height)
    axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw={
        "left": 0.02, "right": 0.98, "bottom": 0.01, "top": 1 - 0.7 / height, "hspace": 0.35, "wspace": 0.1})
    return fig, axes


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
    _show(ax, hwc(results.image(i)), title, "tab:green" if right else "tab:red")


def prediction_grid(results: TestResults, classes: list[str]) -> Figure:
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


def mistakes_figure(results: TestResults, classes: list[str], indices: list[int]) -> Figure:
    """The test images at `indices`, MISTAKE_COLUMNS per row, titled with their loss."""
    fig, axes = image_grid(math.ceil(len(indices) / MISTAKE_COLUMNS), MISTAKE_COLUMNS, "highest-loss test images")
    axes = axes.ravel()
    for ax, i in zip(axes, indices):
        _show_prediction(ax, results, classes, i, with_loss=True)
    for ax in axes[len(indices):]:
        ax.set_axis_off()
    return fig


def filters_figure(conv: nn.Module, name: str) -> Figure:
    """Up to 64 first-layer kernels, each scaled to its own range: RGB for three input channels, grey otherwise
    (the mean over input channels)."""
    from torchvision.utils import make_grid

    weight = conv.weight.detach().float().cpu()[:MAX_FILTERS]
    if weight.shape[1] not in (1, 3):
        weight = weight.mean(1, keepdim=True)
    nrow = math.ceil(math.sqrt(len(weight)))
    grid = make_grid(weight, nrow=nrow, padding=1, normalize=True, scale_each=True, pad_value=1.0)
    fig = figure(6, 6)
    ax = fig.add_subplot()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    total = conv.weight.shape[0]
    ax.set_title(f"{name}: {len(weight)} of {total} filters, {tuple(conv.weight.shape[1:])} each", fontsize=9)
    return fig


def confusion_size(num_classes: int) -> tuple[float, float]:
    """(width, height) in inches of the two confusion matrices side by side."""
    side = max(4.5, 0.45 * num_classes + 2.5)
    return 2 * side, side + 1


def confusion_figure(counts: np.ndarray, classes: list[str]) -> Figure:
    """Counts, and rows divided by their totals."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = figure(*confusion_size(len(classes)))
    left, right = fig.subplots(1, 2)
    ConfusionMatrixDisplay(counts, display_labels=classes).plot(ax=left, colorbar=False, xticks_rotation=45,
                                                                values_format="d")
    left.set_title("counts")
    ConfusionMatrixDisplay(row_normalized(counts), display_labels=classes).plot(
        ax=right, colorbar=False, xticks_rotation=45, values_format=".2f", im_kw={"vmin": 0, "vmax": 1})
    right.set_title("row-normalised (recall per true class)")
    return fig


def row_normalized(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total (rows without images stay 0)."""
    totals = counts.sum(1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def roc_pr_figure(curves: Curves) -> Figure:
    """ROC and precision-recall curves: each class against the rest (labelled for up to LABELLED_CLASSES classes,
    thin grey lines beyond), the micro and macro averages in bold."""
    fig = figure(10, 4.5)
    left, right = fig.subplots(1, 2)
    classes = [name for name in curves.roc if name not in (MICRO, MACRO)]
    for ax, lines, score, (xlabel, ylabel) in ((left, curves.roc, curves.auc, ("false positive rate",
                                                                                "true positive rate")),
                                               (right, curves.pr, curves.ap, ("recall", "precision"))):
        for name in classes:
            x, y = lines[name]
            if len(classes) <= LABELLED_CLASSES:
                ax.plot(x, y, lw=1, label=f"{name} ({score[name]:.3f})")
            else:
                ax.plot(x, y, lw=0.5, color="0.75")
        for name, style in ((MICRO, "k--"), (MACRO, "k-")):
            ax.plot(*lines[name], style, lw=2, label=f"{name} ({score[name]:.3f})")
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=6, loc="lower right" if ax is left else "upper right")
        ax.grid(alpha=0.3)
    left.plot([0, 1], [0, 1], ":", color="0.5")
    left.set_title("ROC, one class against the rest (AUC)")
    right.set_title("precision-recall, one class against the rest (AP)")
    return fig


def curves_figure(history: list[dict]) -> Figure:
    """Loss and accuracy (train and validation) and the learning rate, per epoch."""
    from matplotlib.ticker import MaxNLocator

    fig = figure(13, 3.8)
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


def gradient_image(gradient: torch.Tensor) -> np.ndarray:
    """An input gradient [C, H, W] as a uint8 image [H, W, C]: zero-mean at mid-grey, one standard deviation a tenth
    of the grey range (the usual way guided-backprop maps are shown)."""
    g = gradient.detach().float().cpu()
    g = (g - g.mean()) / (g.std() + 1e-12) * 0.1 + 0.5
    return g.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def guided_figure(image: np.ndarray, result: GuidedMaps, layer: str, title: str) -> Figure:
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


def gradcam_figure(images: np.ndarray, cams: torch.Tensor, titles: list[str], layer: str) -> Figure:
    """Each image above its Grad-CAM overlay."""
    fig, axes = image_grid(2, len(images), f"Grad-CAM of the predicted class at {layer}")
    for column, (image, cam, title) in enumerate(zip(images, cams, titles)):
        _show(axes[0, column], image, title)
        _show(axes[1, column], image)
        axes[1, column].imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1,
                               extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
    return fig
