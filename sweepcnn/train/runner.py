"""One training run from the command line, shared by Part A and Part B: run directory, resume, data, tracking,
training, test, signals. Each part supplies only how to check its config and how to build its model."""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from torch import nn

from sweepcnn.config import Option, grouped, parse_args, parse_value
from sweepcnn.data.datasets import Data, channel_stats, load_data
from sweepcnn.train.record import write_record
from sweepcnn.train.engine import Phase, fit
from sweepcnn.errors import UserError
from sweepcnn.runtime import (Interrupted, install_signal_handlers, seed_everything, set_deterministic,
                          tune_allocator)
from sweepcnn.io import write_json
from sweepcnn.tracking import Tracker

if TYPE_CHECKING:
    from sweepcnn.report.interpret import Layers

RUN_OPTIONS = grouped("run", {
    "out_dir": Option("runs", "folder that holds one sub-folder per run"),
    "run_name": Option(None, "run folder name (default: date-time plus a random suffix, or the W&B run id under a "
                             "sweep agent)", nullable=True),
    "test": Option(False, "after training, evaluate the best checkpoint on the test split", "bool"),
    "resume": Option(False, "continue <out_dir>/<run_name> from its last completed epoch", "bool"),
    "report": Option(True, "with --test: write report/ (figures, tables, report.html) and log it to W&B", "bool"),
    "deterministic": Option(False, "deterministic algorithms (bit-identical resume on CPU)", "bool"),
})
# Flags that describe how to run, not what to train: they may differ when a run is resumed.
_RUNTIME_KEYS = {"out_dir", "run_name", "resume", "test", "report", "epochs", "num_workers", "device", "compile",
                 "cache_dir", "wandb_mode", "wandb_project", "wandb_entity", "patience"}


@dataclass
class ModelSpec:
    model: nn.Module
    info: dict  # goes into the summary (e.g. params, flops)
    normalization: tuple[list[float], list[float]] | None = None  # None: per-channel stats of the training split
    phases: list[Phase] | None = None  # None: one phase training every parameter with requires_grad
    train_mode: Callable[[], None] | None = None  # runs after model.train() each epoch (see sweepcnn.train.engine.fit)
    run: Callable[..., dict] = fit  # fit, or another function with fit's signature (e.g. an LR range test)
    # What the shared report and compare need, recorded in run.json (sweepcnn.train.record):
    layers: Layers | None = None  # filters, Grad-CAM and guided backprop layers (None: first and last Conv2d)
    identity: dict | None = None  # tells the run apart in comparisons; "model" names the architecture
    label: str | None = None  # the run in a comparison plot (None: the identity's values but the model)
    # the part's module-level rebuild(cfg, classes) -> ModelSpec: the model for best.pt, built without downloads
    rebuild: Callable[[dict, list[str]], ModelSpec] | None = None


def _new_run_name() -> str:
    return os.environ.get("WANDB_RUN_ID") or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _open_run(cfg: dict, explicit: set[str], options: dict[str, Option]) -> tuple[Path, dict]:
    if cfg["resume"]:
        if not cfg["run_name"]:
            raise UserError("--resume needs --run_name (the folder under --out_dir to continue)")
        run_dir = Path(cfg["out_dir"]) / cfg["run_name"]
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume: {run_dir / 'config.yaml'} not found: is --out_dir/--run_name right?")
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        changed = sorted(k for k in explicit - _RUNTIME_KEYS if k in saved and saved[k] != cfg[k])
        if changed:
            print(f"warning: resuming with changed settings: {', '.join(changed)}", file=sys.stderr)
        resumed = {k: parse_value(k, options[k], v) for k, v in saved.items() if k in options}
        resumed.update({k: cfg[k] for k in explicit})
        return run_dir, {**cfg, **resumed}
    cfg["run_name"] = cfg["run_name"] or _new_run_name()
    run_dir = Path(cfg["out_dir"]) / cfg["run_name"]
    if (run_dir / "config.yaml").exists():
        raise UserError(f"run folder {run_dir} already exists: add --resume to continue it, or pick another "
                        "--run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, cfg


def _write_split(run_dir: Path, data: Data, seed: int, resume: bool) -> None:
    record = data.split_record(seed)
    path = run_dir / "split.json"
    if resume and path.exists():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in ("train", "val", "test")} != {k: record[k] for k in ("train", "val", "test")}:
            raise UserError(f"--resume: the data under {data.source} changed since the run started (split differs "
                            f"from {path}); start a new run instead")
    write_json(path, record)


