"""What a run passes to wandb.init besides its config: name, tags, notes and group (flags first, then W&B's own
environment variables), where an online resume rewinds to, and a quiet console.

    name    --run_name, unless $WANDB_NAME is set (or `wandb agent` names the run)
    tags    --wandb_tags, else $WANDB_TAGS; the part, model and strategy are added (Tracker.tag)
    notes   --wandb_notes, else $WANDB_NOTES
    group   --wandb_group, else $WANDB_RUN_GROUP, else sweep-<id> under `wandb agent`

W&B reads $WANDB_NAME, $WANDB_TAGS and $WANDB_NOTES itself when wandb.init gets None for them. Nothing here imports
wandb but `quiet_settings`.
"""
from __future__ import annotations

import os
from typing import Any

WATCH = ("false", "gradients", "parameters", "all")


def under_agent() -> bool:
    """Whether `wandb agent` launched this process (it sets WANDB_SWEEP_ID)."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def under_sweep() -> bool:
    """A sweep trial: launched by `wandb agent` (WANDB_SWEEP_ID) or by `python -m sweepcnn.sweep`."""
    return under_agent() or os.environ.get("SWEEPCNN_SWEEP_TRIAL") == "1"


def run_group(flag: str | None = None) -> str | None:
    """--wandb_group, else $WANDB_RUN_GROUP (the offline sweep runner sets sweep-<folder>), else sweep-<id> under
    `wandb agent`."""
    if flag:
        return flag
    if os.environ.get("WANDB_RUN_GROUP"):
        return os.environ["WANDB_RUN_GROUP"]
    return f"sweep-{os.environ['WANDB_SWEEP_ID']}" if under_agent() else None


def run_name(default: str) -> str | None:
    """The run folder's name, unless $WANDB_NAME is set or `wandb agent` names the run (None: W&B names it)."""
    return None if under_agent() or os.environ.get("WANDB_NAME") else default


def rewind_point(run_id: str, next_step: int) -> str:
    """wandb.init's resume_from that cuts the run's history to its rows before _step `next_step` (the step after the
    checkpoint's epoch, see Tracker) and goes on logging at `next_step`."""
    return f"{run_id}?_step={next_step}"


def quiet_settings() -> Any:
    """wandb.Settings that print nothing to the console (W&B's banner, run history and summary still go to the log
    files in the run's wandb folder): Tracker prints the one line a user needs instead. None (W&B's own choice)
    when $WANDB_SILENT or $WANDB_QUIET says what the user wants."""
    if os.environ.get("WANDB_SILENT") or os.environ.get("WANDB_QUIET"):
        return None
    import wandb

    return wandb.Settings(silent=True)
