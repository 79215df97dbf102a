"""The report on a trained run (Part A or Part B): what the model predicts on the test split, where it fails, what
its first layer learned and what it looks at; from a run folder (python -m sweepcnn.report, whose command line is
cli.py) or after part_a/train.py's and part_b/finetune.py's --test (report_tested_run).

Writes RUN_DIR/report/: predictions.png (3 test images for each of up to 10 classes), filters.png (first-layer
kernels), confusion_matrix.png/.csv, confusion_matrix_normalized.csv, per_class.csv (precision, recall, F1, AUC and
average precision, with macro and weighted averages), roc_pr.png, roc.csv and precision_recall.csv (each class
against the rest, and the micro and macro averages), mistakes.png/.csv (the highest-loss test images), curves.png
(loss, accuracy and learning rate per epoch), guided_backprop.png, gradcam.png, predictions.csv (every test image,
with one p_<class> column per class) and report.html, one page with everything, images embedded, that opens
offline. With --wandb (or, from Python, into the active W&B run) the figures, tables and charts are logged to W&B
as well, with every test prediction as a table (report/test_predictions: file, thumbnail, true, predicted,
confidence, loss, correct, p_<class>; --table_rows caps it).

The model is rebuilt by the part that built the run (run.json names its rebuild function, see
sweepcnn.train.record), which also names the layers to inspect: the first convolution for the filters and the
target of Grad-CAM and guided backpropagation (Part A: the CNN's first and last convolution; Part B: a ResNet's conv1
and layer4, a ViT's patch embedding and last encoder block's `ln_1`, any other model's first and last Conv2d).

    cli.py          the command line            run_report.py  build_report, from a run folder, after --test
    runs.py         run folder: config, model, data
    record.py       run.json                    predictions.py test predictions
    interpret.py    hooks, guided backprop, Grad-CAM
    plots.py        the figures                 panels.py      figures and tables of one report
    page.py         report.html                 wandb_log.py   logging to W&B (keys.py: its keys)
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from sweepcnn.data.datasets import Data
from sweepcnn.io import atomic_write, check_writable
from sweepcnn.report.interpret import Layers
from sweepcnn.report.page import write_html
from sweepcnn.report.panels import write_panels
from sweepcnn.report.predictions import Normalization
from sweepcnn.report.runs import load_run_model, load_run_data
from sweepcnn.report.wandb_log import log_to_wandb
from sweepcnn.runtime import resolve_device
from sweepcnn.tracking import read_history, read_summary

if TYPE_CHECKING:
    from sweepcnn.train.spec import ModelSpec

ERROR_FILE = "error.txt"  # why the report after --test failed (report_tested_run)


def build_report(run_dir: Path, model: nn.Module, data: Data, normalization: Normalization, cfg: dict,
                 layers: Layers | None = None, new_wandb_run: bool = False, wandb_run: Any = None,
                 summary: dict | None = None, table_rows: int | None = None) -> Path:
    """Write RUN_DIR/report/ for `model` on `data.test` and return its report.html. `layers`: those the model's part
    named (default: its first and last Conv2d). Logged to W&B into `wandb_run`, else into the active W&B run, else
    (new_wandb_run) into a new run that is finished afterwards, with at most `table_rows` test images in the table of
    every test prediction (None: all). `summary` defaults to RUN_DIR/summary.json."""
    run_dir = Path(run_dir)
    report = write_panels(run_dir / "report", model, data, normalization, cfg, read_history(run_dir), layers)
    page = write_html(report, run_dir, cfg, read_summary(run_dir) if summary is None else summary)
    log_to_wandb(report, run_dir, cfg, wandb_run, new_run=new_wandb_run, max_rows=table_rows)
    (run_dir / "report" / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's
    return page


def report_run_folder(run_dir: Path, device: str, new_wandb_run: bool = False, table_rows: int | None = None
                      ) -> Path:
    """build_report for the run folder of a finished run, its model on `device` (auto, cpu, cuda, cuda:N or mps);
    returns its report.html. The device, the run's model and a writable report/ are checked before the data is read."""
    torch_device = resolve_device(device)  # before the model or the data is read
    spec, cfg, classes, normalization = load_run_model(run_dir)
    check_writable(run_dir / "report", "RUN_DIR")  # before the data is read: a read-only run folder
    data = load_run_data(run_dir, cfg, classes)
    return build_report(run_dir, spec.model.to(torch_device), data, normalization, cfg, layers=spec.layers,
                        new_wandb_run=new_wandb_run, table_rows=table_rows)


def report_tested_run(run_dir: Path, spec: ModelSpec, data: Data, normalization: Normalization, cfg: dict,
                      wandb_run: Any) -> None:
    """The step part_a/train.py and part_b/finetune.py take after --test (spec.model holds the best checkpoint). The
    run's results are saved already: a failing report is one warning line (its traceback in report/ERROR_FILE), not
    fatal. Nothing without --report."""
    if not cfg["report"]:
        return
    try:
        page = build_report(run_dir, spec.model, data, normalization, cfg, layers=spec.layers, wandb_run=wandb_run,
                            table_rows=cfg["report_table_rows"])
        print(f"report: {page}")
    except Exception as exc:
        message = (str(exc).splitlines() or [""])[0]
        print(f"warning: the report failed ({type(exc).__name__}: {message}){_save_traceback(run_dir)}; training and "
              f"test results are saved; retry with: python -m sweepcnn.report {run_dir}", file=sys.stderr)


def _save_traceback(run_dir: Path) -> str:
    """Write the exception being handled, with its traceback, to RUN_DIR/report/ERROR_FILE: where it went, as the
    warning says it ("" if it could not be written, e.g. on a full disk)."""
    path = run_dir / "report" / ERROR_FILE
    try:
        atomic_write(path, traceback.format_exc())
    except OSError:
        return ""
    return f", traceback in {path}"
