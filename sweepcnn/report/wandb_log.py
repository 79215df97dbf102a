"""A run report logged to W&B: figures as images, tables as wandb.Tables, charts, and the test metrics."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sweepcnn.report.keys import (CONFUSION_MATRIX_CHART, MISTAKES_TABLE, PER_CLASS_TABLE, PRECISION_RECALL_CHART,
                                  PREDICTIONS_TABLE, ROC_CHART, TEST_PREDICTIONS)
from sweepcnn.report.panels import Report
from sweepcnn.report.predictions import grid_indices, highest_loss, hwc
from sweepcnn.tracking import active_wandb_run, describe_wandb_run, saved_group, start_side_run
from sweepcnn.wandb_args import run_group


def log_to_wandb(report: Report, run_dir: Path, cfg: dict, run: Any = None, new_run: bool = False,
                 max_rows: int | None = None) -> None:
    """Log into `run`, else into the active W&B run, else (new_run) into a new run that is finished afterwards: job
    type `report`, in the training run's group (the one saved in its run folder; a run folder from before it was
    saved: its --wandb_group, else $WANDB_RUN_GROUP, else the sweep's under `wandb agent`; a run without one: the run
    folder's name), in the run's wandb/ folder; mode from $WANDB_MODE, else online with an API key, else offline."""
    run = run or active_wandb_run()
    own = run is None and new_run
    if own:
        run = start_side_run("report", run_dir, cfg, project=cfg.get("wandb_project"), entity=cfg.get("wandb_entity"),
                             name=f"{run_dir.name}-report",
                             group=saved_group(run_dir) or run_group(cfg.get("wandb_group")) or run_dir.name)
    if run is not None:
        log_report(run, report, max_rows)
    if own:
        print(describe_wandb_run(run), file=sys.stderr)
        run.finish()


def log_report(run: Any, report: Report, max_rows: int | None = None) -> None:
    """Figures as wandb.Image (PNG files: uint8), tables as wandb.Table (with uint8 images), every test prediction
    as a table (its first `max_rows` test images; None: all), the confusion matrix and the ROC and PR curves of each
    class against the rest as W&B charts, the test metrics in the summary. (wandb.plot.roc_curve and pr_curve would
    need pandas: the curves come from scikit-learn (sweepcnn.report.curves) as line charts, one line per class.)"""
    import wandb

    r, classes = report.results, report.classes
    payload: dict[str, Any] = {f"report/{p.key}": wandb.Image(str(p.path), caption=p.title) for p in report.panels}
    payload[f"report/{PER_CLASS_TABLE}"] = wandb.Table(*report.tables["per_class"])

    def image_rows(indices: list[int]) -> list[list[Any]]:
        return [[wandb.Image(hwc(r.image(i))), classes[int(r.labels[i])], classes[int(r.preds[i])],
                 float(r.confidence[i]), float(r.losses[i])] for i in indices]

    columns = ["image", "true", "predicted", "confidence", "loss"]
    grid = [i for rows in grid_indices(r.images.labels, len(classes)) for i in rows]
    payload[f"report/{PREDICTIONS_TABLE}"] = wandb.Table(columns=columns, data=image_rows(grid))
    payload[f"report/{MISTAKES_TABLE}"] = wandb.Table(columns=columns, data=image_rows(highest_loss(r)))
    payload[f"report/{TEST_PREDICTIONS}"] = predictions_table(report, max_rows)
    labels, preds = r.labels.tolist(), r.preds.tolist()
    payload[f"report/{CONFUSION_MATRIX_CHART}"] = wandb.plot.confusion_matrix(y_true=labels, preds=preds,
                                                                             class_names=classes)
    curves = (("roc", ROC_CHART, "ROC"), ("precision_recall", PRECISION_RECALL_CHART, "precision-recall"))
    for table, chart, title in curves:
        if table in report.tables:
            columns, rows = report.tables[table]
            payload[f"report/{chart}"] = wandb.plot.line(wandb.Table(columns, rows), *columns[1:], stroke="class",
                                                         title=f"{title}, each class against the rest")
    run.log(payload)
    run.summary.update({f"report/{k}": v for k, v in report.metrics.items()})


def predictions_table(report: Report, max_rows: int | None = None) -> Any:
    """Every test prediction (the first `max_rows`; None: all) as a wandb.Table: file, thumbnail, true, predicted,
    confidence, loss, correct and one p_<class> column per class (the predictions CSV's columns and the image)."""
    import wandb

    columns, rows = report.tables["predictions"]
    shown = rows if max_rows is None else rows[:max_rows]
    return wandb.Table(columns=[columns[0], "thumbnail", *columns[1:]],
                       data=[[row[0], wandb.Image(hwc(report.results.image(i))), *row[1:]]
                             for i, row in enumerate(shown)])
