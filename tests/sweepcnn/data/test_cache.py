import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweepcnn.data import cache as image_cache
from sweepcnn.data.cache import build_image_cache
from sweepcnn.data.images import load_image
from sweepcnn.paths import default_cache_dir


def make_files(folder: Path, n: int = 10) -> list[Path]:
    """n small JPEGs of different sizes and colours, with two bad files among them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (20 + i, 30 + 2 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.jpg")
        paths.append(folder / f"img{i:02d}.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture")
    return paths[:3] + [folder / "empty.jpg"] + paths[3:7] + [folder / "notes.png"] + paths[7:]


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts load_image calls made by the cache (num_workers=0 keeps them in this process)."""
    calls = []

    def counting(path, size, channels):
        calls.append(Path(path).name)
        return load_image(path, size, channels)

    monkeypatch.setattr(image_cache, "load_image", counting)
    return calls


def build(paths, cache_dir, size=16, channels=3, num_workers=0):
    return build_image_cache(paths, size, channels, cache_dir=cache_dir, num_workers=num_workers, progress=False)


def test_build_then_reuse(tmp_path, count_decodes):
    paths = make_files(tmp_path / "img")
    c = build(paths, tmp_path / "cache")
    assert len(count_decodes) == 12
    good = [p for p in paths if p.name.startswith("img")]
    assert c.paths == good and len(c) == 10
    assert [(p.name, r) for p, r in c.skipped] == [("empty.jpg", "zero-byte file"),
                                                  ("notes.png", "not an image (cannot identify format)")]
    assert isinstance(c.pixels, np.memmap) and not c.pixels.flags.writeable
    assert c.pixels.shape == (10, 3, 16, 16) and c.pixels.dtype == np.uint8
    for row, p in enumerate(good):
        assert torch.equal(torch.from_numpy(np.array(c.pixels[row])), load_image(p, 16, 3))

    again = build(paths, tmp_path / "cache")
    assert len(count_decodes) == 12  # nothing decoded: bad files too are reported from the cache's metadata
    assert again.paths == c.paths and again.skipped == c.skipped
    assert np.array_equal(again.pixels, c.pixels)
    files = sorted(f.suffix for f in (tmp_path / "cache").iterdir())
    assert files == [".json", ".lock", ".npy"]  # one cache, no leftover temporary files
    meta = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert meta["shape"] == [10, 3, 16, 16] and len(meta["paths"]) == 12 and len(meta["skipped"]) == 2


def test_changes_rebuild(tmp_path, count_decodes):
    paths = make_files(tmp_path / "img")
    first = build(paths, tmp_path / "cache")
    st = paths[0].stat()
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same size and content
    build(paths, tmp_path / "cache")
    assert len(count_decodes) == 24
    Image.new("RGB", (8, 8), (255, 0, 0)).save(paths[0])
    changed = build(paths, tmp_path / "cache")
    assert len(count_decodes) == 36
    assert changed.pixels[0, 0].min() > 200 and not np.array_equal(changed.pixels[0], first.pixels[0])

    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "new.jpg")
    assert len(build(paths + [tmp_path / "img" / "new.jpg"], tmp_path / "cache")) == 11
    assert len(count_decodes) == 49
    assert build(paths, tmp_path / "cache", size=8).pixels.shape == (10, 3, 8, 8)
    assert build(paths, tmp_path / "cache", channels=1).pixels.shape == (10, 1, 16, 16)
    assert len(count_decodes) == 73
    build(paths, tmp_path / "cache")
    assert len(count_decodes) == 73  # the cache of the changed files is still there


@pytest.mark.slow
def test_parallel_workers_match_in_process(tmp_path):
    paths = make_files(tmp_path / "img", n=40)
    serial = build(paths, tmp_path / "a")
    parallel = build(paths, tmp_path / "b", num_workers=2)
    assert parallel.paths == serial.paths and parallel.skipped == serial.skipped
    assert np.array_equal(parallel.pixels, serial.pixels)


