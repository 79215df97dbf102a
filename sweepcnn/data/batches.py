"""A training batch of one image: BatchNorm in training mode cannot normalise it (PyTorch raises "Expected more than
1 value per channel when training" wherever a layer sees one value per channel, e.g. after global pooling).

`--batch_size 1` is refused while BatchNorm layers train; with a larger batch size a split of N images where
N % batch_size == 1 would end every epoch with such a batch, so that one batch is dropped (timm's loader drops every
partial batch; only this one is dropped here). The order is shuffled each epoch, so a different image sits out each
time and none is left out of training for good.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice

from torch.utils.data import BatchSampler, Sampler

from sweepcnn.errors import UserError


class NoBatchOfOne(BatchSampler):
    """BatchSampler(sampler, batch_size, drop_last=False), less a final batch of one image when there are others."""

    def __init__(self, sampler: Sampler[int], batch_size: int):
        super().__init__(sampler, batch_size, drop_last=False)

    def __len__(self) -> int:
        n = len(self.sampler)
        return super().__len__() - (n > 1 and n % self.batch_size == 1)

    def __iter__(self) -> Iterator[list[int]]:
        return islice(super().__iter__(), len(self))


def note_dropped_batch(images: int, batch_size: int) -> None:
    """One note when the training loader drops its final batch of one image (see the module docstring)."""
    if images > 1 and images % batch_size == 1:
        print(f"note: {images} training images at --batch_size {batch_size} leave a last batch of one image, too "
              "small for BatchNorm's batch statistics: it is dropped each epoch (the order is shuffled, so a "
              "different image sits out each epoch)", file=sys.stderr)


def check_batch_size(batch_size: int, batchnorm_trains: bool, remedy: str) -> None:
    """Refuse --batch_size 1 when a BatchNorm layer trains (before the run starts); `remedy` ends the message."""
    if batch_size == 1 and batchnorm_trains:
        raise UserError("--batch_size 1: this model trains BatchNorm layers, which need at least 2 images per "
                        f"batch; use --batch_size 2 or more, or {remedy}")
