"""History that survives any stop: an epoch's log and its checkpoint are one step for a stop signal; an online
resume after a hard kill rewinds the W&B run; a resumed offline run is synced from its newest folder."""
import os
import signal
import sys
from dataclasses import asdict

import pytest
import torch

from sweepcnn import wandb_sync
from sweepcnn.errors import UserError
from sweepcnn.tracking import Tracker, read_history
from sweepcnn.train.engine import Progress
from sweepcnn.wandb_args import rewind_point
from tests.wandb_records import history_and_summary, offline_runs, run_record

ARGS = ["--data=digits", "--max_images_per_class=20", "--input_size=32", "--base_filters=8", "--dense_neurons=32",
        "--report=false", "--run_name=r"]


def test_a_sigterm_between_an_epochs_log_and_its_checkpoint_leaves_no_duplicate_epoch(tmp_path, monkeypatch, capsys):
    from part_a.train import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    real_log, logged = Tracker.log, []

    def log_then_terminated(self, metrics, step):
        wandb_step = real_log(self, metrics, step)
        logged.append(step)
        if len(logged) == 1:  # the signal lands after epoch 1 is logged, before last.pt holds it
            os.kill(os.getpid(), signal.SIGTERM)
        return wandb_step

    monkeypatch.setattr(Tracker, "log", log_then_terminated)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert main([*ARGS, f"--out_dir={tmp_path}", "--epochs=2"]) == 128 + signal.SIGTERM
        saved = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["progress"]["epoch"]
        assert saved == 1  # the epoch that was logged is the one saved
        assert main(["--resume", "--run_name=r", f"--out_dir={tmp_path}", "--epochs=2"]) == 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert logged == [1, 2]  # before: [1, 1, 2], epoch 1 trained and logged again
    assert [row["epoch"] for row in read_history(tmp_path / "r")] == [1, 2]
    newest = offline_runs(tmp_path / "r")[-1]  # the folder the printed `wandb sync` line names
    history, _, _ = history_and_summary(tmp_path / "r", newest)
    assert [row["epoch"] for row in history if "val_acc" in row] == [1, 2]
    assert f"wandb sync {newest.parent}" in capsys.readouterr().err
    # last.pt keeps the W&B step of its epoch's row: where an online resume after a hard kill rewinds to
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["progress"]
    assert last["wandb_step"] == next(row["_step"] for row in history if row.get("epoch") == last["epoch"])


class FakeRun:
    """An online run whose history rows go to `server` (the server's history of run abc123)."""

    def __init__(self, server: list, **kwargs):
        self.id, self.tags, self.settings, self.kwargs = "abc123", (), type("S", (), {"mode": "online"})(), kwargs
        self.url, self.summary, self.server = "https://wandb.example/r", {}, server

    @property
    def step(self) -> int:
        return len(self.server)

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, row: dict) -> None:
        self.server.append(row)

    def finish(self, exit_code: int = 0) -> None:
        pass


@pytest.fixture
def online(monkeypatch, tmp_path):
    """wandb.init replaced by a recorder (online W&B cannot run here) that rewinds the server's history as W&B does;
    returns the calls' keyword arguments and that history."""
    import wandb

    calls, server = [], []

    def init(**kwargs):
        calls.append(kwargs)
        if kwargs.get("resume_from") and getattr(init, "refuse", False):
            raise ValueError("rewind is not enabled for this entity")
        if kwargs.get("resume_from"):
            del server[int(kwargs["resume_from"].split("?_step=")[1]):]
        return FakeRun(server, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    for name in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_RUN_GROUP", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "wandb_id").write_text("abc123")
    return init, calls, server


def _killed_run(run_dir, logged: int, saved: int) -> None:
    """A run folder as a hard kill leaves it: `logged` epochs in metrics.jsonl, last.pt at epoch `saved`."""
    tracker = Tracker(run_dir, {**CFG, "wandb_mode": "disabled"}, "r", resume=False)
    for epoch in range(1, logged + 1):
        tracker.log({"epoch": epoch, "val_acc": 0.1 * epoch, "val_loss": 1.0}, epoch)
    torch.save({"progress": asdict(Progress(epoch=saved))}, run_dir / "last.pt")


CFG = {"wandb_mode": "online", "wandb_project": None, "wandb_entity": None}


def test_an_online_resume_after_a_hard_kill_rewinds_the_run_to_its_checkpoint(tmp_path, online):
    _, calls, _ = online
    _killed_run(tmp_path, logged=3, saved=2)
    Tracker(tmp_path, CFG, "r", resume=True)
    assert calls[-1]["resume_from"] == "abc123?_step=2" == rewind_point("abc123", 2)
    assert "resume" not in calls[-1]  # wandb refuses resume with resume_from
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "wandb_id").write_text("abc123")
    _killed_run(clean, logged=2, saved=2)  # a stop that saved what it logged: nothing to rewind
    Tracker(clean, CFG, "r", resume=True)
    assert calls[-1]["resume"] == "allow" and "resume_from" not in calls[-1] and calls[-1]["id"] == "abc123"


