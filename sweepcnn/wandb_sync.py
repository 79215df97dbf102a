"""Upload offline W&B runs: the newest offline-run-* folder of each W&B run, and only that one.

    python -m sweepcnn.wandb_sync PATH... [--dry_run]

PATH: run folders, or folders above them (a sweep folder, runs/). A resumed offline run writes a new offline-run-*
folder with the same run id that first logs again the epochs it continues from (sweepcnn.tracking.Tracker), so the
newest one holds the whole history; W&B keeps one run per id, and syncing an older folder as well would replace the
newest's history by a part of it. --dry_run prints the `wandb sync` command and runs nothing.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError

# offline-run-<start time>-<run id>, with -<n> added by W&B when a resume starts within the same second
RUN_FOLDER = re.compile(r"offline-run-\d{8}_\d{6}-(.+?)(?:-\d+)?$")


def _run_id(folder: Path) -> str:
    match = RUN_FOLDER.match(folder.name)
    return match.group(1) if match else folder.name


def newest_offline_runs(paths: list[Path]) -> list[Path]:
    """The newest offline-run-* folder of every W&B run in each wandb/ folder at or below `paths` (the newest sorts
    last; a report's side run shares its run's wandb/)."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path}: not a folder: give run folders or folders above them")
        folders = [path] if path.name == "wandb" else [path / "wandb", *sorted(path.rglob("wandb"))]
        for folder in dict.fromkeys(f for f in folders if f.is_dir()):
            runs = sorted(p for p in folder.glob("offline-run-*") if p.is_dir())
            found += {_run_id(run): run for run in runs}.values()
    if not found:
        raise UserError(f"no offline W&B run (wandb/offline-run-*) in {', '.join(map(str, paths))}")
    return found


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m sweepcnn.wandb_sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="+", help="run folders, or folders above them")
    parser.add_argument("--dry_run", action="store_true", help="print the `wandb sync` command, run nothing")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "wandb", "sync", *map(str, newest_offline_runs(args.paths))]
    print(shlex.join(command))
    if args.dry_run:
        return 0
    return subprocess.run(command, check=False).returncode


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
