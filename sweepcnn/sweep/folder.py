"""A sweep folder shared by its workers: `state.json` (every trial) under one lock, whether a trial's worker is still
alive, and the records a reader opens: trials.csv (one row per trial) and best.yaml (the best trial's parameters).

Trial states: running, finished, stopped (by hyperband), failed, crashed, and interrupted (Ctrl-C, a dead worker on
this host, preemption): an interrupted trial is resumed when the sweep runs again.

    SWEEP_DIR/sweep.yaml  state.json  lock  trials.csv  best.yaml  runs/<run_id>/
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from sweepcnn.errors import UserError
from sweepcnn.io import atomic_write, check_writable, file_lock
from sweepcnn.report.tables import write_csv
from sweepcnn.sweep.spec import metric_goal, swept_names
from sweepcnn.tracking import RETRAINED, read_history, read_summary, sweep_group_of

STALE_SECONDS = 120.0  # a trial of another host with no heartbeat for this long has lost its worker
RECORD_COLUMNS = ["epochs_run", "params", "flops", "test_acc", "seconds"]  # trials.csv, after the metric


class SweepFolder:
    """`state.json` (every trial) guarded by an exclusive POSIX lock, which also works on NFS."""

    def __init__(self, root: Path, sweep: dict):
        self.root = root
        self.sweep = sweep
        self.runs = root / "runs"
        self.state_path = root / "state.json"

    def create(self, source: Path) -> None:
        """Start the sweep in this folder, or check that the folder holds this same sweep (nothing is written
        when the folder cannot be written or holds another sweep or a damaged state)."""
        check_writable(self.root, "--sweep_dir")
        with self.locked() as state:
            if state.get("sweep") not in (None, self.sweep):
                raise UserError(f"{self.root} holds a different sweep (see its sweep.yaml): pick another --sweep_dir")
            self.runs.mkdir(parents=True, exist_ok=True)
            if state.get("sweep") is None:
                state.update(sweep=self.sweep, source=str(source), created=time.time(), trials=[])
                atomic_write(self.root / "sweep.yaml", yaml.safe_dump(self.sweep, sort_keys=False))

    @contextmanager
    def locked(self) -> Iterator[dict]:
        """The state, read under the lock; written back (atomically) before the lock is released if it changed."""
        with file_lock(self.root / "lock"):
            state = self._read_state()
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                atomic_write(self.state_path, json.dumps(state, indent=1))

    def _read_state(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{self.state_path} cannot be read ({exc}): restore it, or pick another --sweep_dir for "
                            "a new sweep") from None
        if not isinstance(state, dict) or not isinstance(state.get("trials"), list) or "sweep" not in state:
            raise UserError(f"{self.state_path} is not a sweep state (no `sweep` and `trials`): restore it, or pick "
                            "another --sweep_dir for a new sweep")
        return state

    def history(self, run_id: str) -> list[dict]:
        return read_history(self.runs / run_id)

    def summary(self, run_id: str) -> dict:
        return read_summary(self.runs / run_id)


# ---------------------------------------------------------------------------------------------------- liveness
def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may itself hold spaces and parentheses):
    [1] is the parent's pid, [19] the start time. OSError where /proc or the process is not there."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_start(pid: int) -> str | None:
    """When the process started (clock ticks since boot, from /proc), to tell a worker from a later process that
    reuses its pid; None where /proc is not available or the process is gone."""
    try:
        return proc_stat(pid)[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or process_start(pid) in (None, started)


def trial_process_alive(trial: dict) -> bool:
    """Whether the training process of a trial whose worker died may still run (it gets SIGINT then, and saves)."""
    return (trial.get("pid") is not None and trial["host"] == socket.gethostname()
            and _alive(trial["pid"], trial.get("pid_start")))


def reap_lost_trials(folder: SweepFolder, state: dict, now: float) -> list[dict]:
    """Settle the running trials whose worker is gone. On this host (the worker's pid is dead) the trial is
    interrupted, to be resumed, or finished/stopped if its run says it ended so; a trial of another host with no
    heartbeat for STALE_SECONDS is crashed (its training may be alive, so it is never resumed)."""
    host = socket.gethostname()
    lost = []
    for trial in state.get("trials", []):
        if trial["state"] != "running":
            continue
        if trial["host"] == host:
            if _alive(trial["worker_pid"], trial.get("worker_start")):
                continue
            status = str(folder.summary(trial["run_id"]).get("status", ""))
            ended = status if status in ("finished", "stopped") and not trial_process_alive(trial) else "interrupted"
            trial.update(state=ended, ended=trial["heartbeat"], note="its worker died",
                         metric=metric_of(folder, trial["run_id"]))
        elif now - trial["heartbeat"] > STALE_SECONDS:
            trial.update(state="crashed", ended=now, note="its worker died")
        else:
            continue
        lost.append(trial)
    return lost


def logged_keys(folder: SweepFolder, run_id: str) -> list[str]:
    """The numeric keys a trial logged per epoch or in its summary, for a metric that matches none of them."""
    rows = [*folder.history(run_id), folder.summary(run_id)]
    return sorted({k for row in rows for k, v in row.items() if isinstance(v, (int, float)) and not
                   isinstance(v, bool)})


# ---------------------------------------------------------------------------------------------------- records
def metric_of(folder: SweepFolder, run_id: str) -> float | None:
    """The best value of the sweep's metric in a trial's per-epoch history (None before its first epoch)."""
    name, maximize = metric_goal(folder.sweep)
    values = [row[name] for row in folder.history(run_id) if isinstance(row.get(name), (int, float))]
    return (max if maximize else min)(values) if values else None


def retrain_wandb(root: Path) -> dict:
    """best.yaml's W&B keys: the retrained run joins its sweep's group with the tag `retrained`, so the sweep's W&B
    report (sweepcnn.sweep.wandb_report) finds it and its report, and its sweep charts leave it out."""
    return {"wandb_group": sweep_group_of(root), "wandb_tags": [RETRAINED]}


def write_records(folder: SweepFolder, state: dict) -> None:
    """trials.csv (one row per trial) and best.yaml (the best trial's parameters, a train.py --config file)."""
    name, maximize = metric_goal(folder.sweep)
    swept = swept_names(folder.sweep)
    rows = []
    for i, t in enumerate(state["trials"], 1):
        summary = folder.summary(t["run_id"])
        seconds = t.get("elapsed", 0.0) + (t.get("ended") or time.time()) - t["started"]  # over its resumes
        rows.append([i, t["run_id"], t["state"], t.get("metric"), len(folder.history(t["run_id"])),
                     *(summary.get(k) for k in RECORD_COLUMNS[1:-1]), round(seconds, 1),
                     *(t["params"].get(k) for k in swept)])
    write_csv(folder.root / "trials.csv", ["trial", "run_id", "state", name, *RECORD_COLUMNS, *swept], rows)

    scored = [t for t in state["trials"] if t["state"] in ("finished", "stopped") and t.get("metric") is not None]
    if scored:
        best = (max if maximize else min)(scored, key=lambda t: t["metric"])
        header = (f"# best trial of {folder.root}: run {best['run_id']} ({best['state']}), {name} = {best['metric']}\n"
                  f"# retrain and test it:  python {folder.sweep['program']} --config {folder.root / 'best.yaml'} "
                  "--test\n")
        best_yaml = {**best["params"], **retrain_wandb(folder.root)}
        atomic_write(folder.root / "best.yaml", header + yaml.safe_dump(best_yaml, sort_keys=False))
