"""Phase 2 of a start-up (see sweepcnn.train.startup): one live process per run folder, and a start that fails
after writing begins leaves the folder as it found it.

`hold_run_folder` takes the run folder's lock (`run.lock`, held for the life of the run); a second process that
wants the folder, by the same --run_name, a --resume or a relaunch of the same WANDB_RUN_ID, is refused with one
line naming the live one. `Rollback.undo` removes a new run's folder, or restores a resumed run's files.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sweepcnn.errors import UserError
from sweepcnn.io import LockHeld, atomic_write, check_writable, lock_holder, lock_is_free, owned_lock
from sweepcnn.runtime import Interrupted, signals_deferred

LOCK = "run.lock"
# What a start-up writes into an existing run folder before training: restored as they were by Rollback.undo.
START_FILES = ("config.yaml", "split.json", "run.json", "wandb_id", "wandb_group")


def _in_use(path: Path, holder: str) -> UserError:
    return UserError(f"run folder {path} is in use by {holder}: one process trains a run folder at a time; wait for "
                     "it to end (or stop it), or pick another --run_name")


def check_free(path: Path) -> None:
    """Phase 1's look at the lock: a UserError naming the live process that holds the run folder. Reads only, so a
    read-only run folder is judged too (run_dir.open_run refuses to resume one)."""
    lock = path / LOCK
    try:
        if lock_is_free(lock):
            return
    except PermissionError as exc:
        raise UserError(f"run folder {path}: cannot read its lock {lock}: {exc.strerror}; this user can neither "
                        "check nor train it: pick another --run_name or --out_dir") from None
    raise _in_use(path, lock_holder(lock))


class Rollback:
    """The run folder as phase 2 found it: `undo` puts it back (a folder this process made removed, with the empty
    parents made for it; an existing one without what was added, START_FILES restored)."""

    def __init__(self, path: Path, parents_made: list[Path] | None, lock_made: bool):
        self.path, self.parents_made = path, parents_made  # None: the folder existed
        self.before = set(path.rglob("*")) - ({path / LOCK} if lock_made else set()) if parents_made is None else set()
        self.saved = {} if parents_made is not None else {
            name: (path / name).read_bytes() for name in START_FILES if (path / name).is_file()}

    def undo(self) -> None:
        if self.parents_made is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            for parent in self.parents_made:  # innermost first; another run may have moved in meanwhile
                try:
                    parent.rmdir()
                except OSError:
                    break
            return
        for added in sorted(set(self.path.rglob("*")) - self.before, key=lambda p: len(p.parts), reverse=True):
            if added.is_dir() and not added.is_symlink():
                shutil.rmtree(added, ignore_errors=True)
            else:
                added.unlink(missing_ok=True)
        for name, data in self.saved.items():
            if (self.path / name).read_bytes() != data:
                atomic_write(self.path / name, data)


def _make(path: Path) -> list[Path] | None:
    """Make the run folder: the parents this made, innermost first, or None if the folder existed (made by someone
    else, perhaps a moment ago)."""
    missing = [parent for parent in path.parents if not parent.exists()]
    check_writable(path.parent, "--out_dir", create=True)
    try:
        path.mkdir()
    except FileExistsError:
        return None
    except OSError:
        check_writable(path, "--out_dir", create=True)  # the one-line error naming the flag
        raise
    return missing


@contextmanager
def hold_run_folder(path: Path) -> Iterator[Rollback]:
    """Make the run folder if needed and hold its lock for the block (the run's life). A stop signal before the block
    starts undoes what was made, so no empty run folder is left behind."""
    owner = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    with ExitStack() as held:
        rollback = None
        try:
            with signals_deferred():  # a stop is raised at the end, once `rollback` can undo what was made
                parents_made = _make(path)
                lock_made = not (path / LOCK).exists()
                held.enter_context(owned_lock(path / LOCK, owner))
                rollback = Rollback(path, parents_made, lock_made)
        except LockHeld as other:  # a folder held by another process is never ours: nothing to undo
            raise _in_use(path, str(other)) from None
        except Interrupted:
            if rollback is not None:
                rollback.undo()
            raise
        yield rollback
