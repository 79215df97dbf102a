"""How a run that got a stop signal ends: stopped by its sweep, preempted, or interrupted.

    SIGTERM under a sweep   the controller stopped the trial (hyperband): a finished run, status `stopped`, exit 0
    SIGUSR1                 preemption: wandb.mark_preempting(), status `preempted`, exit 138; W&B requeues it
    SIGINT, SIGTERM         interrupted: status `interrupted (SIG...)`, exit 128 + signal; `--resume` continues it

In every case the last completed epoch is saved in last.pt (if one completed) and the summary holds the best epoch so
far. A stop during start-up, before the run folder is written or while it is, leaves nothing behind (a new run's
folder removed, a resumed run's files as they were) and exits with the same code.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from sweepcnn.runtime import Interrupted
from sweepcnn.tracking import Tracker
from sweepcnn.train.engine import saved_summary
from sweepcnn.wandb_args import under_sweep

_PREEMPT = getattr(signal, "SIGUSR1", None)


def _ending(stop: Interrupted) -> tuple[str, int]:
    """(summary status, process exit code) for a stop signal."""
    if stop.signum == signal.SIGTERM and under_sweep():
        return "stopped", 0
    if stop.signum == _PREEMPT:
        return "preempted", 128 + stop.signum
    return f"interrupted ({stop})", 128 + stop.signum


def stop_code(stop: Interrupted) -> int:
    """The exit code of a run that got a stop signal (a rank other than 0 of several: it writes nothing)."""
    return _ending(stop)[1]


def end_before_start(stop: Interrupted) -> int:
    """A stop signal during start-up (while the data is decoded, or the run folder or W&B run is being made, then
    undone): nothing to save."""
    status, code = _ending(stop)
    print(f"\n{stop}: {status.split(' ')[0]} before the run started: nothing was saved", file=sys.stderr)
    return code


def end_stopped_run(stop: Interrupted, run_dir: Path, tracker: Tracker, summary: dict) -> int:
    """Write the summary (best epoch so far, from last.pt), finish the W&B run, say what happens next."""
    status, code = _ending(stop)
    summary = {**summary, **saved_summary(run_dir), "status": status}
    if status == "preempted":
        tracker.mark_preempting()
    tracker.summary(summary)
    tracker.finish(code)
    resume = f"--resume --run_name={run_dir.name} --out_dir={run_dir.parent}"
    last = run_dir / "last.pt"
    if not last.is_file():  # stopped before its first epoch completed
        saved = "no epoch was completed, so no checkpoint was saved"
        then = {"stopped": "the sweep's stop is final", "preempted": f"a relaunch (or {resume}) starts it over"}
        print(f"\n{stop}: {status.split(' ')[0]} before the first epoch completed: {saved}; "
              f"{then.get(status, f'{resume} starts it over')}", file=sys.stderr)
    elif status == "stopped":
        print(f"\n{stop}: stopped by the sweep; a finished run at its best epoch ({summary.get('val_acc')} "
              f"val_acc); the last completed epoch is saved in {last}", file=sys.stderr)
    elif status == "preempted":
        print(f"\n{stop}: preempted; the last completed epoch is saved in {last}; a relaunch with "
              f"the same WANDB_RUN_ID resumes it (W&B requeues it under a sweep), or continue with {resume}",
              file=sys.stderr)
    else:
        print(f"\n{stop}: stopped; the last completed epoch is saved in {last}; continue with {resume}",
              file=sys.stderr)
    return code
