"""Experiment tracking: W&B (online, offline or disabled) plus the same records written into the run directory.

The mode comes from --wandb_mode, else $WANDB_MODE, else `online` when an API key is configured (`wandb login`
or $WANDB_API_KEY) and `offline` otherwise, so a run never blocks waiting for a server it cannot reach.
Offline runs land in `<run_dir>/wandb/` and can be uploaded later with `wandb sync <run_dir>/wandb/offline-run-*`.
"""
from __future__ import annotations

import json
import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sweepcnn.config import Option, grouped
from sweepcnn.errors import UserError
from sweepcnn.io import atomic_write, write_json

MODES = ("online", "offline", "disabled")

TRACKING_OPTIONS = grouped("tracking (W&B)", {
    "wandb_mode": Option(None, "W&B mode (default: $WANDB_MODE, else online if an API key is configured, else "
                               "offline)", choices=MODES, nullable=True),
    "wandb_project": Option(None, "W&B project (default: $WANDB_PROJECT)", nullable=True),
    "wandb_entity": Option(None, "W&B entity, a user or team (default: $WANDB_ENTITY)", nullable=True),
})


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(flag: str | None) -> str:
    mode = flag or os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in MODES:
        raise UserError(f"WANDB_MODE={mode!r} is not valid: use one of {', '.join(MODES)}")
    return mode


def read_history(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl rows ([] before the first epoch). Stops at a line still being written (a live run
    read by a sweep worker, or a run killed mid-write)."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def read_summary(run_dir: Path) -> dict:
    """A run's summary.json ({} while it has none, or while it is being replaced)."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def describe_wandb_run(run: Any) -> str:
    """One line saying where a W&B run's records went."""
    if run.settings.mode == "disabled":
        return "W&B is disabled (WANDB_MODE=disabled): nothing logged"
    if run.settings.mode == "offline":
        return f"logged to offline W&B run {run.id}: upload with `wandb sync {run.settings.sync_dir}`"
    return f"logged to W&B: {run.url}"


def active_wandb_run() -> Any:
    """This process's W&B run, or None. An active run implies wandb was imported: nothing is imported otherwise."""
    wandb = sys.modules.get("wandb")
    return None if wandb is None else wandb.run


def start_side_run(job_type: str, folder: Path, config: dict, *, mode: str | None = None, project: str | None = None,
                   entity: str | None = None, name: str | None = None, group: str | None = None) -> Any:
    """A W&B run for work done after training (a report, a comparison, a sweep report), its files in `folder`.
    Mode from `mode`, else $WANDB_MODE, else online with an API key, else offline; project and entity from the
    arguments, else $WANDB_PROJECT and $WANDB_ENTITY. The caller finishes it."""
    import wandb

    return wandb.init(project=project or os.environ.get("WANDB_PROJECT"),
                      entity=entity or os.environ.get("WANDB_ENTITY"), name=name, group=group, job_type=job_type,
                      dir=str(folder), mode=resolve_mode(mode), config=config)


class Tracker:
    """Logs per-epoch metrics to `metrics.jsonl` and W&B, and the run summary to `summary.json` and W&B."""

    def __init__(self, run_dir: Path, cfg: dict, run_name: str, resume: bool):
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.history = read_history(run_dir) if resume else []
        self.mode = resolve_mode(cfg["wandb_mode"])
        self.run = None
        if self.mode == "disabled":
            return
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if resume and id_file.exists() else None
        under_agent = bool(os.environ.get("WANDB_SWEEP_ID"))
        self.run = wandb.init(
            project=cfg["wandb_project"] or os.environ.get("WANDB_PROJECT"),
            entity=cfg["wandb_entity"] or os.environ.get("WANDB_ENTITY"),
            name=None if under_agent else run_name, id=None if under_agent else run_id,
            resume="allow", dir=str(run_dir), config=cfg, mode=self.mode,
        )
        id_file.write_text(self.run.id)

    def sweep_config(self) -> dict:
        """Parameters a W&B sweep agent set for this run (they win over the command line)."""
        return dict(self.run.config) if self.run is not None and self.run.sweep_id else {}

    def log(self, metrics: dict, step: int) -> None:
        # A resumed run redoes epochs after its last checkpoint: drop their earlier records.
        if any(row["epoch"] >= step for row in self.history):
            self.history = [row for row in self.history if row["epoch"] < step]
            atomic_write(self.metrics_path, "".join(json.dumps(row) + "\n" for row in self.history))
        self.history.append(metrics)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step, commit=True)

    def summary(self, summary: dict) -> None:
        write_json(self.run_dir / "summary.json", summary)
        if self.run is not None:
            self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
