"""The run folder: names, unwritable places, relaunches by run id (W&B requeue) and under a sweep."""
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sweepcnn.errors import UserError
from sweepcnn.train.run_dir import check_run_name, check_writable, open_run
from sweepcnn.train.run_lock import check_free
from sweepcnn.tracking import read_history
from tests.helpers import FAST, ROOT, train
from tests.sweepcnn.train.test_resume import assert_refused, snapshot

TINY = ["--data=digits", *FAST, "--epochs=1"]


@pytest.mark.parametrize("name", ["../escape", "../../escape", "a/b", "..", ".", "a\\b", "x..y"])
def test_run_names_with_separators_or_dotdot_are_refused(name):
    with pytest.raises(UserError, match="plain folder name"):
        check_run_name(name)


def test_an_unwritable_folder_is_one_error_and_nothing_is_created(tmp_path, monkeypatch):
    real_open = os.open
    locked = str(tmp_path / "locked")

    def read_only(path, *args, **kwargs):  # what a read-only file system does, also for root
        if str(path).startswith(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(UserError, match="--out_dir: cannot write to .*locked.*Permission denied"):
        check_writable(tmp_path / "locked" / "runs" / "r", "--out_dir")
    assert list((tmp_path / "locked").iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_resume_or_test_of_a_read_only_run_folder_is_one_error(tmp_path):
    """The folder and its files read-only (run.lock too), as after `chmod -R a-w`."""
    run = tmp_path / "r"
    train(*TINY, f"--out_dir={tmp_path}", "--run_name=r")
    before = snapshot(run)
    paths = [*run.rglob("*"), run]
    for path in paths:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        for more in (["--epochs=2"], ["--test"]):
            proc = train("--resume", "--run_name=r", f"--out_dir={tmp_path}", *more, check=False)
            assert_refused(proc, f"cannot write to {run}: Permission denied", "copy it to a folder you can write")
    finally:
        for path in paths:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert snapshot(run) == before


def test_a_run_folder_on_a_read_only_file_system_is_checked_then_refused_in_one_line(tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\n")
    (run / "run.lock").touch()
    real_open = os.open

    def read_only_file_system(path, flags, *args, **kwargs):  # EROFS to any writer, also to root; reads pass
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_file_system)
    with pytest.raises(UserError, match=f"--resume: the run folder: cannot write to {run}: Read-only file system; "
                                        "a run resumes in its own folder"):
        open_run({"out_dir": str(tmp_path), "run_name": "r", "resume": True}, set(), {}, "python part_a/train.py")


def test_an_unreadable_run_lock_is_one_error(tmp_path, monkeypatch):
    (tmp_path / "run.lock").touch()
    real_open = os.open

    def another_users(path, *args, **kwargs):  # a file of mode 0600 of another user (root reads it: simulated)
        if str(path) == str(tmp_path / "run.lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", another_users)
    with pytest.raises(UserError, match=f"run folder {tmp_path}: cannot read its lock .*Permission denied"):
        check_free(tmp_path)


def interrupt_after(args: list[str], epochs: int, signum: int, env: dict,
                    launcher: tuple[str, ...] = (sys.executable,)) -> subprocess.Popen:
    """Run part_a/train.py (through `launcher`, e.g. torchrun), send `signum` once `epochs` epochs are logged and
    checkpointed in `run` (the row is logged before last.pt is written), wait for it to end."""
    proc = subprocess.Popen([*launcher, "part_a/train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    run = Path(next(a for a in args if a.startswith("--out_dir=")).partition("=")[2]) / env["WANDB_RUN_ID"]
    deadline = time.time() + 300
    while len(read_history(run)) < epochs or not (run / "last.pt").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    proc.communicate(timeout=120)
    return proc


@pytest.mark.slow
def test_a_relaunch_with_the_same_wandb_run_id_resumes_then_leaves_a_finished_run_alone(tmp_path):
    env = {"WANDB_RUN_ID": "requeued1"}
    (tmp_path / "requeued1").mkdir()  # what a sweep runner creates before the trial starts
    proc = interrupt_after([*TINY, "--epochs=100", f"--out_dir={tmp_path}"], 1, signal.SIGINT, env)
    assert proc.returncode == 128 + signal.SIGINT
    run = tmp_path / "requeued1"
    done = torch.load(run / "last.pt", weights_only=True)["progress"]["epoch"]
    proc = train(*TINY, f"--epochs={done + 1}", f"--out_dir={tmp_path}", env=env)  # a relaunch, as W&B requeues
    assert "resuming it" in proc.stderr
    assert [row["epoch"] for row in read_history(run)] == list(range(1, done + 2))
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    before = snapshot(run)
    proc = train(*TINY, f"--epochs={done + 5}", f"--out_dir={tmp_path}", env=env)
    assert proc.returncode == 0 and "already finished" in proc.stdout
    assert snapshot(run) == before
    # without the run id, the same folder name is still never overwritten
    proc = train(*TINY, f"--out_dir={tmp_path}", "--run_name=requeued1", check=False)
    assert_refused(proc, "already exists")
