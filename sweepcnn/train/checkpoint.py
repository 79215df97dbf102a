"""Checkpoints written atomically and read with `weights_only=True` (no pickled code is ever executed)."""
from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sweepcnn.errors import UserError
from sweepcnn.io import atomic_writer
from sweepcnn.runtime import signals_deferred

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint: about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 / 10 else f"{n / 1024:,.0f} KiB"


def no_space_message(folder: Path, what: str, needed: int) -> str:
    return (f"no space left on the device of {folder} (or its quota is used up): {what} needs about "
            f"{_size(needed)} there; free space, or use another folder")


def save_atomic(obj: Any, path: Path) -> None:
    """`torch.save` through `sweepcnn.io.atomic_writer`: a reader (or a resumed run after a kill at any moment) sees
    the old file or the new one, never a torn one. A SIGTERM/SIGINT during the write stops the run after it. A full
    disk is a UserError; the previous file is kept."""
    try:
        with signals_deferred(), atomic_writer(path) as f:
            torch.save(obj, f)
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise UserError(no_space_message(path.parent, f"writing {path.name}", tensor_bytes(obj)) + kept) from None


def unreadable(path: Path, exc: Exception) -> str:
    """What the file is, as a phrase ("a text file ..."), when torch.load(path, weights_only=True) failed with `exc`
    (torch's own messages carry ANSI codes and advice to load untrusted pickles)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        return f"a file that cannot be read ({err.strerror})"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if not head:
        return "an empty file"
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch's zip format nor a (legacy) pickle
        if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
            return f"a text file (it starts with {head[:20]!r}), not a file saved with torch.save"
        return f"not a file saved with torch.save (it starts with {head[:8]!r})"
    if "Unsupported global" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        return f"a pickled {found.group(1) if found else 'Python'} object, not a state dict"
    if "Weights only load failed" in text:
        return "a pickle of other objects than tensors, not a state dict"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(exc).__name__
    return f"a truncated or corrupt PyTorch file ({first})"


def shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a state dict."""
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def _few(keys: list[str], few: int) -> str:
    return ", ".join(keys[:few]) + (f" and {len(keys) - few} more" if len(keys) > few else "")


def state_mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], few: int = 3
                   ) -> str:
    """Why a state dict with the parameter shapes `found` does not load into a model with `expected` ones: the
    missing, unexpected and reshaped keys, a few of each ('' when it fits)."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [f"{key} {list(found[key])} (the model's: {list(expected[key])})" for key in expected
                if key in found and found[key] != expected[key]]
    parts = [f"{len(keys)} {what}: {_few(keys, few)}" for what, keys in (
        ("missing key(s)", missing), ("unexpected key(s)", unexpected), ("of another shape", reshaped)) if keys]
    return "; ".join(parts)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's dict, loaded with weights_only=True; a missing or unreadable file is a UserError."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"cannot read checkpoint {path}: it is {unreadable(path, exc)}") from None
