"""Compare finished runs: a strategy table (the best run of each configuration), a model table (each model's best
run) and a plot of validation accuracy against trainable parameters.

    python -m sweepcnn.report.compare runs/run_a runs/run_b ...          # run folders
    python -m sweepcnn.report.compare runs/sweeps/finetune-1a2b3c4d      # every run under a folder (e.g. a sweep's)

A configuration is what the run's part recorded as its identity in run.json (see sweepcnn.train.record: for
part_b/finetune.py the model, weights, strategy, k and schedule; for part_a/train.py the CNN's layers); its
`model` groups the model table. Runs are ranked by validation accuracy only (the test split never selects anything).
Writes strategies.csv/.md, models.csv/.md and trainable_params.png into --out (default: <folder>/compare for one
folder of runs, else runs/compare), prints the markdown tables, and logs them as wandb.Tables (and the plot) to W&B
unless --wandb_mode=disabled (offline without an API key, like training runs).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.io import atomic_write
from sweepcnn.report.figures import figure, save_figure
from sweepcnn.train.record import default_label, read_record
from sweepcnn.report.tables import markdown_table, write_csv
from sweepcnn.tracking import (active_wandb_run, describe_wandb_run, read_history, read_summary, resolve_mode,
                               start_side_run)
from sweepcnn.wandb_auth import MODES

TABLES = ("strategies", "models")  # <name>.csv and <name>.md
PLOT = "trainable_params.png"
METRICS = ("val_acc", "test_acc", "trainable_params", "total_params", "train_seconds", "images_per_sec", "epochs_run")


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (those with a summary.json): the paths themselves, or every run below them."""
    runs: list[Path] = []
    for path in paths:
        if (path / "summary.json").is_file():
            runs.append(path)
        elif path.is_dir():
            found = sorted(p.parent for p in path.rglob("summary.json"))
            if not found:
                raise UserError(f"{path}: no run folder (with a summary.json) in it")
            runs += found
        else:
            raise UserError(f"{path}: not a folder")
    return list(dict.fromkeys(runs))


def _mean_images_per_sec(run: Path) -> float | None:
    """For runs whose summary predates the summary's images_per_sec: the mean over metrics.jsonl's epochs."""
    values = [row.get("images_per_sec") for row in read_history(run)]
    values = [v for v in values if v]
    return sum(values) / len(values) if values else None


def read_run(run: Path) -> dict[str, Any]:
    """One row: the run's identity and parameter counts (run.json), its metrics (summary.json); `identity` lists
    the identity's keys."""
    summary, record = read_summary(run), read_record(run)
    identity = dict(record.get("identity") or {})
    return {**identity, "identity": tuple(identity), "label": record.get("label") or default_label(identity),
            "run": str(run), "status": summary.get("status"), "val_acc": summary.get("val_acc"),
            "test_acc": summary.get("test_acc"), "trainable_params": record.get("trainable_params"),
            "total_params": record.get("total_params"), "train_seconds": summary.get("train_seconds"),
            "epochs_run": summary.get("epochs_run"),
            "images_per_sec": summary.get("images_per_sec") or _mean_images_per_sec(run)}


def _best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: -1.0 if r["val_acc"] is None else r["val_acc"])


def _order(row: dict) -> tuple:
    """By model, then trainable parameters, then the rest of the identity."""
    return (str(row.get("model")), row["trainable_params"] or 0,
            *(str(row[k]) for k in row["identity"] if k != "model"))