def _report(run_dir: Path, spec: ModelSpec, data: Data, normalization, cfg: dict, tracker: Tracker) -> None:
    """The run's results are saved already: a failing report is reported, not fatal."""
    from sweepcnn.report.run_report import build_report

    try:
        page = build_report(run_dir, spec.model, data, normalization, cfg, layers=spec.layers, wandb_run=tracker.run)
        print(f"report: {page}")
    except Exception as exc:
        traceback.print_exc()
        print(f"warning: the report failed ({type(exc).__name__}: {exc}); training and test results are saved; "
              f"retry with: python -m sweepcnn.report {run_dir}", file=sys.stderr)


def run_training(argv: list[str], options: dict[str, Option], *, prog: str, description: str,
                 prepare: Callable[[dict], tuple[int, int]], build: Callable[[dict, Data], ModelSpec]) -> int:
    """`prepare(cfg)` validates the config and returns (input_size, channels) before any data is touched;
    `build(cfg, data)` returns the model once cfg['num_classes'] is known."""
    cfg, explicit = parse_args(argv, options, prog, description)
    run_dir, cfg = _open_run(cfg, explicit, options)
    size, channels = prepare(cfg)
    tune_allocator()
    set_deterministic(cfg["deterministic"])
    seed_everything(cfg["seed"])
    install_signal_handlers()
    tracker = Tracker(run_dir, cfg, cfg["run_name"], cfg["resume"])
    summary: dict = {"status": "running"}
    try:
        sweep = tracker.sweep_config()
        if sweep:
            cfg.update({k: parse_value(k, options[k], v) for k, v in sweep.items() if k in options})
            size, channels = prepare(cfg)
        data = load_data(cfg, size, channels)
        if "num_classes" in cfg:
            if "num_classes" in explicit and cfg["num_classes"] != len(data.classes):
                raise UserError(f"--num_classes={cfg['num_classes']} but the data has {len(data.classes)} classes")
            cfg["num_classes"] = len(data.classes)
        (run_dir / "config.yaml").write_text(yaml.safe_dump({k: cfg[k] for k in options}, sort_keys=False))
        _write_split(run_dir, data, cfg["split_seed"], cfg["resume"])
        spec = build(cfg, data)
        write_record(run_dir, spec, size, channels)
        normalization = spec.normalization or channel_stats(data.train)
        skipped = [{"file": f, "reason": r} for f, r in data.skipped]
        summary = {"status": "running", **spec.info, "skipped_files": skipped}
        summary = spec.run(spec.model, data, cfg, run_dir, tracker.log, normalization, resume=cfg["resume"],
                           extra=summary, phases=spec.phases, train_mode=spec.train_mode, test=cfg["test"])
        summary["status"] = "finished"
        tracker.summary(summary)
        if cfg["test"] and cfg["report"] and spec.run is fit:  # spec.model now holds the best checkpoint
            _report(run_dir, spec, data, normalization, cfg, tracker)
        tracker.finish(0)
        print(f"run folder: {run_dir}")
        return 0
    except Interrupted as stop:
        summary["status"] = f"interrupted ({stop})"
        tracker.summary(summary)
        tracker.finish(1)
        print(f"\n{stop}: stopped; the last completed epoch is saved in {run_dir / 'last.pt'}; continue with "
              f"--resume --run_name={cfg['run_name']} --out_dir={cfg['out_dir']}", file=sys.stderr)
        return 128 + stop.signum
    except FloatingPointError as exc:
        summary["status"] = "failed"
        tracker.summary(summary)
        tracker.finish(1)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        tracker.finish(1)
        raise
