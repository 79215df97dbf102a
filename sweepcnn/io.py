"""File writes that a kill or a crash cannot tear, and the one cross-process lock.

Every file another process may read while it is being replaced (checkpoints, summaries, the sweep state, the
image cache) goes through `atomic_writer`: a temporary file in the same folder, fsync, rename over the target,
fsync of the folder. A reader sees the old file or the new one, never a torn one, also after a power loss.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sweepcnn.errors import UserError


@contextmanager
def atomic_writer(path: str | os.PathLike, text: bool = False) -> Iterator[IO]:
    """A file to write `path`'s new contents into; it replaces `path` when the block ends without an exception
    (and is removed when it raises)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # Created as open() creates files (0666 less the umask), not 0600 as mkstemp would: a shared folder stays readable.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w" if text else "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (no-op where folders cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    with atomic_writer(path, text=isinstance(data, str)) as f:
        f.write(data)


def write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> None:
    atomic_write(path, json.dumps(data, indent=indent, default=str) + "\n")


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block; other processes wait.

    fcntl.lockf (POSIX record locks) rather than flock: NFS carries record locks between hosts (NLM on v3, built
    into v4), so sweep workers on several machines sharing one folder exclude each other. The lock is released
    when the block ends and, if the process dies, by the kernel."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class LockHeld(Exception):
    """Another process holds the lock; the message is what it wrote into the lock file (who it is)."""


@contextmanager
def owned_lock(path: str | os.PathLike, owner: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block, without waiting: LockHeld, with the
    holder's `owner` text, while another process holds it. `owner` is in the file while the lock is held.

    The same lockf locks as file_lock (across NFS hosts; released by the kernel when the process dies, so a kill
    never leaves a stale lock). A lock file removed and made again between our open and lock is locked afresh."""
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise LockHeld(lock_holder(path)) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, owner.encode())
        yield
    finally:
        try:
            os.ftruncate(fd, 0)  # the file names a holder only while one holds it
        except OSError:
            pass
        os.close(fd)


@contextmanager
def file_lock_if_free(path: str | os.PathLike) -> Iterator[bool]:
    """Like file_lock, without waiting and without creating `path`: yields True while holding the lock (or when
    there is no lock file, so nobody can hold it), False when another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held elsewhere
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def lock_holder(path: str | os.PathLike) -> str:
    """Who holds the lock on `path`, as owned_lock wrote it ("another process" if the file does not say)."""
    try:
        return Path(path).read_text().strip() or "another process"
    except OSError:
        return "another process"


def lock_is_free(path: str | os.PathLike) -> bool:
    """Whether no process holds the lock on `path` (file_lock's, owned_lock's), asked with read access alone: a shared
    lock is refused while another process holds the exclusive one. A missing file is free; an unreadable one raises
    PermissionError. Never ask about a lock this process holds: lockf would convert it, and the close release it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):  # e.g. ENOLCK: no lock service (NFS without lockd)
            raise
        return False  # held elsewhere
    finally:
        os.close(fd)  # closing releases the shared lock
    return True


def nearest_existing(path: Path) -> Path:
    """`path`, else its nearest parent that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, flag: str, create: bool = False, remedy: str = "") -> None:
    """A UserError naming `flag` (and ending with `remedy`, if given) unless a file can be written in `path`. Without
    `create`, a missing `path` is judged by its nearest existing parent and nothing is created."""
    target = path if create else nearest_existing(path)
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        if not target.is_dir():
            raise NotADirectoryError(20, "not a folder", str(target))
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        where = "" if target == path else f" (at {target})"
        raise UserError(f"{flag}: cannot write to {path}{where}: {exc.strerror or exc}"
                        + (f"; {remedy}" if remedy else "")) from None
