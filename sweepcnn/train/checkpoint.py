"""Checkpoints written atomically and read with `weights_only=True` (no pickled code is ever executed)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sweepcnn.errors import UserError
from sweepcnn.runtime import signals_deferred


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a reader (or a resumed run after a kill at
    any moment) sees the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with signals_deferred():
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
