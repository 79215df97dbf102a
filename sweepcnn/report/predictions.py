"""The model's predictions on the test split, and which test images the report shows."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweepcnn.data.datasets import ImageSet, make_loader
from sweepcnn.train.engine import Batches, evaluate

Normalization = tuple[Sequence[float], Sequence[float]]  # per-channel mean and std, in [0, 1] units

GRID_CLASSES, GRID_PER_CLASS = 10, 3  # the prediction grid: up to 3 images of each of the first 10 classes
MISTAKES = 12  # highest-loss test images shown


@dataclass
class TestResults:
    """A model's logits on a split, with the labels, probabilities, predictions and per-image losses."""

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


def predict(model: nn.Module, images: ImageSet, batches: Batches, amp: torch.dtype | None, batch_size: int,
            tta: str = "none") -> TestResults:
    """sweepcnn.train.engine.evaluate over the split, in order, keeping the logits (with the run's --tta)."""
    loader = make_loader(images, batch_size, False, {"balanced_sampler": False, "num_workers": 0},
                         torch.Generator(), False)
    return TestResults(images, evaluate(model, loader, batches, amp, desc="report", keep_outputs=True,
                                               tta=tta)["logits"])


def to_uint8(images: torch.Tensor, normalization: Normalization) -> np.ndarray:
    """Normalised [N, C, H, W] (or [C, H, W]) tensors back to uint8 pixels [N, H, W, C], for display and W&B
    (wandb saves float images in [0, 1] all black)."""
    batch = images.detach().float().cpu()
    batch = batch[None] if batch.dim() == 3 else batch
    shape = (1, -1, 1, 1)
    mean, std = torch.tensor(normalization[0]).view(shape), torch.tensor(normalization[1]).view(shape)
    return (batch * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] -> [H, W, C]."""
    return image.permute(1, 2, 0).numpy()


def grid_indices(labels: np.ndarray, num_classes: int, per_class: int = GRID_PER_CLASS,
                 max_classes: int = GRID_CLASSES) -> list[list[int]]:
    """For each of the first `max_classes` classes, its first `per_class` test images (fewer if it has fewer)."""
    return [np.flatnonzero(labels == c)[:per_class].tolist() for c in range(min(num_classes, max_classes))]


def highest_loss(results: TestResults, count: int = MISTAKES) -> list[int]:
    """The indices of the `count` test images with the largest loss, largest first."""
    return results.losses.argsort(descending=True)[:count].tolist()
