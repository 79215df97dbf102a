"""One worker of an offline sweep: claim a trial (an interrupted one first, resumed; else the engine's next
suggestion), run it as `wandb agent` would, keep its heartbeat, stop it when hyperband says so, record its outcome.

SIGINT, SIGTERM or SIGHUP (Ctrl-C reaches the whole foreground process group) interrupts a worker: its trial, which
runs in a session of its own, gets one SIGINT from the worker (it saves its last epoch), is recorded `interrupted`,
and the worker claims nothing more. A trial whose worker dies gets SIGINT too (PR_SET_PDEATHSIG), and a worker whose
coordinator died stops as if interrupted, so nothing trains on unrecorded.
"""
from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy

from sweepcnn.sweep.folder import (SweepFolder, logged_keys, metric_of, proc_stat, process_start,
                                   reap_lost_trials, trial_process_alive, write_records)
from sweepcnn.sweep.spec import metric_goal, swept_names
from sweepcnn.sweep.suggest import new_run_id, should_stop, suggest
from sweepcnn.sweep.torchrun import root_cause_exit, trial_command

POLL_SECONDS = 2.0
HEARTBEAT_SECONDS = 10.0
KILL_DELAY = 30.0  # after the stop or interrupt signal, as `wandb agent` waits before SIGKILL
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
USAGE_EXIT = 2  # a program's exit code for bad input (argparse's, and sweepcnn.errors.UserError's)
TRIAL_ENV = "SWEEPCNN_SWEEP_TRIAL"  # set to 1 in every trial: the training run knows it is a sweep trial


# ---------------------------------------------------------------------------------------------------- interrupts
class _Interrupt:
    """This process's interruption: the first signal, the child processes to pass SIGINT on to (a worker's trial,
    the coordinator's workers) and, in a worker process, the coordinator's pid."""

    signum: int | None = None
    children: list[int] = []
    forwarded: set[int] = set()
    parent: int | None = None


def _on_signal(signum: int, frame) -> None:
    if _Interrupt.signum is None:
        _Interrupt.signum = signum
    forward_interrupt()


def catch_interrupts(parent: int | None = None) -> dict:
    """Turn SIGINT/SIGTERM/SIGHUP into an interruption of this process; returns the handlers it replaced."""
    _Interrupt.signum, _Interrupt.children, _Interrupt.forwarded, _Interrupt.parent = None, [], set(), parent
    return {signum: signal.signal(signum, _on_signal) for signum in INTERRUPTS}


def add_child(pid: int | None) -> None:
    """Pass this child an interruption (now, if one came already)."""
    if pid is not None:
        _Interrupt.children.append(pid)
        if _Interrupt.signum is not None:
            forward_interrupt()


def drop_child(pid: int | None) -> None:
    if pid in _Interrupt.children:
        _Interrupt.children.remove(pid)


def forward_interrupt() -> None:
    """SIGINT, once each, to the children not yet reaped (a reaped child's pid could be another process's)."""
    for pid in _Interrupt.children:
        if pid not in _Interrupt.forwarded:
            _Interrupt.forwarded.add(pid)
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass


def interrupted() -> bool:
    """Whether this process was interrupted, or is a worker whose coordinator is gone."""
    if _Interrupt.signum is None and _Interrupt.parent is not None and os.getppid() != _Interrupt.parent:
        _Interrupt.signum = signal.SIGHUP
        forward_interrupt()
    return _Interrupt.signum is not None


def _die_with(parent: int) -> Callable[[], None]:
    def set_deathsig() -> None:  # in the trial process, before exec (Linux only)
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the worker died before prctl
            os._exit(1)
    return set_deathsig


def _kill_tree(pid: int) -> None:
    """SIGKILL a trial and every process under it: torchrun's workers run in sessions of their own, so killing
    torchrun alone would leave them training."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            child = int(entry.name)
            parents[child] = int(proc_stat(child)[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, added = {pid}, True
    while added:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        added = bool(below)
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------------- one trial
def _trial_params(folder: SweepFolder, trial: dict) -> dict:
    """The trial's parameters as command-line flags; a trial that got as far as its config resumes its run folder."""
    params = {**trial["params"], "out_dir": str(folder.runs)}
    if (folder.runs / trial["run_id"] / "config.yaml").is_file():
        params.update(resume=True, run_name=trial["run_id"])
    return params


