"""Running sums of a training epoch or an evaluation, kept on the device: adding a batch queues a few tiny kernels
and never waits for the device; `read()` is the one place that does (once per epoch, or every CHECK_EVERY
training steps). A distributed run sums the values over its processes there."""
from __future__ import annotations

from typing import NamedTuple

import torch

from sweepcnn import distributed

CHECK_EVERY = 50  # training steps between read-backs: a non-finite loss stops the run within this many steps


class Sums(NamedTuple):
    loss: float  # sum over the images of the loss (the batch mean times the batch size)
    correct: float  # correct predictions (with mixed targets: the target mass on the predicted classes)
    count: float  # images
    nonfinite: float  # the first non-finite batch loss (times its batch size: still nan or inf), 0 while none

    @property
    def finite(self) -> bool:
        return self.nonfinite == 0

    def mean_loss(self) -> float:
        return self.loss / max(self.count, 1)

    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)


class Totals:
    """The sums of `Sums`, as one float32 tensor on `device` (exact counts up to 2**24 images)."""

    def __init__(self, device: torch.device):
        self.values = torch.zeros(len(Sums._fields), device=device)

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        loss_sum = loss_sum.detach().float()
        values = self.values
        values[0].add_(loss_sum)
        values[1].add_(correct)
        values[2].add_(count)
        first = loss_sum.isfinite().logical_not() & values[3].isfinite()  # the earlier one stays
        values[3] = torch.where(first, loss_sum, values[3])

    def read(self) -> Sums:
        """The sums so far (several ranks: over all of them): waits for the device."""
        return Sums(*distributed.summed(self.values).tolist())