def tables(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(strategy table, model table): the best run of each group by validation accuracy, with the group's size."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple((k, str(row[k])) for k in row["identity"]), []).append(row)
    strategies = sorted(({**_best(g), "runs": len(g)} for g in groups.values()), key=_order)
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(str(row.get("model")), []).append(row)
    models = [{**_best(g), "runs": len(g)} for g in by_model.values()]
    models.sort(key=lambda r: -1.0 if r["val_acc"] is None else -r["val_acc"])
    return strategies, models


def columns(rows: list[dict]) -> tuple[str, ...]:
    """The identity keys of every row (in the order first seen), the group's size, the metrics and the run."""
    keys = dict.fromkeys(k for row in rows for k in row["identity"])
    return (*keys, "runs", *METRICS, "run")


def cells(rows: list[dict], names: tuple[str, ...]) -> list[list[Any]]:
    """The rows' values of the columns `names`."""
    return [[row.get(c) for c in names] for row in rows]


def plot_trainable(strategies: list[dict], path: Path) -> None:
    """Validation accuracy against trainable parameters (log scale), one colour per model, labelled as the run's
    part labels it."""
    fig = figure(8, 5)
    ax = fig.add_subplot()
    for model in dict.fromkeys(r.get("model") for r in strategies):
        points = [r for r in strategies if r.get("model") == model and r["trainable_params"] and
                  r["val_acc"] is not None]
        if not points:
            continue
        ax.scatter([r["trainable_params"] for r in points], [r["val_acc"] for r in points], label=model)
        for r in points:
            ax.annotate(r["label"], (r["trainable_params"], r["val_acc"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("validation accuracy (best epoch)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def log_to_wandb(run: Any, strategies: list[dict], models: list[dict], plot: Path) -> None:
    """The two tables as wandb.Tables and the plot as an image."""
    import wandb

    names = columns(strategies)
    run.log({"strategy_comparison": wandb.Table(columns=list(names), data=cells(strategies, names)),
             "model_comparison": wandb.Table(columns=list(names), data=cells(models, names)),
             "trainable_params": wandb.Image(str(plot))})


def compare(paths: list[Path], out: Path) -> tuple[list[dict], list[dict]]:
    """Write the tables and the plot into `out`; log them to the active W&B run, if there is one."""
    strategies, models = tables([read_run(run) for run in find_runs(paths)])
    names = columns(strategies)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(TABLES, (strategies, models)):
        write_csv(out / f"{name}.csv", names, cells(rows, names))
        atomic_write(out / f"{name}.md", markdown_table(names, cells(rows, names), thousands=True))
    plot_trainable(strategies, out / PLOT)
    run = active_wandb_run()
    if run is not None:
        log_to_wandb(run, strategies, models, out / PLOT)
    return strategies, models


def main(argv: list[str]) -> int:
    """python -m sweepcnn.report.compare PATH... [--out DIR] [--wandb_mode MODE] ..."""
    parser = ArgumentParser(prog="python -m sweepcnn.report.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or folders of runs (e.g. a sweep's)")
    parser.add_argument("--out", type=Path, help="output folder (default: PATH/compare when the one PATH given is a "
                                                 "folder of runs, else runs/compare)")
    parser.add_argument("--wandb_mode", choices=MODES, help="default: $WANDB_MODE, else online with an API key, "
                                                             "else offline")
    parser.add_argument("--wandb_project", help="default: $WANDB_PROJECT")
    parser.add_argument("--wandb_entity", help="default: $WANDB_ENTITY")
    args = parser.parse_args(argv)
    single_folder = len(args.paths) == 1 and not (args.paths[0] / "summary.json").is_file()
    out = args.out or (args.paths[0] / "compare" if single_folder else Path("runs") / "compare")
    run = None
    if resolve_mode(args.wandb_mode) != "disabled":
        out.mkdir(parents=True, exist_ok=True)
        run = start_side_run("compare", out, {"runs": [str(p) for p in args.paths]}, mode=args.wandb_mode,
                             project=args.wandb_project, entity=args.wandb_entity)
    try:
        compare(args.paths, out)
    finally:
        if run is not None:
            run.finish()
            print(describe_wandb_run(run), file=sys.stderr)  # W&B itself prints nothing (wandb_args.quiet_settings)
    print("## Strategies\n\n" + (out / "strategies.md").read_text() + "\n## Models\n\n" +
          (out / "models.md").read_text())
    print(f"written to {out}: strategies.csv/.md, models.csv/.md, {PLOT}", file=sys.stderr)
    return 0


def cli() -> None:
    """The console entry point (sweepcnn-compare, python -m sweepcnn.report.compare)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