def test_a_rewind_after_a_tested_run_was_resumed_with_more_epochs_keeps_every_epoch_once(tmp_path, online):
    _, calls, server = online

    def train(tracker: Tracker, epoch: int, saved: bool = True) -> None:
        """An epoch logged, then saved in last.pt with its W&B step as fit saves it."""
        step = tracker.log({"epoch": epoch, "val_acc": 0.1 * epoch, "val_loss": 1.0}, epoch)
        if saved:
            torch.save({"progress": asdict(Progress(epoch=epoch, wandb_step=step))}, tmp_path / "last.pt")

    first = Tracker(tmp_path, CFG, "r", resume=False)  # --epochs=2 --test
    for epoch in (1, 2):
        train(first, epoch)
    first.run.log({"report/test_acc": 0.5})  # the report row --test logs after the last epoch: _step 2
    first.finish(0)
    resumed = Tracker(tmp_path, CFG, "r", resume=True)  # --resume --epochs=4
    train(resumed, 3)
    train(resumed, 4, saved=False)  # a hard kill before last.pt holds epoch 4
    train(Tracker(tmp_path, CFG, "r", resume=True), 4)
    assert calls[-1]["resume_from"] == "abc123?_step=4"  # before: _step=3, which cut epoch 3 out of the history
    assert [row.get("epoch") for row in server] == [1, 2, None, 3, 4]


def test_a_server_that_refuses_the_rewind_continues_the_run_and_says_so(tmp_path, online, capsys):
    init, calls, _ = online
    init.refuse = True
    _killed_run(tmp_path, logged=3, saved=1)
    tracker = Tracker(tmp_path, CFG, "r", resume=True)
    assert [c.get("resume_from") for c in calls[-2:]] == ["abc123?_step=1", None] and calls[-1]["resume"] == "allow"
    assert tracker.run is not None and "did not rewind" in capsys.readouterr().err


def test_the_rewinding_settings_are_valid_for_the_installed_wandb():
    from wandb import Settings

    settings = Settings(run_id="abc123", resume_from=rewind_point("abc123", 4))
    assert (settings.resume_from.run, settings.resume_from.value, settings.resume_from.metric) == ("abc123", 4, "_step")
    with pytest.raises(Exception, match="mutually exclusive"):
        Settings(resume="allow", resume_from=rewind_point("abc123", 4))


def test_a_resumed_offline_runs_newest_folder_is_the_one_to_sync(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = {"wandb_mode": None, "wandb_project": None, "wandb_entity": None}
    first = Tracker(tmp_path, cfg, "r", resume=False)
    first.log({"epoch": 1, "val_acc": 0.1}, 1)
    first.finish(1)
    second = Tracker(tmp_path, cfg, "r", resume=True)
    second.log({"epoch": 2, "val_acc": 0.2}, 2)
    second.finish(0)
    older, newer = offline_runs(tmp_path)
    printed = capsys.readouterr().err.splitlines()
    assert printed[-1].endswith(f"`wandb sync {newer.parent}`")
    history, _, _ = history_and_summary(tmp_path, newer)
    assert [row["epoch"] for row in history] == [1, 2] and run_record(newer)["run_id"] == run_record(older)["run_id"]
    assert wandb_sync.main([str(tmp_path), "--dry_run"]) == 0
    assert capsys.readouterr().out.strip() == f"{sys.executable} -m wandb sync {newer.parent}"


def test_wandb_sync_names_the_newest_offline_folder_of_every_run_below_its_paths(tmp_path, capsys):
    # a/ also holds its report's side run (python -m sweepcnn.report a --wandb), started after the training run
    for folder in ("a/wandb/offline-run-20261206_100000-a", "a/wandb/offline-run-20261206_110000-a",
                   "a/wandb/offline-run-20261206_120000-report", "b/wandb/offline-run-20261206_100500-b",
                   "c/wandb/latest-run"):
        (tmp_path / "sweep" / "runs" / folder).mkdir(parents=True)
    assert wandb_sync.main([str(tmp_path / "sweep"), "--dry_run"]) == 0
    runs = tmp_path / "sweep" / "runs"
    assert capsys.readouterr().out.split() == [
        sys.executable, "-m", "wandb", "sync", str(runs / "a/wandb/offline-run-20261206_110000-a"),
        str(runs / "a/wandb/offline-run-20261206_120000-report"), str(runs / "b/wandb/offline-run-20261206_100500-b")]
    with pytest.raises(UserError, match="no offline W&B run"):
        wandb_sync.main([str(runs / "c")])
