"""Batches for the training device. On CUDA a split whose uint8 pixels fit in a share of the free GPU memory is
copied there once and every batch is gathered there (a step does no host work); otherwise batches come from pinned
host memory with non_blocking copies, one batch ahead. On other devices: the plain DataLoader."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from sweepcnn.data.datasets import ImageSet, make_loader
from sweepcnn.data.shards import ShardSampler, TrainShards

CHUNK_BYTES = 256 * 2**20  # host memory used at a time while copying a split to the GPU


def fits(nbytes: int, share: float, free: int) -> bool:
    return share > 0 and nbytes <= share * free


class DeviceLoader:
    """A DataLoader's split held on `device`: its uint8 pixels and labels, copied once; each epoch's order comes
    from the loader's own (batch) sampler, so shuffling and --balanced_sampler stay as they are."""

    def __init__(self, loader: DataLoader, device: torch.device):
        images: ImageSet = loader.dataset
        n, shape = len(images), images.pixels.shape[1:]
        self.pixels = torch.empty((n, *shape), dtype=torch.uint8, device=device)
        step = max(1, CHUNK_BYTES // int(np.prod(shape)))
        for start in range(0, n, step):
            chunk = np.ascontiguousarray(images.pixels[images.rows[start:start + step]])
            self.pixels[start:start + len(chunk)].copy_(torch.from_numpy(chunk))
        self.labels = torch.from_numpy(images.labels.astype(np.int64)).to(device)
        self.batch_sampler, self.device = loader.batch_sampler, device

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sizes, order = [], []
        for batch in self.batch_sampler:
            sizes.append(len(batch))
            order += batch
        index = torch.tensor(order, dtype=torch.long)
        index = (index.pin_memory() if self.device.type == "cuda" else index).to(self.device, non_blocking=True)
        for rows in index.split(sizes):
            yield self.pixels.index_select(0, rows), self.labels.index_select(0, rows)


class Prefetch:
    """A DataLoader's batches moved to `device` with non_blocking copies (pinned memory), one batch ahead."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def _move(self, batch):
        return None if batch is None else tuple(t.to(self.device, non_blocking=True) for t in batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.loader)
        ahead = self._move(next(batches, None))
        while ahead is not None:
            current, ahead = ahead, self._move(next(batches, None))
            yield current


def device_loader(images: ImageSet, batch_size: int, train: bool, cfg: dict, generator: torch.Generator,
                  device: torch.device, shards: TrainShards | None = None, smallest: int = 2):
    """Batches of `images` for `device` (see the module docstring); on CUDA `--data_on_device` sets the share.
    `shards`: this rank's shard of each global batch (several ranks, sweepcnn.data.shards); `smallest`: the
    smallest last global batch kept (sweepcnn.data.batches)."""
    loader = make_loader(images, batch_size, train, cfg, generator, pin_memory=device.type == "cuda",
                         smallest=smallest)
    if shards is not None:  # the same generator: its draws (the workers' base seed, the order) stay as in one process
        loader = DataLoader(images, batch_sampler=ShardSampler(loader.batch_sampler, shards),
                            num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                            collate_fn=loader.collate_fn, generator=generator)
    if device.type != "cuda":
        return loader
    nbytes = len(images) * int(np.prod(images.pixels.shape[1:]))
    if fits(nbytes, cfg["data_on_device"], torch.cuda.mem_get_info(device)[0]):
        return DeviceLoader(loader, device)
    return Prefetch(loader, device)
