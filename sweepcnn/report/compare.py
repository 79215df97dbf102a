"""Compare finished runs: a strategy table (one row per model, weights, strategy, k and schedule), a model table (each
model's best run) and a plot of validation accuracy against trainable parameters.

    python -m sweepcnn.report.compare runs/run_a runs/run_b ...          # run folders
    python -m sweepcnn.report.compare runs/sweeps/finetune-1a2b3c4d      # every run under a folder (e.g. a sweep's)

Runs are ranked by validation accuracy only (the test split never selects anything). Writes strategies.csv/.md,
models.csv/.md and trainable_params.png into --out (default: <folder>/compare for one folder of runs, else
runs/compare), prints the markdown tables, and logs them as wandb.Tables (and the plot) to W&B unless
--wandb_mode=disabled (offline without an API key, like training runs).
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import yaml

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.tracking import MODES, read_history, resolve_mode

STRATEGY_KEY = ("model", "weights", "strategy", "k", "schedule")
METRICS = ("val_acc", "test_acc", "trainable_params", "total_params", "train_seconds", "images_per_sec", "epochs_run")
STRATEGY_COLUMNS = (*STRATEGY_KEY, "runs", *METRICS, "run")
MODEL_COLUMNS = ("model", "weights", "strategy", "k", "schedule", "runs", *METRICS, "run")


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


def read_run(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    total = summary.get("total_params", summary.get("params"))
    row = {"run": str(run), "status": summary.get("status"),
           "model": summary.get("model") or config.get("model") or "part_a_cnn",
           "weights": summary.get("weights") or config.get("weights") or "none",
           "strategy": summary.get("strategy") or config.get("strategy") or "scratch",
           "k": summary.get("k"), "schedule": summary.get("schedule") or config.get("schedule") or "single",
           "val_acc": summary.get("val_acc"), "test_acc": summary.get("test_acc"),
           "trainable_params": summary.get("trainable_params", total), "total_params": total,
           "train_seconds": summary.get("train_seconds"), "epochs_run": summary.get("epochs_run"),
           "images_per_sec": summary.get("images_per_sec") or _mean_images_per_sec(run)}
    return row


def _best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: -1.0 if r["val_acc"] is None else r["val_acc"])


def tables(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(strategy table, model table): the best run of each group by validation accuracy, with the group's size."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row[k]) for k in STRATEGY_KEY), []).append(row)
    strategies = [{**_best(g), "runs": len(g)} for g in groups.values()]
    strategies.sort(key=lambda r: (r["model"], r["trainable_params"] or 0, r["weights"] == "none", r["schedule"]))
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    models = [{**_best(g), "runs": len(g)} for g in by_model.values()]
    models.sort(key=lambda r: -1.0 if r["val_acc"] is None else -r["val_acc"])
    return strategies, models


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value)


def markdown(rows: list[dict], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: ("" if row.get(c) is None else row.get(c)) for c in columns} for row in rows)


def plot_trainable(strategies: list[dict], path: Path) -> None:
    """Validation accuracy against trainable parameters (log scale), one colour per model, labelled by strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for model in dict.fromkeys(r["model"] for r in strategies):
        points = [r for r in strategies if r["model"] == model and r["trainable_params"] and r["val_acc"] is not None]
        if not points:
            continue
        ax.scatter([r["trainable_params"] for r in points], [r["val_acc"] for r in points], label=model)
        for r in points:
            label = r["strategy"] + (f" k={r['k']}" if r["k"] is not None else "") + \
                (" (fine_tune)" if r["schedule"] == "fine_tune" else "") + \
                (" [from scratch]" if r["weights"] == "none" else "")
            ax.annotate(label, (r["trainable_params"], r["val_acc"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("validation accuracy (best epoch)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_to_wandb(run, strategies: list[dict], models: list[dict], plot: Path) -> None:
    import wandb

    def table(rows: list[dict], columns: tuple[str, ...]) -> wandb.Table:
        return wandb.Table(columns=list(columns), data=[[row.get(c) for c in columns] for row in rows])

    run.log({"strategy_comparison": table(strategies, STRATEGY_COLUMNS),
             "model_comparison": table(models, MODEL_COLUMNS), "trainable_params": wandb.Image(str(plot))})


def compare(paths: list[Path], out: Path) -> tuple[list[dict], list[dict]]:
    """Write the tables and the plot into `out`; log them to the active W&B run, if there is one."""
    rows = [read_run(run) for run in find_runs(paths)]
    strategies, models = tables(rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, table, columns in (("strategies", strategies, STRATEGY_COLUMNS), ("models", models, MODEL_COLUMNS)):
        write_csv(table, columns, out / f"{name}.csv")
        (out / f"{name}.md").write_text(markdown(table, columns))
    plot_trainable(strategies, out / "trainable_params.png")
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        log_to_wandb(wandb.run, strategies, models, out / "trainable_params.png")
    return strategies, models


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m sweepcnn.report.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or folders of runs (e.g. a sweep's)")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--wandb_mode", choices=MODES, help="default: $WANDB_MODE, else online with an API key, "
                                                             "else offline")
    parser.add_argument("--wandb_project", help="default: $WANDB_PROJECT")
    parser.add_argument("--wandb_entity", help="default: $WANDB_ENTITY")
    args = parser.parse_args(argv)
    single_folder = len(args.paths) == 1 and not (args.paths[0] / "summary.json").is_file()
    out = args.out or (args.paths[0] / "compare" if single_folder else Path("runs") / "compare")
    mode = resolve_mode(args.wandb_mode)
    run = None
    if mode != "disabled":
        import wandb

        out.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=args.wandb_project or os.environ.get("WANDB_PROJECT"),
                         entity=args.wandb_entity or os.environ.get("WANDB_ENTITY"), job_type="compare",
                         dir=str(out), mode=mode, config={"runs": [str(p) for p in args.paths]})
    try:
        strategies, models = compare(args.paths, out)
    finally:
        if run is not None:
            run.finish()
    print("## Strategies\n\n" + markdown(strategies, STRATEGY_COLUMNS) + "\n## Models\n\n" +
          markdown(models, MODEL_COLUMNS))
    print(f"written to {out}: strategies.csv/.md, models.csv/.md, trainable_params.png", file=sys.stderr)
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
