"""A training batch too small for BatchNorm: in training mode it cannot normalise one image (PyTorch raises
"Expected more than 1 value per channel when training" wherever a layer sees one value per channel, e.g. after
global pooling).

`--batch_size 1` is refused while BatchNorm layers train; with a larger batch size a split of N images where
N % batch_size == 1 would end every epoch with such a batch, so that one batch is dropped (timm's loader drops every
partial batch; only this one is dropped here). Under torchrun with `--sync_bn false` each rank normalises its own
shard of the global batch, so the last batch is dropped when it leaves a rank fewer than 2 images
(sweepcnn.distributed.smallest_last_batch). The order is shuffled each epoch, so different images sit out each time
and none is left out of training for good.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice

from torch.utils.data import BatchSampler, Sampler

from sweepcnn import distributed
from sweepcnn.errors import UserError


class NoSmallLastBatch(BatchSampler):
    """BatchSampler(sampler, batch_size, drop_last=False), less a final batch of fewer than `smallest` images when
    there are others."""

    def __init__(self, sampler: Sampler[int], batch_size: int, smallest: int = 2):
        super().__init__(sampler, batch_size, drop_last=False)
        self.smallest = smallest

    def __len__(self) -> int:
        full, last = divmod(len(self.sampler), self.batch_size)
        return full + (last > 0 and (last >= self.smallest or full == 0))

    def __iter__(self) -> Iterator[list[int]]:
        return islice(super().__iter__(), len(self))


def note_dropped_batch(images: int, batch_size: int, smallest: int = 2) -> None:
    """One note, from rank 0, when the training loader drops its final batch (see the module docstring)."""
    full, last = divmod(images, batch_size)
    if full and 0 < last < smallest and distributed.is_main():
        what = ("one image, too small for BatchNorm's batch statistics" if smallest == 2 else
                f"{last} image{'s' * (last > 1)}, fewer than BatchNorm's 2 per process without --sync_bn")
        print(f"note: {images} training images at --batch_size {batch_size} leave a last batch of {what}: it is "
              "dropped each epoch (the order is shuffled, so different images sit out each epoch)", file=sys.stderr)


def check_batch_size(batch_size: int, batchnorm_trains: bool, remedy: str) -> None:
    """Refuse --batch_size 1 when a BatchNorm layer trains (before the run starts); `remedy` ends the message."""
    if batch_size == 1 and batchnorm_trains:
        raise UserError("--batch_size 1: this model trains BatchNorm layers, which need at least 2 images per "
                        f"batch; use --batch_size 2 or more, or {remedy}")
