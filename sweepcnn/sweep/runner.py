"""Run a W&B sweep YAML without a W&B server: suggestions from W&B's own `sweeps` engine (bayes, random, grid),
hyperband early termination on the trials' per-epoch metric, trials launched with the YAML's command exactly as
`wandb agent` builds it, in offline W&B mode.

    python -m sweepcnn.sweep sweeps/cnn.yaml --count 20 [--workers 2] [--sweep_dir DIR] [--set data=digits ...]

Several workers (processes here, or machines sharing the sweep folder) coordinate through a lock on the folder's
`state.json`: each trial is claimed once, a trial whose worker died is marked crashed, and running the same command
again continues the sweep up to --count.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import multiprocessing
import os
import random
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.sweep.folder import SweepFolder, metric_of, process_start, reap_lost_trials, write_records
from sweepcnn.sweep.spec import agent_command, load_sweep, search_engine, swept_names

POLL_SECONDS = 2.0
HEARTBEAT_SECONDS = 10.0
KILL_DELAY = 30.0  # after SIGTERM, as `wandb agent` waits before SIGKILL


# ---------------------------------------------------------------------------------------------------- suggestions
def to_sweep_runs(folder: SweepFolder, trials: list[dict]) -> list:
    """Our trials as the `sweeps` engine's runs. A hyperband-stopped trial counts as finished with the metric it
    reached, as on W&B; failed and crashed trials are imputed by the engine (worst metric)."""
    SweepRun = search_engine().SweepRun
    state_map = {"stopped": "finished"}
    return [SweepRun(name=t["run_id"], state=state_map.get(t["state"], t["state"]),
                     config={k: {"value": v} for k, v in t["params"].items()},
                     summaryMetrics=({} if t.get("metric") is None else {folder.sweep["metric"]["name"]: t["metric"]}),
                     sampledHistory=folder.history(t["run_id"]) if t["state"] in ("running", "stopped", "finished")
                     else [])
            for t in trials]


def _plain(value: Any) -> Any:
    """numpy scalars from the engine to Python values (YAML and command lines need plain ones)."""
    return value.item() if hasattr(value, "item") else value


def suggest(folder: SweepFolder, trials: list[dict]) -> dict | None:
    """The next parameters from W&B's engine, or None when a grid is exhausted."""
    run = search_engine().next_run(folder.sweep, to_sweep_runs(folder, trials), validate=False)
    if run is None:
        return None
    return {k: _plain(spec["value"]) for k, spec in run.config.items()}


def should_stop(folder: SweepFolder, trials: list[dict], run_id: str) -> bool:
    """Whether hyperband (the sweep's `early_terminate`) stops this trial now."""
    if not folder.sweep.get("early_terminate"):
        return False
    return any(run.name == run_id for run in search_engine().stop_runs(folder.sweep, to_sweep_runs(folder, trials)))


def _new_run_id(taken: set[str]) -> str:
    alphabet = string.ascii_lowercase + string.digits
    while True:  # W&B's run-id format: 8 lower-case letters and digits
        run_id = "".join(secrets.choice(alphabet) for _ in range(8))
        if run_id not in taken:
            return run_id


