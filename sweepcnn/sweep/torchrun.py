"""Trials of several processes each (DDP): the offline runner launches a trial through torchrun, either because
`--gpus_per_trial N` asks for it or because the sweep YAML's `command:` starts with torchrun (the form `wandb agent`
runs: `command: [torchrun, --nproc_per_node=2, ${program}, ${args}]`).

Offline, torchrun is this Python's (`python -m torch.distributed.run`, so the trial runs in the runner's environment
whatever `torchrun` is first on PATH), always with `--standalone`: each trial's rendezvous takes a free port, so
trials that run at the same time on one machine never meet on torchrun's default port 29500.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from sweepcnn.errors import UserError
from sweepcnn.sweep.spec import agent_command

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
NPROC = re.compile(r"^--nproc[_-]per[_-]node(?:=(.*))?$")
ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?exitcode\s*:\s*(-?\d+)", re.DOTALL)
# options that place a trial on several machines or on a fixed port: offline trials share one machine (--nnodes=1
# and 1:1 say one machine, as W&B's own torchrun examples write it)
MULTI_NODE = re.compile(r"^--(nnodes(?!=1(:1)?$)|node[_-]rank|rdzv[_-]\w+|master[_-](addr|port))(=|$)")


def _torchrun_at(command: list[str]) -> int | None:
    """Where `torchrun` stands in a trial's command line (first, or after /usr/bin/env), else None."""
    for i, chunk in enumerate(command[:2]):
        if Path(chunk).name == "torchrun" and (i == 0 or Path(command[0]).name == "env"):
            return i
    return None


def yaml_procs(sweep: dict, source: Path) -> int | None:
    """The processes per trial that a YAML command starting with torchrun asks for, else None. Refuses what an
    offline trial cannot honour: no or a non-numeric --nproc_per_node, multi-node and fixed-port options."""
    command = agent_command(sweep, {})
    start = _torchrun_at(command)
    if start is None:
        return None
    program = command.index(sweep["program"]) if sweep["program"] in command else len(command)
    options = command[start + 1:program]
    procs = None
    for i, option in enumerate(options):
        if MULTI_NODE.match(option):
            raise UserError(f"{source}: the command's torchrun option {option} places a trial on several machines "
                            "or a fixed port; offline, trials run on this machine (drop it)")
        match = NPROC.match(option)
        if match:
            procs = match.group(1) if match.group(1) is not None else (options[i + 1] if i + 1 < len(options) else "")
    if procs is None or not procs.isdigit() or int(procs) < 1:
        raise UserError(f"{source}: the command's torchrun needs --nproc_per_node=N (a number) offline, "
                        f"got {procs!r}")
    return int(procs)


def trial_command(sweep: dict, params: dict, procs: int) -> list[str]:
    """The command line of one trial: the YAML's command as `wandb agent` builds it, run through torchrun with
    `procs` processes when `procs` > 1 or the YAML's command is a torchrun one."""
    command = agent_command(sweep, params)
    start = _torchrun_at(command)
    if start is not None:
        options = command[start + 1:]
        return command[:start] + TORCHRUN + ([] if "--standalone" in options else ["--standalone"]) + options
    if procs == 1:
        return command
    try:
        at = command.index(sys.executable)
    except ValueError:
        at = None
    if at is None or command[at + 1:at + 2] != [sweep["program"]]:
        raise UserError("--gpus_per_trial runs each trial through torchrun, which needs the sweep's command to run "
                        "${interpreter} ${program} (W&B's default) or to start with torchrun")
    return command[:at] + TORCHRUN + ["--standalone", f"--nproc_per_node={procs}"] + command[at + 1:]


def root_cause_exit(log: str) -> int | None:
    """The exit code of the process that brought the last torchrun in `log` down (torchrun itself exits 1 when a
    rank fails, and names the first failure as the root cause), None if the log has no torchrun failure."""
    causes = ROOT_CAUSE.findall(log)
    return int(causes[-1]) if causes else None


def gpu_groups(gpus: list[str], procs: int) -> list[str]:
    """--gpus split into one CUDA_VISIBLE_DEVICES value per trial slot, `procs` GPUs each."""
    if len(gpus) % procs:
        raise UserError(f"--gpus_per_trial {procs} does not divide the {len(gpus)} GPU(s) of --gpus "
                        f"{','.join(gpus)}: list a multiple of {procs} GPUs")
    return [",".join(gpus[i:i + procs]) for i in range(0, len(gpus), procs)]
