"""Each rank's share of the data when several processes train one model (sweepcnn.distributed).

Training: every rank draws the same global order from the same seeded generator (shuffled or --balanced_sampler)
and cuts each global batch of --batch_size images into contiguous shards, one per rank. With mixup/CutMix a rank
also reads the mixing partner of each of its images (image i of the global batch is mixed with image B-1-i, as in
one process). Evaluation: each rank scores a contiguous slice of the split, every image exactly once.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sweepcnn.data.datasets import ImageSet


@dataclass
class Shard:
    """This rank's part of one global training batch: the positions in it of the samples it reads, in order (its
    own, then their mixing partners if any), the global batch's size, and how many of the positions are its own."""

    positions: list[int]
    total: int
    size: int

    def weighted(self, loss: torch.Tensor, world: int) -> torch.Tensor:
        """The shard's mean loss weighted so that DDP's mean of the ranks' gradients is the gradient of the global
        batch's mean loss, also when the shards differ in size (the last batch of an epoch)."""
        return loss * (self.size * world / self.total)


def batch_positions(total: int, rank: int, world: int, partners: bool) -> list[int]:
    """The positions rank `rank` reads of a global batch of `total` samples (see Shard)."""
    own = np.array_split(np.arange(total), world)[rank].tolist()
    return own + [total - 1 - p for p in own] if partners else own


class TrainShards:
    """The shards of one rank, batch by batch, over an epoch of `images` samples in global batches of
    `batch_size`."""

    def __init__(self, images: int, batch_size: int, rank: int, world: int, partners: bool):
        self.images, self.batch_size, self.rank, self.world, self.partners = images, batch_size, rank, world, partners

    def __call__(self, batch: int) -> Shard:
        """The shard of the epoch's `batch`-th global batch."""
        total = min(self.batch_size, self.images - batch * self.batch_size)
        positions = batch_positions(total, self.rank, self.world, self.partners)
        return Shard(positions, total, len(positions) // 2 if self.partners else len(positions))


class ShardSampler:
    """A DataLoader batch sampler: each global batch of `batch_sampler`, cut to this rank's shard (`shards(i)` of the
    i-th batch, as the training step splits and weighs it)."""

    def __init__(self, batch_sampler: Iterable[list[int]], shards: TrainShards):
        self.batch_sampler, self.shards = batch_sampler, shards

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batch_sampler):
            yield [batch[p] for p in self.shards(i).positions]


def split_part(images: ImageSet, rank: int, world: int) -> ImageSet:
    """Rank `rank`'s contiguous slice of an evaluation split: the slices of all ranks hold every image once."""
    part = np.array_split(np.arange(len(images)), world)[rank]
    start, stop = (int(part[0]), int(part[-1]) + 1) if len(part) else (0, 0)
    return ImageSet(images.pixels, images.rows[start:stop], images.labels[start:stop], images.names[start:stop])
