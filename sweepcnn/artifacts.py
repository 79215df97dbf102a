"""A finished run's checkpoints as W&B model artifacts (--wandb_log_model, in the spirit of HF's WANDB_LOG_MODEL).

One artifact per run, `model-<run id>`, type `model`: `best.pt` as a version with the aliases `best` and `latest`
and metadata (the best epoch's val_acc and val_loss, the epoch, params, FLOPs, classes, test_acc with --test); with
`all`, `last.pt` (the resume checkpoint: optimiser, schedule, RNG states) before it, alias `last`. They are logged
once, when the run ends as finished or stopped, not on every improvement: a sweep's trials improve most epochs, and
a version per improvement would upload the same-sized file again and again (about 100 MB for Part B's ResNet-50)
for versions nobody uses. An interrupted or preempted run logs them when it is resumed and ends. Offline runs stage
the files (under $WANDB_DATA_DIR) for `wandb sync`. The choice: --wandb_log_model, else $WANDB_LOG_MODEL as HF's
WandbCallback reads it (`end`/`true`: best, `checkpoint`: all, `false`), else `false` in a sweep trial (every trial
uploading its checkpoint is slow, and `wandb agent` kills a stopped trial 30 s after its stop signal) and `best`.

The model artifact's metadata says how to rebuild and use the checkpoint; the data is the run's input artifact
(`dataset-<name>`: split.json, the class list, and a reference to the data folder), so a model traces back to its
data on W&B.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from sweepcnn.errors import UserError
from sweepcnn.wandb_args import under_sweep

LOG_MODEL = ("false", "best", "all")
_HF_LOG_MODEL = {"end": "best", "true": "best", "checkpoint": "all", "false": "false", "": "false"}


def log_model_choice(flag: str | None) -> str:
    """--wandb_log_model, else $WANDB_LOG_MODEL (HF's values, or ours), else false in a sweep trial and best."""
    if flag:
        return flag
    env = os.environ.get("WANDB_LOG_MODEL")
    if env is None:
        return "false" if under_sweep() else "best"
    choice = _HF_LOG_MODEL.get(env.strip().lower(), env.strip().lower())
    if choice not in LOG_MODEL:
        raise UserError(f"WANDB_LOG_MODEL={env!r} is not valid: use end, checkpoint or false (as for HF "
                        f"transformers), or one of {', '.join(LOG_MODEL)}")
    return choice


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _normalization(best: Path) -> dict | None:
    import torch

    try:  # mmap: only the small entry is read, not the weights
        return torch.load(best, map_location="cpu", weights_only=True, mmap=True).get("normalization")
    except Exception:  # an unreadable best.pt is reported where it is loaded, not here
        return None


def model_metadata(run_dir: Path, summary: dict) -> dict[str, Any]:
    """What a model artifact says about its checkpoint: its scores (the run's summary), and how to rebuild and use
    it (run.json, split.json and best.pt's normalisation)."""
    keys = {"val_acc": "val_acc", "val_loss": "val_loss", "epoch": "best_epoch", "params": "params",
            "flops": "flops", "test_acc": "test_acc"}
    meta = {name: summary[key] for name, key in keys.items() if summary.get(key) is not None}
    record, split = _read_json(run_dir / "run.json"), _read_json(run_dir / "split.json")
    identity = record.get("identity") or {}
    rebuild = record.get("rebuild")
    meta.update({
        "part": rebuild.split(".")[0] if rebuild else None, "rebuild": rebuild, "model": identity.get("model"),
        "weights": identity.get("weights"), "strategy": identity.get("strategy"),
        "input_size": record.get("input_size"), "channels": record.get("in_channels"),
        "normalization": _normalization(run_dir / "best.pt"), "classes": split.get("classes"),
        "usage": f"spec = {rebuild.replace(':', '.') if rebuild else '<part>.part.rebuild'}(config, classes); "
                 "spec.model.load_state_dict(torch.load('best.pt', weights_only=True)['model']); inputs: "
                 "input_size x input_size images with `channels` channels, scaled to [0, 1] and normalised with "
                 "`normalization` (per-channel mean and std)"})
    return meta


def dataset_name(source: str) -> str:
    """The dataset artifact's name: dataset-<the data folder's name, or the built-in dataset's>."""
    return "dataset-" + re.sub(r"[^A-Za-z0-9_.-]", "_", Path(source.rstrip("/")).name or "data")


def use_dataset(run: Any, run_dir: Path) -> Any:
    """Log the run's data as a `dataset` artifact and use it as the run's input: split.json (every image of each
    split, with each file's size and mtime: a new version when the data or the split changes), metadata with the
    class list and split sizes, and a reference (not an upload) to the data folder: W&B lists its files with their
    paths and sizes, hashing none."""
    import wandb

    split = _read_json(run_dir / "split.json")
    source = str(split.get("source", "data"))
    counts = {name: len(split.get(name, [])) for name in ("train", "val", "test")}
    artifact = wandb.Artifact(dataset_name(source), type="dataset", metadata={
        "source": source, "layout": split.get("layout"), "split_seed": split.get("split_seed"),
        "classes": split.get("classes"), "images": counts})
    artifact.add_file(str(run_dir / "split.json"))
    if Path(source).is_dir():
        artifact.add_reference(Path(source).resolve().as_uri(), name="data", checksum=False)
    if run.settings.mode != "offline":
        return run.use_artifact(artifact)
    # wandb refuses use_artifact offline; this records what it would send (the artifact, used once committed),
    # which `wandb sync` uploads and marks as the run's input.
    return run._log_artifact(artifact, is_user_created=True, use_after_commit=True)


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
