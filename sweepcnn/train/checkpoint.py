"""Checkpoints written atomically and read with `weights_only=True` (no pickled code is ever executed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sweepcnn.errors import UserError
from sweepcnn.io import atomic_writer
from sweepcnn.runtime import signals_deferred


def save_atomic(obj: Any, path: Path) -> None:
    """`torch.save` through `sweepcnn.io.atomic_writer`: a reader (or a resumed run after a kill at any moment) sees
    the old file or the new one, never a torn one. A SIGTERM/SIGINT during the write stops the run after it."""
    with signals_deferred(), atomic_writer(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's dict, loaded with weights_only=True; a missing or unreadable file is a UserError."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
