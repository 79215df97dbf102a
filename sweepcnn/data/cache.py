"""Decode and resize every image once; later epochs, runs and sweep trials read uint8 pixels from a memory-mapped file.

A cache is `<key>.npy` (rows of uint8 [channels, size, size]) plus `<key>.json` (paths, skipped files with reasons,
shape) under `cache_dir`. The key hashes the paths in the order given, each file's size and mtime, the image size,
channels and FORMAT_VERSION, so any change to the file list or a file gives a new key and a fresh build. The .json is
renamed into place last, so only a finished build is ever found. Old caches are never deleted: clear the directory
to reclaim the space. A build's partial file is removed when the build fails; one left by a killed build (its key's
lock is free) is removed when the next build starts. A full disk is a UserError naming the space needed.
A damaged entry (a deleted or truncated .npy, a .json that is unreadable or describes other images) is found when
it is opened, reported in one warning line and rebuilt under its key's lock, as a missing one is built.
"""
from __future__ import annotations

import errno
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from tqdm import tqdm

from sweepcnn.data.images import BadImageError, load_image
from sweepcnn.errors import UserError
from sweepcnn.io import atomic_writer, file_lock, file_lock_if_free, write_json
from sweepcnn.paths import default_cache_dir

FORMAT_VERSION = 1  # bump when load_image's output changes, to invalidate existing caches
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota


@dataclass
class CachedImages:
    paths: list[Path]  # the good files, in the order given
    skipped: list[tuple[Path, str]]  # (path, reason) for files that could not be decoded
    pixels: np.memmap  # uint8 [len(paths), channels, size, size], read-only

    def __len__(self) -> int:
        return len(self.paths)


def build_image_cache(
    paths: list[Path],
    size: int,
    channels: int,
    cache_dir: Path | None = None,
    num_workers: int = 2,
    progress: bool = True,
) -> CachedImages:
    """Return the cache of `paths` decoded by `load_image(path, size, channels)`, building it first if needed.

    Safe for concurrent callers in separate processes: one builds while the others wait, then all read its result.
    """
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "images"
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(paths, size, channels)
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    found = _open_cache(paths, size, channels, npy, meta)
    if isinstance(found, CachedImages):
        return found
    with file_lock(cache_dir / f"{key}.lock"):  # released also if this process dies
        found = _open_cache(paths, size, channels, npy, meta)  # another process may have built it while we waited
        if isinstance(found, CachedImages):
            return found
        if found:  # a damaged entry: its .json exists but it cannot be read
            print(f"warning: the decoded-image cache entry {meta.with_suffix('.*')} is damaged ({found}); "
                  "rebuilding it", file=sys.stderr, flush=True)
            meta.unlink()  # first: while it is rebuilt, the entry is missing rather than damaged
            npy.unlink(missing_ok=True)
        remove_stale_partials(cache_dir, key)
        needed = len(paths) * channels * size * size + 4096  # the .npy (pixels, header) and its .json
        if shutil.disk_usage(cache_dir).free < needed:
            raise UserError(_no_space(cache_dir, len(paths), size, needed))
        try:
            _build(paths, size, channels, npy, meta, num_workers, progress)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            npy.unlink(missing_ok=True)  # written whole but without its .json: never used
            raise UserError(_no_space(cache_dir, len(paths), size, needed)) from None
    found = _open_cache(paths, size, channels, npy, meta)
    if not isinstance(found, CachedImages):
        raise RuntimeError(f"the image cache entry {meta} just built cannot be read: {found}")
    return found


def _open_cache(paths: list[Path], size: int, channels: int, npy: Path, meta: Path) -> CachedImages | str:
    """The cache entry of `paths`; else "" when it does not exist (no .json), or what is wrong with it: a deleted or
    truncated .npy, or a .json that is not what `_build` writes for these paths."""
    try:
        info = json.loads(meta.read_text())
    except FileNotFoundError:
        return ""
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        return f"{meta.name}: {exc}"
    try:
        skipped = [(int(i), str(reason)) for i, reason in info["skipped"]]
        good = len(paths) - len(skipped)
        if info["paths"] != [str(p.absolute()) for p in paths] or info["shape"] != [good, channels, size, size]:
            return f"{meta.name} describes other images"
        bad = dict(skipped)
        if len(bad) != len(skipped) or not all(0 <= i < len(paths) for i in bad):
            return f"{meta.name} describes other images"
    except (KeyError, TypeError, ValueError) as exc:
        return f"{meta.name}: missing or malformed {exc}"
    try:
        pixels = np.load(npy, mmap_mode="r")
    except FileNotFoundError:
        return f"{npy.name} is missing"
    except (OSError, ValueError, EOFError) as exc:  # a truncated file fails to map, or to parse its header
        return f"{npy.name}: {exc}"
    if pixels.dtype != np.uint8 or pixels.shape != (len(paths), channels, size, size):
        return f"{npy.name} holds {pixels.dtype} {list(pixels.shape)}"
    kept = [p for i, p in enumerate(paths) if i not in bad]
    # the file has len(bad) unused rows at the end
    return CachedImages(kept, [(paths[i], reason) for i, reason in skipped], pixels[:good])


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 / 10 else f"{n / 1024:,.0f} KiB"


