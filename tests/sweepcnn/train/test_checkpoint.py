"""sweepcnn.train.checkpoint: a full disk during a checkpoint write, and what an unreadable file is, in words."""
import errno
import subprocess
import sys

import pytest
import torch

import sweepcnn.train.checkpoint
from sweepcnn.errors import UserError
from sweepcnn.train.checkpoint import load_checkpoint, save_atomic
from tests.helpers import FAST, ROOT


def _disk_fills_up(obj, f):
    f.write(b"x" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    save_atomic({"weights": torch.zeros(10)}, tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(sweepcnn.train.checkpoint.torch, "save", _disk_fills_up)
    with pytest.raises(UserError) as err:
        save_atomic({"weights": torch.zeros(2**18)}, tmp_path / "last.pt")  # 1 MiB of float32
    message = str(err.value)
    assert str(tmp_path) in message and "1.0 MiB" in message and "previous last.pt is intact" in message
    assert "\n" not in message
    assert (tmp_path / "last.pt").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_other_write_errors_are_not_disguised(tmp_path, monkeypatch):
    def fails(obj, f):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sweepcnn.train.checkpoint.torch, "save", fails)
    with pytest.raises(OSError, match="Input/output"):
        save_atomic({"x": torch.zeros(1)}, tmp_path / "last.pt")


@pytest.mark.slow
def test_a_full_disk_stops_training_with_one_error_line(tmp_path):
    # the second epoch's last.pt hits a full disk; the first epoch's checkpoint survives
    code = f"""
import errno, runpy, sys
import sweepcnn.train.checkpoint as checkpoint
real, calls = checkpoint.torch.save, []
def save(obj, f):
    calls.append(1)
    if "optimizer" in obj and obj["progress"]["epoch"] == 2:
        raise OSError(errno.ENOSPC, "No space left on device")
    real(obj, f)
checkpoint.torch.save = save
sys.argv = ["part_a/train.py", "--data=digits", "--max_images_per_class=20", "--epochs=3", "--report=false",
            "--out_dir={tmp_path}", "--run_name=r", *{FAST!r}]
runpy.run_path("part_a/train.py", run_name="__main__")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no space left" in errors[0] and str(tmp_path / "r") in errors[0] and "last.pt is intact" in errors[0]
    assert load_checkpoint(tmp_path / "r" / "last.pt")["progress"]["epoch"] == 1


@pytest.mark.parametrize("write, expected", [
    (lambda p: p.write_text("hello, not weights\n"), "a text file (it starts with b'hello, not weights"),
    (lambda p: torch.save(torch.nn.Linear(2, 2), p), "a pickled torch.nn.modules.linear.Linear object, not a state"),
    (lambda p: (torch.save({"a": torch.zeros(3)}, p), p.write_bytes(p.read_bytes()[:100])),
     "a truncated or corrupt PyTorch file"),
    (lambda p: p.write_bytes(b""), "an empty file"),
    (lambda p: p.write_bytes(b"\x00\x01\x02\xff" * 8), "not a file saved with torch.save"),
])
def test_an_unreadable_checkpoint_is_described_in_one_plain_line(tmp_path, write, expected):
    path = tmp_path / "x.pt"
    write(path)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert expected in message and "\n" not in message and "\x1b" not in message, message