def test_interrupted_build_leaves_no_valid_cache(tmp_path, monkeypatch):
    paths = make_files(tmp_path / "img")

    calls = []

    def dies_on_fifth(path, size, channels):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return load_image(path, size, channels)

    monkeypatch.setattr(image_cache, "load_image", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        build(paths, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.json")) and not list((tmp_path / "cache").glob("*.npy"))
    monkeypatch.setattr(image_cache, "load_image", load_image)
    c = build(paths, tmp_path / "cache")
    assert len(c) == 10 and len(c.skipped) == 2 and c.pixels[-1].any()


def test_empty_list_and_default_cache_dir(tmp_path):
    c = build_image_cache([], 16, 3, num_workers=0, progress=False)
    assert len(c) == 0 and c.skipped == [] and c.pixels.shape == (0, 3, 16, 16)
    assert len(list((default_cache_dir() / "images").glob("*.json"))) == 1  # conftest points it into tmp


def _build_in_other_process(paths, cache_dir, log, barrier, results):
    def slow_counting(path, size, channels):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.02)  # a build long enough that the other process surely finds it running
        return load_image(path, size, channels)

    image_cache.load_image = slow_counting
    barrier.wait()
    c = build(paths, cache_dir)
    results.put(([str(p) for p in c.paths], c.skipped, hashlib.sha256(np.ascontiguousarray(c.pixels)).hexdigest()))


@pytest.mark.slow
def test_concurrent_builders_share_one_build(tmp_path):
    paths = make_files(tmp_path / "img")
    ctx = multiprocessing.get_context("spawn")  # like two sweep agents started at once
    barrier, results = ctx.Barrier(2), ctx.Queue()
    args = (paths, tmp_path / "cache", tmp_path / "decodes.log", barrier, results)
    procs = [ctx.Process(target=_build_in_other_process, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert outcomes[0] == outcomes[1]
    assert len(outcomes[0][0]) == 10 and len(outcomes[0][1]) == 2
    decoders = (tmp_path / "decodes.log").read_text().split()
    assert len(decoders) == 12 and len(set(decoders)) == 1  # one process decoded everything, once
    assert np.array_equal(build(paths, tmp_path / "cache").pixels, build(paths, tmp_path / "fresh").pixels)


def test_real_photos(tmp_path, imagenette):
    paths = sorted((imagenette / "train").rglob("*.JPEG"))[::190][:50]
    c = build(paths, tmp_path / "cache", size=64, num_workers=2)
    assert c.paths == paths and c.skipped == [] and c.pixels.shape == (50, 3, 64, 64)
    for row in (0, 17, 49):
        assert torch.equal(torch.from_numpy(np.array(c.pixels[row])), load_image(paths[row], 64, 3))


def test_a_full_disk_leaves_no_partial_file_and_is_one_line(tmp_path, monkeypatch):
    import errno
    from contextlib import contextmanager

    from sweepcnn.errors import UserError

    real_writer = image_cache.atomic_writer

    class FillsUp:  # the .npy file: the disk is full after its header and first chunk
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextmanager
    def full_disk_writer(path, text=False):
        with real_writer(path, text) as f:
            yield FillsUp(f) if str(path).endswith(".npy") else f

    monkeypatch.setattr(image_cache, "atomic_writer", full_disk_writer)
    with pytest.raises(UserError) as err:
        build(make_files(tmp_path / "img", n=40), tmp_path / "cache")
    message = str(err.value)
    assert "no space left" in message and str(tmp_path / "cache") in message and "about 36 KiB" in message
    assert "42 images at 16 px" in message and "\n" not in message
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".lock"]  # no partial .npy, no .json
    monkeypatch.setattr(image_cache, "atomic_writer", real_writer)
    assert len(build(make_files(tmp_path / "img", n=40), tmp_path / "cache")) == 40  # room again: it builds


def test_too_little_free_space_is_refused_before_decoding(tmp_path, monkeypatch, count_decodes):
    from collections import namedtuple

    from sweepcnn.errors import UserError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(UserError, match="no space left .* about 13 KiB"):
        build(make_files(tmp_path / "img"), tmp_path / "cache")
    assert count_decodes == []


def _hold_lock(lock: Path, ready, release) -> None:
    from sweepcnn.io import file_lock

    with file_lock(lock):
        ready.set()
        release.wait(60)


@pytest.mark.slow
def test_stale_partial_files_are_removed_but_not_those_of_a_running_build(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale_new, stale_old = cache / ".aaaa.npy.1234abcd.tmp", cache / "bbbb.npy.partial"  # killed builds
    running = cache / ".cccc.npy.5678ef01.tmp"
    for p in (stale_new, stale_old, running):
        p.write_bytes(b"\0" * 1000)
    (cache / "aaaa.lock").touch()  # a lock file nobody holds
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(cache / "cccc.lock", ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        c = build(make_files(tmp_path / "img"), cache)
        assert len(c) == 10
        assert not stale_new.exists() and not stale_old.exists() and running.exists()
    finally:
        release.set()
        holder.join(60)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


DAMAGE = {  # each way a cache entry's files can be damaged: (which file, what is done to it)
    "npy deleted": (".npy", lambda p: p.unlink()),
    "npy truncated in its pixels": (".npy", lambda p: _truncate(p, p.stat().st_size // 2)),
    "npy truncated in its header": (".npy", lambda p: _truncate(p, 20)),
    "npy emptied": (".npy", lambda p: _truncate(p, 0)),
    "npy of another shape": (".npy", lambda p: np.save(p, np.zeros((2, 3), np.uint8))),
    "json truncated": (".json", lambda p: _truncate(p, p.stat().st_size // 2)),
    "json not text": (".json", lambda p: p.write_bytes(b"\xff\xfe\x00garbage")),
    "json of another shape": (".json", lambda p: p.write_text("[1, 2]")),
    "json without skipped": (".json", lambda p: p.write_text(json.dumps(
        {k: v for k, v in json.loads(p.read_text()).items() if k != "skipped"}))),
    "json of other paths": (".json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "paths": ["/elsewhere.jpg"]}))),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_rebuilt_with_one_warning(tmp_path, capsys, count_decodes, damage):
    paths = make_files(tmp_path / "img")
    build(paths, tmp_path / "cache")
    suffix, harm = DAMAGE[damage]
    harm(next((tmp_path / "cache").glob(f"*{suffix}")))
    capsys.readouterr()

    healed = build(paths, tmp_path / "cache")
    err = capsys.readouterr().err
    assert err.startswith("warning: the decoded-image cache entry ") and err.count("\n") == 1, err
    assert "damaged" in err and "rebuilding it" in err and str(tmp_path / "cache") in err
    assert len(count_decodes) == 24  # decoded again
    fresh = build(paths, tmp_path / "fresh")
    assert healed.paths == fresh.paths and healed.skipped == fresh.skipped
    assert np.array_equal(healed.pixels, fresh.pixels)
    assert sorted(f.suffix for f in (tmp_path / "cache").iterdir()) == [".json", ".lock", ".npy"]

    again = build(paths, tmp_path / "cache")  # healed for good: no warning, nothing decoded
    assert capsys.readouterr().err == "" and len(count_decodes) == 36  # 36: the fresh build's 12
    assert np.array_equal(again.pixels, fresh.pixels)


def test_a_deleted_json_is_a_missing_entry_rebuilt_silently(tmp_path, capsys, count_decodes):
    paths = make_files(tmp_path / "img")
    first = build(paths, tmp_path / "cache")
    next((tmp_path / "cache").glob("*.json")).unlink()  # as a build killed between its two renames leaves it
    capsys.readouterr()
    assert np.array_equal(build(paths, tmp_path / "cache").pixels, first.pixels)
    assert capsys.readouterr().err == "" and len(count_decodes) == 24


@pytest.mark.slow
def test_a_run_after_the_cache_was_damaged_works_and_warns_once(tmp_path):
    from tests.helpers import train, write_class_folders

    photos = write_class_folders(tmp_path / "photos", per_class=4)
    args = [f"--data={photos}", f"--cache_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path / 'runs'}", "--epochs=1",
            "--input_size=32", "--base_filters=4", "--dense_neurons=8", "--batch_size=4", "--wandb_mode=disabled"]
    train(*args, "--run_name=first")
    npy = next((tmp_path / "cache").rglob("*.npy"))
    _truncate(npy, npy.stat().st_size - 100)
    second = train(*args, "--run_name=second")
    warnings = [line for line in second.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cache entry" in warnings[0] and "damaged" in warnings[0], second.stderr
    assert "Traceback" not in second.stderr
    assert len((tmp_path / "runs" / "second" / "metrics.jsonl").read_text().splitlines()) == 1  # its one epoch