def run_trial(folder: SweepFolder, trial: dict, gpu: str | None, poll: float = POLL_SECONDS,
              threads: int | None = None, procs: int = 1) -> tuple[str, int | None]:
    """Launch one trial (through torchrun with `procs` processes when more than one), keep its heartbeat, stop it
    when hyperband says so. Returns (state, exit code). `gpu` is its CUDA_VISIBLE_DEVICES; `threads` sets
    OMP_NUM_THREADS (unless set already), so parallel trials do not oversubscribe the cores."""
    run_id = trial["run_id"]
    run_dir = folder.runs / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WANDB_RUN_ID=run_id, WANDB_RUN_GROUP=f"sweep-{folder.root.name}", **{TRIAL_ENV: "1"})
    if env.get("WANDB_MODE") != "disabled":
        env["WANDB_MODE"] = "offline"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    command = trial_command(folder.sweep, _trial_params(folder, trial), procs)
    (run_dir / "command.txt").write_text(" ".join(command) + "\n")
    if interrupted():
        return "interrupted", None
    with open(run_dir / "output.log", "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with(os.getpid()) if sys.platform == "linux" else None)
    add_child(proc.pid)
    try:
        with folder.locked() as state:
            _find(state, run_id).update(pid=proc.pid, pid_start=process_start(proc.pid))
        return _watch(folder, proc, run_id, poll)
    finally:
        drop_child(proc.pid)


def _find(state: dict, run_id: str) -> dict:
    return next(t for t in state["trials"] if t["run_id"] == run_id)


def _watch(folder: SweepFolder, proc: subprocess.Popen, run_id: str, poll: float) -> tuple[str, int]:
    signalled = stopped = None  # when the trial got its interrupt or stop signal
    last_beat = 0.0
    while True:
        try:
            code = proc.wait(poll)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if signalled is None and interrupted():
            forward_interrupt()
            signalled = now
        if signalled is not None or stopped is not None:  # the trial is saving: give it KILL_DELAY
            if now - (signalled or stopped) > KILL_DELAY:
                _kill_tree(proc.pid)
            continue
        if now - last_beat >= HEARTBEAT_SECONDS or folder.sweep.get("early_terminate"):
            with folder.locked() as state:
                _find(state, run_id)["heartbeat"] = time.time()
                stop = should_stop(folder, state["trials"], run_id)
            last_beat = now
            if stop:
                proc.send_signal(signal.SIGTERM)  # train.py saves, finishes its W&B run and exits
                stopped = now
    return _outcome(folder, run_id, code, stopped is not None), code


def _outcome(folder: SweepFolder, run_id: str, code: int, stopped: bool) -> str:
    """finished or stopped (it ended as a finished run), interrupted (resumable), failed (non-zero exit) or crashed
    (killed by a signal)."""
    status = str(folder.summary(run_id).get("status", ""))
    if stopped or (code == 0 and status == "stopped"):
        return "stopped"
    if code == 0 or status == "finished":  # a signal that lands after the summary is written loses nothing
        return "finished"
    if interrupted() or status.startswith(("interrupted", "preempted")):
        return "interrupted"
    return "failed" if code > 0 else "crashed"


# ---------------------------------------------------------------------------------------------------- the loop
def _claim(folder: SweepFolder, state: dict, count: int, session: str) -> dict | str:
    """The trial to run next: an interrupted one (resumed), else a new suggestion while the sweep has fewer than
    `count`; or why there is none: "done", "exhausted" (a grid), "wait" (an interrupted trial is still saving) or
    "refused" (a trial of this command was refused by the program: no new one would fare better)."""
    for lost in reap_lost_trials(folder, state, time.time()):
        print(f"trial {lost['run_id']}: {lost['state']} (its worker is gone)", flush=True)
    if state.get("usage_error", {}).get("session") == session:
        return "refused"
    trials = state["trials"]
    now = time.time()
    mine = {"state": "running", "host": socket.gethostname(), "worker_pid": os.getpid(),
            "worker_start": process_start(os.getpid()), "heartbeat": now, "started": now}
    pending = [t for t in trials if t["state"] == "interrupted"]
    ready = next((t for t in pending if not trial_process_alive(t)), None)
    if ready is not None:
        ready["elapsed"] = ready.get("elapsed", 0.0) + ready.get("ended", now) - ready["started"]
        for key in ("ended", "exit_code", "note", "pid", "pid_start"):
            ready.pop(key, None)
        ready.update(mine, resumes=ready.get("resumes", 0) + 1)
        return ready
    if len(trials) < count:
        params = suggest(folder, trials)
        if params is not None:
            trials.append({"run_id": new_run_id({t["run_id"] for t in trials}), "params": params, **mine})
            return trials[-1]
        if not pending:
            return "exhausted"
    return "wait" if pending else "done"


def _metric_warning(folder: SweepFolder, state: dict, trial: dict, session: str) -> str | None:
    """Once per sweep command: the first trial that ended without the sweep's metric, while no trial has it."""
    if trial["state"] not in ("finished", "stopped") or any(t.get("metric") is not None for t in state["trials"]):
        return None
    if state.get("metric_warned") == session:
        return None
    state["metric_warned"] = session
    name, method = folder.sweep["metric"]["name"], folder.sweep["method"]
    keys = ", ".join(logged_keys(folder, trial["run_id"])) or "nothing"
    return (f"warning: trial {trial['run_id']} {trial['state']} without logging the sweep's metric {name!r} "
            f"(metric.name in the sweep YAML), so the {method} search and hyperband run blind and no best.yaml is "
            f"written; the trial logged: {keys}")


def worker(root: str, sweep: dict, count: int, gpu: str | None = None, poll: float = POLL_SECONDS,
           threads: int | None = None, procs: int = 1, session: str = "") -> bool:
    """Claim and run trials until the sweep has `count` of them and none left to resume (or a grid is exhausted).
    Returns whether it was interrupted. The caller has called catch_interrupts()."""
    folder = SweepFolder(Path(root), sweep)
    # The engine draws from numpy's and Python's global generators; forked workers would share their states and
    # suggest the same configs.
    random.seed()
    numpy.random.seed()
    while not interrupted():
        with folder.locked() as state:
            trial = _claim(folder, state, count, session)
            number = next((i for i, t in enumerate(state["trials"], 1) if t is trial), None)
            write_records(folder, state)
        if trial == "wait":
            time.sleep(poll)
            continue
        if isinstance(trial, str):
            if trial == "exhausted":
                print("the grid is exhausted", flush=True)
            return False
        _run_and_record(folder, trial, number, count, gpu, poll, threads, procs, session)
    return True


def _run_and_record(folder: SweepFolder, trial: dict, number: int, count: int, gpu: str | None, poll: float,
                    threads: int | None, procs: int, session: str) -> None:
    run_id, sweep = trial["run_id"], folder.sweep
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in ((k, trial["params"][k]) for k in swept_names(sweep)))
    print(f"trial {number}/{count} {run_id} {'resumed' if trial.get('resumes') else 'started'}: {shown}", flush=True)
    outcome, code = run_trial(folder, trial, gpu, poll, threads, procs)
    with folder.locked() as state:
        mine = _find(state, run_id)
        for key in ("pid", "pid_start"):
            mine.pop(key, None)
        mine.update(state=outcome, exit_code=code, ended=time.time(), metric=metric_of(folder, run_id))
        refusal = usage_error(folder, run_id, code) if code else None
        if refusal and state.get("usage_error", {}).get("session") != session:  # the first of this command
            state["usage_error"] = {"session": session, "run_id": run_id, "line": refusal}
        warning = _metric_warning(folder, state, mine, session)
        write_records(folder, state)
    name = metric_goal(sweep)[0]
    value = "-" if mine["metric"] is None else f"{mine['metric']:.4f}"
    hint = f"  (see {folder.runs / run_id / 'output.log'})" if outcome in ("failed", "crashed") else ""
    print(f"trial {number}/{count} {run_id} {outcome}: {name} {value}{hint}", flush=True)
    if warning:
        print(warning, file=sys.stderr, flush=True)


def usage_error(folder: SweepFolder, run_id: str, code: int) -> str | None:
    """The `error:` line of a trial that the program refused: exit code 2 (the project's usage-error code), its
    own or, under torchrun, that of the rank that failed first."""
    try:
        log = (folder.runs / run_id / "output.log").read_text(errors="replace")
    except OSError:
        return None
    if USAGE_EXIT not in (code, root_cause_exit(log)):
        return None
    return next((line for line in reversed(log.splitlines()) if line.startswith("error: ")), None)


def worker_process(parent: int, *args) -> None:
    """A worker in its own process (--workers N): interrupted like the coordinator, which blocked the signals
    while it forked, and stopped if the coordinator dies. Exit code 130 when interrupted."""
    catch_interrupts(parent)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)
    sys.exit(130 if worker(*args) else 0)
