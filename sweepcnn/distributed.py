"""Several training processes under `torchrun` (DistributedDataParallel), as torchvision's classification references
and timm run them: one process per device, the process group initialised from torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), NCCL between CUDA devices and gloo on CPUs.

Without torchrun (or with one process) nothing here starts a process group and every helper is the identity, so a
one-process run is exactly what it was. Rank 0 alone writes (run folder, checkpoints, W&B); every decision that
rank 0 takes from files it read is broadcast, so all ranks train with the same config and state without sharing a
filesystem. Stop signals are agreed: each rank records the signal it got, and at every training step the ranks
all-reduce the largest one, so all of them stop at the same step (see sweepcnn.runtime).
"""
from __future__ import annotations

import datetime
import io
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from sweepcnn.errors import UserError
from sweepcnn.runtime import collective_signals, pending_signal, raise_stop

T = TypeVar("T")


class _Group:
    flags: Any = None  # a gloo group for host-side flags (the stop signal) next to an NCCL default group


def launched() -> int:
    """The world size torchrun set for this process (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def bars_off() -> bool | None:
    """tqdm's `disable`: progress bars on rank 0 alone (None: where stderr is a terminal, as in one process)."""
    return None if is_main() else True


@contextmanager
def said_by_rank_0() -> Iterator[None]:
    """Before the process group exists, around what every rank checks alike (its config): rank 0 alone prints the
    notes and the error; another rank's UserError ends it with exit 2, quietly."""
    if launched() <= 1 or os.environ.get("RANK", "0") == "0":
        yield
        return
    with redirect_stderr(io.StringIO()):
        try:
            yield
        except UserError:
            raise SystemExit(2) from None


def init(cfg: dict, device: torch.device) -> None:
    """Join torchrun's process group when it started several processes: check that --batch_size divides over
    them, pin this process to its GPU, agree on stop signals, and let only rank 0 print to stdout."""
    size = launched()
    if size <= 1 or active():
        return
    with said_by_rank_0():
        check_batch_size(cfg, size)
    if device.type == "mps":
        raise UserError("--device mps: torchrun's several processes need CUDA (NCCL) or CPUs (gloo); Apple's MPS has "
                        "no collective backend: run one process, or --device cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # A rank may wait for rank 0 while it writes a report or a checkpoint: allow for slow disks.
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    _Group.flags = dist.new_group(backend="gloo") if cuda else dist.group.WORLD
    collective_signals(True)
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")


def check_batch_size(cfg: dict, size: int | None = None) -> None:
    """--batch_size is the global batch: a UserError unless it divides over the `size` (default: this job's) ranks."""
    size = size or world()
    if cfg["batch_size"] % size:
        raise UserError(f"--batch_size={cfg['batch_size']} is the global batch and does not divide over the "
                        f"{size} processes torchrun started: use a multiple of {size}")


def cleanup(raise_pending: bool = True) -> None:
    """Leave the process group (after training: the report runs on rank 0 alone); with `raise_pending`, a stop
    signal recorded since the last agreed check is raised now, as one process would have raised it."""
    if not active():
        return
    dist.destroy_process_group()
    _Group.flags = None
    collective_signals(False, raise_pending)


def device(chosen: torch.device) -> torch.device:
    """This rank's device: its own GPU (LOCAL_RANK) under torchrun on CUDA."""
    if active() and chosen.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return chosen


def check_stop() -> None:
    """At a training step (or an epoch's end) that every rank reaches: raise Interrupted on all ranks if any rank got
    a stop signal (the largest signal number wins, so all ranks end the same way)."""
    if not active():
        return
    flag = torch.tensor([pending_signal() or 0], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_Group.flags)
    if flag.item():
        raise_stop(int(flag.item()))


def on_main(fn: Callable[[], T], share: bool = True) -> T | None:
    """fn() on rank 0 alone; its result (share) or its exception reaches every rank, so a check that fails on rank
    0 stops all of them with the same error instead of leaving them waiting."""
    if not active():
        return fn()
    outcome: list[Any] = [None]
    if is_main():
        try:
            result = fn()
        except Exception as exc:
            dist.broadcast_object_list([("error", 2 if isinstance(exc, UserError) else 1)], src=0)
            raise
        outcome = [("ok", result if share else None)]
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":  # rank 0 says what went wrong; the others end quietly with its exit code
        raise SystemExit(value)
    return result if is_main() else value


def agreed(value: T) -> T:
    """Rank 0's `value` on every rank."""
    return on_main(lambda: value)


def summed(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over the ranks (a copy; `values` itself in one process)."""
    if not active():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers into every rank's `module` (e.g. best.pt, read by rank 0 alone)."""
    if active():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


class _Summed(torch.autograd.Function):
    """A tensor summed over the ranks, with its gradient (every rank's output depends on every rank's input)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class HostSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Synchronised BatchNorm where SyncBatchNorm's kernels do not run (CPU, gloo), for BatchNorm layers of any
    dimension: training-mode statistics of the global batch from all-reduced sums (two passes, as one process
    computes the variance), differentiable. Otherwise (eval mode, one process) it is
    the BatchNorm it replaced; its state dict is the same."""

    def _check_input_dim(self, input: torch.Tensor) -> None:  # the layer it replaced checked its inputs already
        pass

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(input)
        dtype, input = input.dtype, input.float()  # statistics in float32 under bf16 autocast, as BatchNorm's kernels
        dims, shape = [0, *range(2, input.dim())], [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // max(input.size(1), 1)], dtype=torch.float64)
        dist.all_reduce(count)
        count = count.item()
        mean = _Summed.apply(input.sum(dims)) / count
        centred = input - mean.view(shape)
        var = _Summed.apply(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (count / max(count - 1, 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        out = out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out
        return out.to(dtype)


def smallest_last_batch(cfg: dict) -> int:
    """The smallest last global batch BatchNorm can train on: 2 images, but 2 per rank when each rank normalises its
    own shard (several ranks, --sync_bn false; shards differ by at most one image)."""
    return 2 * world() if active() and not cfg.get("sync_bn", True) else 2


def prepare_model(model: nn.Module, cfg: dict, device: torch.device) -> nn.Module:
    """The model with synchronised BatchNorm layers (--sync_bn) when several ranks train it: SyncBatchNorm on CUDA,
    HostSyncBatchNorm elsewhere; the same parameter objects, the same state dict keys."""
    if not (active() and cfg.get("sync_bn", True)):
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.__class__ = HostSyncBatchNorm
    return model


def wrap(model: nn.Module, cfg: dict, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (its trainable parameters only: frozen ones stay out of the gradient
    buckets), or itself in one process. Call again when the trainable parameters change (a new phase)."""
    if not active():
        return model
    # synchronised BatchNorm keeps the running statistics equal on every rank: no buffer broadcast every forward
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               broadcast_buffers=not cfg.get("sync_bn", True))