def _no_space(cache_dir: Path, count: int, size: int, needed: int) -> str:
    return (f"no space left on the device of the image cache {cache_dir} (or its quota is used up): {count} images "
            f"at {size} px need about {_size(needed)} there; free space, or set --cache_dir (or "
            "$SWEEPCNN_CACHE) to a folder with room")


def _key_of(partial: Path) -> str:
    """`.<key>.npy.<random>.tmp` (sweepcnn.io.atomic_writer's temporary file) or `<key>.npy.partial` (older)."""
    return partial.name.lstrip(".").split(".", 1)[0]


def remove_stale_partials(cache_dir: Path, own_key: str) -> None:
    """Delete partial files of builds that died (a kill or a power loss; a failing build removes its own). The
    caller holds `own_key`'s lock; any other key's partial is stale when no process holds that key's lock."""
    for partial in [*cache_dir.glob(".*.npy.*.tmp"), *cache_dir.glob("*.npy.partial")]:
        key = _key_of(partial)
        if key == own_key:
            partial.unlink(missing_ok=True)
            continue
        with file_lock_if_free(cache_dir / f"{key}.lock") as free:
            if free:  # while holding the lock: no build of that key can start meanwhile
                partial.unlink(missing_ok=True)


def _cache_key(paths: list[Path], size: int, channels: int) -> str:
    h = hashlib.sha256(f"v{FORMAT_VERSION} size={size} channels={channels}\n".encode())
    for p in paths:
        try:
            st = p.stat()
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # a broken symlink: decoding reports it as a skipped file
            stamp = "unreadable"
        h.update(f"{p.absolute()}\0{stamp}\n".encode())
    return h.hexdigest()[:32]


class _DecodeChunk(Dataset):
    """Item = a list of indices -> (their decoded pixels stacked, [(index, reason)] for the bad ones).

    Chunks, not single images, cross from the workers: one shared-memory tensor per chunk is much cheaper.
    """

    def __init__(self, paths: list[Path], size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels

    def __getitem__(self, chunk: list[int]) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        x = torch.empty(len(chunk), self.channels, self.size, self.size, dtype=torch.uint8)
        n, bad = 0, []
        for i in chunk:
            try:
                x[n] = load_image(self.paths[i], self.size, self.channels)
                n += 1
            except BadImageError as e:
                bad.append((i, str(e)))
        return x[:n], bad


def _build(paths: list[Path], size: int, channels: int, npy: Path, meta: Path, num_workers: int, progress: bool):
    chunks = BatchSampler(SequentialSampler(paths), batch_size=16, drop_last=False)
    # Its own generator: building a cache must not consume the global RNG, or a run's model initialisation would
    # depend on whether the cache already existed.
    loader = DataLoader(_DecodeChunk(paths, size, channels), sampler=chunks, batch_size=None, num_workers=num_workers,
                        generator=torch.Generator())
    n, skipped = 0, []
    # appending rows with write() is ~1.5x faster than filling a fresh memmap page by page; the file is on disk
    # (fsync'd) and renamed into place before the .json says it is valid, even if the machine crashes
    with atomic_writer(npy) as f, tqdm(total=len(paths), desc="decoding images", unit="img",
                                       disable=None if progress else True) as bar:
        shape = (len(paths), channels, size, size)  # bad files leave the last len(skipped) rows unused (zeros)
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for x, bad in loader:
            f.write(x.numpy().data)
            n += len(x)
            skipped += bad
            bar.update(len(x) + len(bad))
        f.truncate(f.tell() + len(skipped) * channels * size * size)
    info = {
        "version": FORMAT_VERSION,
        "shape": [n, channels, size, size],
        "paths": [str(p.absolute()) for p in paths],
        "skipped": skipped,
    }
    write_json(meta, info, indent=1)
