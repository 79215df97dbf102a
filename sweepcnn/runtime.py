"""Process set-up for fast, reproducible training: allocator tuning, seeds, device and precision choice, signals."""
from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import NoReturn

import numpy as np
import torch

from sweepcnn.errors import UserError

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # from glibc <malloc.h>


def tune_allocator() -> bool:
    """Stop glibc from returning freed memory to the OS after every batch.

    CPU training allocates and frees the same large activation buffers each step; with glibc's defaults every
    free of a big block is an munmap and every malloc a fresh, page-faulting mmap. Measured here: 1.6-3.9x faster
    CNN training. Linux/glibc only; set SWEEPCNN_NO_MALLOPT=1 to turn it off.
    """
    if os.environ.get("SWEEPCNN_NO_MALLOPT") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states, in a form that `torch.load(weights_only=True)` accepts."""
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    s = state["numpy"]
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_deterministic(enabled: bool) -> None:
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: {name} requested but CUDA is not available; use --device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device: {name} requested but this machine has {torch.cuda.device_count()} CUDA "
                        f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device: {name} requested but Apple's MPS is not available here; use --device=cpu "
                        "(or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device: {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere on: bf16 tensor cores (a T4 is 7.5)


def resolve_amp(name: str, device: torch.device) -> torch.dtype | None:
    """`auto`: bfloat16 where the hardware runs it natively (CUDA of compute capability 8.0 on, CPUs with
    AVX512-BF16/AMX); float16 (with a GradScaler) on older CUDA GPUs, where torch.cuda.is_bf16_supported() says yes
    but emulates it without tensor cores; elsewhere (CPUs without, MPS) off."""
    if name == "off":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if device.type == "cuda":
        native = torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY
        return torch.bfloat16 if native else torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def amp_name(dtype: torch.dtype | None) -> str:
    """The precision a run computes in, as summary.json and the W&B config record it (amp_dtype)."""
    return {torch.bfloat16: "bfloat16", torch.float16: "float16", None: "float32"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# SIGUSR1: preemption notice by convention (e.g. SLURM --signal=USR1@90); not on Windows.
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)) if s is not None)


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM/SIGINT/SIGUSR1 so the run can save, finish W&B and exit."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Deferral:
    depth = 0  # nesting of signals_deferred() blocks
    pending: int | None = None  # a signal that arrived inside one (or, collective, not yet agreed on)
    collective = False  # several ranks: signals are only recorded; sweepcnn.distributed.check_stop raises them


def _stop(signum: int) -> NoReturn:
    # Ignore repeats while the run is shutting down, so the clean-up itself is not interrupted.
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM/SIGINT/SIGUSR1 arriving inside this block raise Interrupted when it ends. For writes that must not be cut:
    Interrupted raised inside torch.save's zip writer becomes a RuntimeError, and the clean shutdown is lost."""
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
        if _Deferral.depth == 0 and _Deferral.pending is not None and not _Deferral.collective:
            raise_stop(_Deferral.pending)


def collective_signals(enabled: bool, raise_pending: bool = True) -> None:
    """Record stop signals instead of raising them (several ranks must stop at the same step); when turned off, a
    signal recorded meanwhile is raised (`raise_pending`)."""
    _Deferral.collective = enabled
    if not enabled and raise_pending and _Deferral.depth == 0 and _Deferral.pending is not None:
        raise_stop(_Deferral.pending)


def pending_signal() -> int | None:
    """The stop signal recorded but not raised yet, if any."""
    return _Deferral.pending


def raise_stop(signum: int) -> NoReturn:
    """Raise Interrupted for `signum` now (repeats of the stop signals are ignored from here on)."""
    _Deferral.pending = None
    _stop(signum)


def install_signal_handlers() -> None:
    def handler(signum, frame):
        if _Deferral.depth or _Deferral.collective:
            _Deferral.pending = signum
            return
        _stop(signum)

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, handler)
