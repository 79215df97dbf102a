"""A finished run's checkpoints as W&B model artifacts (--wandb_log_model, in the spirit of HF's WANDB_LOG_MODEL).

One artifact per run, `model-<run id>`, type `model`: `best.pt` as a version with the aliases `best` and `latest`
and metadata (the best epoch's val_acc and val_loss, the epoch, params, FLOPs, classes, test_acc with --test); with
`all`, `last.pt` (the resume checkpoint: optimiser, schedule, RNG states) before it, alias `last`. They are logged
once, when the run ends as finished or stopped, not on every improvement: a sweep's trials improve most epochs, and
a version per improvement would upload the same-sized file again and again (about 100 MB for Part B's ResNet-50)
for versions nobody uses. An interrupted or preempted run logs them when it is resumed and ends. Offline runs stage
the files (under $WANDB_DATA_DIR) for `wandb sync`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOG_MODEL = ("false", "best", "all")


def model_metadata(run_dir: Path, summary: dict) -> dict[str, Any]:
    """What a model artifact says about its checkpoint, from the run's summary and split.json."""
    try:
        classes = json.loads((run_dir / "split.json").read_text())["classes"]
    except (OSError, ValueError, KeyError):
        classes = None
    keys = {"val_acc": "val_acc", "val_loss": "val_loss", "epoch": "best_epoch", "params": "params",
            "flops": "flops", "test_acc": "test_acc"}
    meta = {name: summary[key] for name, key in keys.items() if summary.get(key) is not None}
    return {**meta, "classes": classes}


def log_model(run: Any, run_dir: Path, summary: dict, which: str) -> list[str]:
    """Log the run's checkpoints per `which` (see LOG_MODEL); the files logged, by name."""
    import wandb

    if which == "false" or not (run_dir / "best.pt").is_file():
        return []
    name, logged = f"model-{run.id}", []
    if which == "all" and (run_dir / "last.pt").is_file():
        last = wandb.Artifact(name, type="model", metadata={"epoch": summary.get("epochs_run")})
        last.add_file(str(run_dir / "last.pt"))
        run.log_artifact(last, aliases=["last"])
        logged.append("last.pt")
    best = wandb.Artifact(name, type="model", metadata=model_metadata(run_dir, summary))
    best.add_file(str(run_dir / "best.pt"))
    run.log_artifact(best, aliases=["best", "latest"])
    return [*logged, "best.pt"]