# ---------------------------------------------------------------------------------------------------- one worker
def _die_with_parent() -> None:
    """In the trial process: get SIGTERM if the worker dies, so no orphan trains on unrecorded (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_trial(folder: SweepFolder, trial: dict, gpu: str | None, poll: float = POLL_SECONDS,
              threads: int | None = None) -> tuple[str, int]:
    """Launch one trial, keep its heartbeat, stop it when hyperband says so. Returns (state, exit code).
    `threads` sets OMP_NUM_THREADS (unless set already), so parallel trials do not oversubscribe the cores."""
    run_id = trial["run_id"]
    run_dir = folder.runs / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    params = {**trial["params"], "out_dir": str(folder.runs)}
    env = dict(os.environ, WANDB_RUN_ID=run_id, WANDB_RUN_GROUP=f"sweep-{folder.root.name}")
    if env.get("WANDB_MODE") != "disabled":
        env["WANDB_MODE"] = "offline"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    command = agent_command(folder.sweep, params)
    (run_dir / "command.txt").write_text(" ".join(command) + "\n")
    with open(run_dir / "output.log", "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        return _watch(folder, proc, run_id, poll)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM of the worker: let the trial save its checkpoint first
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(KILL_DELAY)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def _watch(folder: SweepFolder, proc: subprocess.Popen, run_id: str, poll: float) -> tuple[str, int]:
    stop_sent = None
    last_beat = 0.0
    while proc.poll() is None:
        time.sleep(poll)
        now = time.monotonic()
        if stop_sent is not None:
            if now - stop_sent > KILL_DELAY:
                proc.kill()
            continue
        if now - last_beat >= HEARTBEAT_SECONDS or folder.sweep.get("early_terminate"):
            with folder.locked() as state:
                mine = next(t for t in state["trials"] if t["run_id"] == run_id)
                mine["heartbeat"] = time.time()
                stop = should_stop(folder, state["trials"], run_id)
            last_beat = now
            if stop:
                proc.send_signal(signal.SIGTERM)  # train.py saves, finishes its W&B run and exits
                stop_sent = now
    code = proc.wait()
    if stop_sent is not None:
        return "stopped", code
    return ("finished" if code == 0 else "failed" if code > 0 else "crashed"), code


def worker(root: str, sweep: dict, count: int, gpu: str | None = None, poll: float = POLL_SECONDS,
           threads: int | None = None) -> None:
    """Claim and run trials one after another until the sweep has `count` of them (or a grid is exhausted)."""
    folder = SweepFolder(Path(root), sweep)
    # The engine draws from numpy's and Python's global generators; forked workers would share their states and
    # suggest the same configs.
    random.seed()
    numpy.random.seed()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped worker ends its trial via PDEATHSIG
    while True:
        with folder.locked() as state:
            for lost in reap_lost_trials(state, time.time()):
                print(f"trial {lost['run_id']}: marked crashed (its worker is gone)", flush=True)
            trials = state["trials"]
            if len(trials) >= count:
                write_records(folder, state)
                return
            params = suggest(folder, trials)
            if params is None:
                print("the grid is exhausted", flush=True)
                return
            trial = {"run_id": _new_run_id({t["run_id"] for t in trials}), "params": params, "state": "running",
                     "host": socket.gethostname(), "worker_pid": os.getpid(),
                     "worker_start": process_start(os.getpid()), "started": time.time(),
                     "heartbeat": time.time()}
            trials.append(trial)
            number = len(trials)
            write_records(folder, state)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in ((k, trial["params"][k]) for k in swept_names(sweep)))
        print(f"trial {number}/{count} {trial['run_id']} started: {shown}", flush=True)
        try:
            outcome, code = run_trial(folder, trial, gpu, poll, threads)
        except KeyboardInterrupt:
            with folder.locked() as state:
                mine = next(t for t in state["trials"] if t["run_id"] == trial["run_id"])
                mine.update(state="crashed", ended=time.time(), note="the sweep was interrupted",
                            metric=metric_of(folder, trial["run_id"]))
                write_records(folder, state)
            raise
        with folder.locked() as state:
            mine = next(t for t in state["trials"] if t["run_id"] == trial["run_id"])
            mine.update(state=outcome, exit_code=code, ended=time.time(), metric=metric_of(folder, trial["run_id"]))
            write_records(folder, state)
        name = sweep["metric"]["name"]
        value = "-" if mine["metric"] is None else f"{mine['metric']:.4f}"
        hint = f"  (see {folder.runs / trial['run_id'] / 'output.log'})" if outcome in ("failed", "crashed") else ""
        print(f"trial {number}/{count} {trial['run_id']} {outcome}: {name} {value}{hint}", flush=True)


# ---------------------------------------------------------------------------------------------------- CLI
def default_sweep_dir(path: Path, sweep: dict) -> Path:
    """runs/sweeps/<yaml name>-<hash of the config>: the same command finds the same folder and continues."""
    digest = hashlib.sha256(json.dumps(sweep, sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / "sweeps" / f"{path.stem}-{digest}"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m sweepcnn.sweep", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_yaml", help="a W&B sweep file, e.g. sweeps/cnn.yaml")
    parser.add_argument("--count", type=int, required=True, help="trials in the whole sweep (all workers together)")
    parser.add_argument("--workers", type=int, default=None, help="parallel trials on this machine (default 1, or "
                                                                  "one per --gpus entry)")
    parser.add_argument("--sweep_dir", default=None, help="sweep folder (default runs/sweeps/<yaml name>-<hash of "
                                                          "the config>, so the same command continues the sweep)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a parameter for every trial (repeatable)")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU ids, one worker each "
                                                     "(CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--poll", type=float, default=POLL_SECONDS, help="seconds between a worker's checks of its "
                                                                        "trial (heartbeat, hyperband)")
    args = parser.parse_args(argv)
    if args.count < 1:
        raise UserError("--count must be at least 1")
    gpus = args.gpus.split(",") if args.gpus else []
    workers = args.workers or max(len(gpus), 1)
    if workers < 1:
        raise UserError("--workers must be at least 1")
    path = Path(args.sweep_yaml)
    sweep = load_sweep(path, args.set)
    if not Path(sweep["program"]).is_file():
        raise UserError(f"program {sweep['program']!r} (from {path}) not found: run from the repository root")
    root = Path(args.sweep_dir) if args.sweep_dir else default_sweep_dir(path, sweep)
    folder = SweepFolder(root, sweep)
    folder.create(path)
    print(f"sweep folder: {root}  ({sweep['method']}, {args.count} trials, {workers} worker(s))", flush=True)
    slots = [gpus[i % len(gpus)] if gpus else None for i in range(workers)]
    # Oversubscribed threads make small ops (per-image augmentation) many times slower.
    threads = max(1, len(os.sched_getaffinity(0)) // workers) if workers > 1 else None
    try:
        if workers == 1:
            worker(str(root), sweep, args.count, slots[0], args.poll, threads)
        else:
            procs = [multiprocessing.Process(target=worker,
                                             args=(str(root), sweep, args.count, gpu, args.poll, threads))
                     for gpu in slots]
            for p in procs:
                p.start()
                time.sleep(0.5)  # staggered, so early suggestions already see the first claims
            for p in procs:
                p.join()
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue the sweep", file=sys.stderr)
        return 130
    with folder.locked() as state:
        reap_lost_trials(state, time.time())
        write_records(folder, state)
        states = [t["state"] for t in state["trials"]]
    summary = ", ".join(f"{states.count(s)} {s}" for s in ("finished", "stopped", "failed", "crashed", "running")
                        if states.count(s))
    print(f"{len(states)} trials ({summary}): {root / 'trials.csv'}")
    if (root / "best.yaml").exists():
        print(f"best config: {root / 'best.yaml'}  ->  python {sweep['program']} --config {root / 'best.yaml'} --test")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
