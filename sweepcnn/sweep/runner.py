"""Run a W&B sweep YAML without a W&B server: suggestions from W&B's own `sweeps` engine (bayes, random, grid),
hyperband early termination on the trials' per-epoch metric, trials launched with the YAML's command exactly as
`wandb agent` builds it, in offline W&B mode.

    python -m sweepcnn.sweep sweeps/cnn.yaml --count 20 [--workers 2] [--sweep_dir DIR] [--set data=digits ...]
    python -m sweepcnn.sweep sweeps/cnn.yaml --count 20 --gpus 0,1,2,3 --gpus_per_trial 2   # 2 trials x 2 GPUs (DDP)

Several workers (processes here, or machines sharing the sweep folder) coordinate through a lock on the folder's
`state.json`: each trial is claimed once. Ctrl-C stops the sweep: the running trials save and are recorded
`interrupted`, and running the same command again resumes them, then continues the sweep up to --count.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.sweep.folder import SweepFolder, reap_lost_trials, write_records
from sweepcnn.sweep.spec import load_sweep
from sweepcnn.sweep.torchrun import gpu_groups, trial_command, yaml_procs
from sweepcnn.sweep.worker import (INTERRUPTS, POLL_SECONDS, add_child, catch_interrupts, interrupted, worker,
                                   worker_process)

STATES = ("finished", "stopped", "interrupted", "failed", "crashed", "running")


def _run_workers(slots: list[str | None], task: tuple) -> bool:
    """One worker process per slot (a GPU or None), each running worker() on `task` with its slot; returns whether the
    sweep was interrupted. Signals are blocked while each forks, so none arrives before it has its own handlers."""
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    workers = []
    for gpu in slots:
        signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
        try:
            proc = context.Process(target=worker_process,
                                   args=(os.getpid(), *task[:3], gpu, *task[3:]))
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)
        workers.append(proc)
        add_child(proc.pid)
        if interrupted():
            break
        if len(workers) < len(slots):
            time.sleep(0.5)  # staggered, so early suggestions already see the first claims
    for proc in workers:
        proc.join()
    return interrupted() or any(proc.exitcode == 130 for proc in workers)


# ---------------------------------------------------------------------------------------------------- CLI
def _procs_per_trial(sweep: dict, path: Path, gpus_per_trial: int | None) -> int:
    """--gpus_per_trial, or the YAML's torchrun --nproc_per_node (the two must agree), else 1. Checks that a trial's
    command can be built with it."""
    in_yaml = yaml_procs(sweep, path)
    if gpus_per_trial is not None and in_yaml is not None and gpus_per_trial != in_yaml:
        raise UserError(f"--gpus_per_trial {gpus_per_trial}: {path}'s command runs torchrun --nproc_per_node="
                        f"{in_yaml}; give one of the two")
    procs = gpus_per_trial or in_yaml or 1
    trial_command(sweep, {}, procs)
    return procs


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
    parser.add_argument("--gpus_per_trial", type=int, default=None,
                        help="processes (GPUs) per trial, launched with torchrun --standalone: with --gpus 0,1,2,3 "
                             "--gpus_per_trial 2, two trials at a time on two GPUs each (without --gpus, each trial "
                             "runs that many processes on the devices the program picks: CPU processes on a machine "
                             "without GPUs). Default: 1, or the --nproc_per_node of a YAML command that starts with "
                             "torchrun")
    parser.add_argument("--poll", type=float, default=POLL_SECONDS, help="seconds between a worker's checks of its "
                                                                        "trial (heartbeat, hyperband)")
    args = parser.parse_args(argv)
    if args.count < 1:
        raise UserError("--count must be at least 1")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 1:
        raise UserError("--gpus_per_trial must be at least 1")
    path = Path(args.sweep_yaml)
    sweep = load_sweep(path, args.set)
    if not Path(sweep["program"]).is_file():
        raise UserError(f"program {sweep['program']!r} (from {path}) not found: run from the repository root")
    procs = _procs_per_trial(sweep, path, args.gpus_per_trial)
    groups = gpu_groups(args.gpus.split(","), procs) if args.gpus else []
    workers = args.workers if args.workers is not None else max(len(groups), 1)
    if workers < 1:
        raise UserError("--workers must be at least 1")
    if procs > 1 and groups and workers > len(groups):
        raise UserError(f"--workers {workers}: --gpus {args.gpus} makes {len(groups)} group(s) of {procs} GPUs, so "
                        f"at most {len(groups)} trial(s) at a time")
    root = Path(args.sweep_dir) if args.sweep_dir else default_sweep_dir(path, sweep)
    folder = SweepFolder(root, sweep)
    folder.create(path)
    print(f"sweep folder: {root}  ({sweep['method']}, {args.count} trials, {workers} worker(s))", flush=True)
    slots = [groups[i % len(groups)] if groups else None for i in range(workers)]
    # Oversubscribed threads make small ops (BatchNorm, pooling, augmentation on small batches) many times slower.
    threads = max(1, len(os.sched_getaffinity(0)) // (workers * procs)) if workers * procs > 1 else None
    task = (str(root), sweep, args.count, args.poll, threads, procs, secrets.token_hex(4))  # the last: this command's id
    handlers = catch_interrupts()
    try:
        stopped = worker(*task[:3], slots[0], *task[3:]) if workers == 1 else _run_workers(slots, task)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    with folder.locked() as state:
        reap_lost_trials(folder, state, time.time())
        write_records(folder, state)
        states = [t["state"] for t in state["trials"]]
        refusal = state.get("usage_error", {})
    summary = ", ".join(f"{states.count(s)} {s}" for s in STATES if states.count(s))
    print(f"{len(states)} trials ({summary}): {root / 'trials.csv'}", flush=True)
    if (root / "best.yaml").exists():
        print(f"best config: {root / 'best.yaml'}  ->  python {sweep['program']} --config {root / 'best.yaml'} --test")
    if refusal.get("session") == task[-1]:
        log = root / "runs" / refusal["run_id"] / "output.log"
        raise UserError(f"trial {refusal['run_id']} was refused by {sweep['program']} ({refusal['line']}), so the "
                        f"sweep stopped: fix the sweep YAML or --set (see {log})")
    if stopped:
        print(f"interrupted: {states.count('interrupted')} trial(s) saved as interrupted; run the same command again "
              "to resume them and continue the sweep", file=sys.stderr)
        return 130
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
