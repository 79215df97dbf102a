"""One training run from the command line, shared by Part A and Part B: run directory, resume, data, tracking,
training, test, signals. Each part supplies only how to check its config and how to build its model."""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from sweepcnn.config import Option, grouped, parse_args, parse_value
from sweepcnn.data.datasets import Data, channel_stats, check_cache_dir, load_data
from sweepcnn.train.record import write_record
from sweepcnn.train.engine import Phase, amp_dtype, fit
from sweepcnn.errors import UserError
from sweepcnn.runtime import (Interrupted, install_signal_handlers, seed_everything, set_deterministic,
                          tune_allocator)
from sweepcnn.tracking import Tracker, check_tracking
from sweepcnn.train.run_dir import RUN_FOLDER_OPTIONS, open_run, write_run_files
from sweepcnn.train.stops import end_before_start, end_stopped_run

if TYPE_CHECKING:
    from sweepcnn.report.interpret import Layers

RUN_OPTIONS = grouped("run", {
    **RUN_FOLDER_OPTIONS,
    "test": Option(False, "after training, evaluate the best checkpoint on the test split", "bool"),
    "report": Option(True, "with --test: write report/ (figures, tables, report.html) and log it to W&B", "bool"),
    "report_table_rows": Option(None, "with --report: at most this many test images in the W&B table of every test "
                                      "prediction (default: all)", "int", min=1, nullable=True),
    "deterministic": Option(False, "deterministic algorithms (bit-identical resume on CPU)", "bool"),
})


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


def _flag_given(argv: list[str], name: str) -> bool:
    """Whether `--name` is on the command line itself (not only in a --config file)."""
    return any(arg[2:].partition("=")[0].replace("-", "_") == name for arg in argv if arg.startswith("--"))


def _read_data(cfg: dict, explicit: set[str], size: int, channels: int) -> Data:
    data = load_data(cfg, size, channels)
    if "num_classes" in cfg:
        if "num_classes" in explicit and cfg["num_classes"] != len(data.classes):
            raise UserError(f"--num_classes={cfg['num_classes']} but the data has {len(data.classes)} classes")
        cfg["num_classes"] = len(data.classes)
    return data


def _report(run_dir: Path, spec: ModelSpec, data: Data, normalization, cfg: dict, tracker: Tracker) -> None:
    """The run's results are saved already: a failing report is reported, not fatal."""
    from sweepcnn.report.run_report import build_report

    try:
        page = build_report(run_dir, spec.model, data, normalization, cfg, layers=spec.layers, wandb_run=tracker.run,
                            table_rows=cfg["report_table_rows"])
        print(f"report: {page}")
    except Exception as exc:
        traceback.print_exc()
        print(f"warning: the report failed ({type(exc).__name__}: {exc}); training and test results are saved; "
              f"retry with: python -m sweepcnn.report {run_dir}", file=sys.stderr)


def run_training(argv: list[str], options: dict[str, Option], *, prog: str, description: str,
                 prepare: Callable[[dict], tuple[int, int]], build: Callable[[dict, Data], ModelSpec],
                 job_type: str = "train") -> int:
    """`prepare(cfg)` validates the config and returns (input_size, channels) before any data is touched;
    `build(cfg, data)` returns the model once cfg['num_classes'] is known; `job_type` is the W&B run's. Every flag,
    path and resume condition is checked, and the data read, before the run folder is created or changed."""
    cfg, explicit = parse_args(argv, options, prog, description)
    if not _flag_given(argv, "num_classes"):  # a config file's num_classes (e.g. a run's config.yaml) is not a flag
        explicit.discard("num_classes")
    run = open_run(cfg, explicit, options)
    if run.done:
        print(f"run folder: {run.path} (already {run.done}: nothing more to train, its summary is kept)")
        return 0
    cfg, run_dir = run.cfg, run.path
    check_tracking(cfg)
    size, channels = prepare(cfg)
    check_cache_dir(cfg)
    tune_allocator()
    set_deterministic(cfg["deterministic"])
    seed_everything(cfg["seed"])
    install_signal_handlers()
    try:
        data = _read_data(cfg, explicit, size, channels)
    except Interrupted as stop:
        return end_before_start(stop)
    run.check_data(data.split_record(cfg["split_seed"]))
    run.create(cfg, options, data.split_record(cfg["split_seed"]))
    tracker = Tracker(run_dir, cfg, run_dir.name, run.resume, job_type)
    summary: dict = {"status": "running"}
    try:
        # A fresh run takes a W&B sweep's parameters (a resumed one keeps its config.yaml, which holds them).
        sweep = {k: parse_value(k, options[k], v) for k, v in tracker.sweep_config().items() if k in options}
        if not run.resume and any(cfg[k] != v for k, v in sweep.items()):
            cfg.update(sweep)
            size, channels = prepare(cfg)
            data = _read_data(cfg, explicit, size, channels)
            write_run_files(run_dir, cfg, options, data.split_record(cfg["split_seed"]))
        tracker.update_config({**cfg, "amp_dtype": amp_dtype(cfg)})
        spec = build(cfg, data)
        tracker.tag(spec.rebuild, spec.identity)
        write_record(run_dir, spec, size, channels)
        tracker.use_dataset()
        tracker.watch(spec.model)
        normalization = spec.normalization or channel_stats(data.train)
        skipped = [{"file": f, "reason": r} for f, r in data.skipped]
        summary = {"status": "running", **spec.info, "skipped_files": skipped}
        summary = spec.run(spec.model, data, cfg, run_dir, tracker.log, normalization, resume=run.resume,
                           extra=summary, phases=spec.phases, train_mode=spec.train_mode, test=cfg["test"])
        summary["status"] = "finished"
        tracker.summary(summary)
        if cfg["test"] and cfg["report"] and spec.run is fit:  # spec.model now holds the best checkpoint
            _report(run_dir, spec, data, normalization, cfg, tracker)
        tracker.finish(0)
        print(f"run folder: {run_dir}")
        return 0
    except Interrupted as stop:
        return end_stopped_run(stop, run_dir, tracker, summary)
    except FloatingPointError as exc:
        summary["status"] = "failed"
        tracker.summary(summary)
        tracker.finish(1)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        tracker.finish(1)
        raise
