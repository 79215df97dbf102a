"""Report on a sweep: the trials ranked by the metric, parameter importance and correlation (as W&B's
parameter-importance panel computes them), a parallel-coordinates plot, the metric per trial, the accuracy/FLOPs
Pareto front, and written observations derived from those numbers.

    python -m sweepcnn.sweep.report SWEEP_DIR [--out DIR] [--wandb]
    python -m sweepcnn.sweep.report ENTITY/PROJECT/SWEEP_ID [--out DIR] [--wandb]

SWEEP_DIR is a folder written by `python -m sweepcnn.sweep` (trials.csv, sweep.yaml, runs/<run_id>/); the report goes
to SWEEP_DIR/report/ unless --out says otherwise. A W&B sweep path is read online with `wandb.Api()` (it needs an API
key; its report goes to runs/sweeps/wandb-<SWEEP_ID>/report/). --wandb also logs the figures and tables to a W&B
run (mode: $WANDB_MODE, else online with an API key, else offline); from Python, `log_to_wandb` logs into the active
run if there is one.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.io import atomic_write
from sweepcnn.report.tables import markdown_table, write_csv
from sweepcnn.sweep.analysis import ParamStat, param_kind, parameter_stats, pareto_front, ranked
from sweepcnn.sweep.observations import observations, plural
from sweepcnn.sweep.plots import plot_importance, plot_metric_vs_trial, plot_parallel_coordinates, plot_pareto
from sweepcnn.sweep.trials import Sweep, Trial, load
from sweepcnn.tracking import active_wandb_run, describe_wandb_run, start_side_run, sweep_group_of


# ---------------------------------------------------------------------------------------------------- tables
def trial_table(sweep: Sweep, front: list[Trial]) -> tuple[list[str], list[list[Any]]]:
    """The ranked trials as (columns, rows): plain values (lists and mixed-type parameters as text)."""
    kinds = {p: param_kind([t.params.get(p) for t in sweep.trials]) for p in sweep.parameters}
    on_front = {t.number for t in front}
    columns = ["rank", "trial", "run_id", "state", sweep.metric, "pareto", "test_acc", "flops", "params",
               "epochs_run", "seconds", *sweep.parameters]
    rows = []
    for rank, t in enumerate(ranked(sweep), 1):
        values = [t.params.get(p) if kinds[p] != "categorical" or t.params.get(p) is None else str(t.params[p])
                  for p in sweep.parameters]
        rows.append([rank if t.metric is not None else None, t.number, t.run_id, t.state, t.metric,
                     t.number in on_front, t.test_acc, t.flops, t.n_params, t.epochs_run, t.seconds, *values])
    return columns, rows


def stats_table(stats: list[ParamStat]) -> tuple[list[str], list[list[Any]]]:
    """Each feature's correlation and importance as (columns, rows), most important first."""
    columns = ["feature", "parameter", "encoding", "correlation", "importance", "note"]
    return columns, [[s.feature, s.parameter, s.encoding, s.correlation, s.importance, s.note] for s in stats]


# ---------------------------------------------------------------------------------------------------- the report
@dataclass
class Report:
    """What write_report wrote, and the tables and observations it wrote them from."""

    out_dir: Path
    sweep: Sweep
    observations: list[str]
    files: dict[str, Path] = field(default_factory=dict)  # name -> file written
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)
    wandb_run: Any = None  # the W&B run it was logged to, if any

    @property
    def images(self) -> dict[str, Path]:
        return {name: path for name, path in self.files.items() if path.suffix == ".png"}


def write_report(sweep: Sweep, out_dir: str | Path) -> Report:
    """Write every output the data allows into out_dir (with no trial with a metric: the trials table, the
    per-trial plot and the observations)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = parameter_stats(sweep) if sweep.scored else []
    front = pareto_front(sweep)
    report = Report(out_dir, sweep, observations(sweep, stats, front))
    report.tables["trials"] = trial_table(sweep, front)
    write_csv(_add(report, "trials_csv", "trials_sorted.csv"), *report.tables["trials"])
    title = f"# Trials of {sweep.source}, best {sweep.metric} first\n\n"
    atomic_write(_add(report, "trials_md", "trials_sorted.md"), title + markdown_table(*report.tables["trials"]))
    if sweep.trials:
        plot_metric_vs_trial(sweep, _add(report, "metric_vs_trial", "metric_vs_trial.png"))
    if stats:
        report.tables["importance"] = stats_table(stats)
        write_csv(_add(report, "importance_csv", "importance.csv"), *report.tables["importance"])
        if any(s.importance is not None or s.correlation is not None for s in stats):
            plot_importance(sweep, stats, _add(report, "importance", "importance.png"))
    if sweep.scored:
        plot_parallel_coordinates(sweep, _add(report, "parallel_coordinates", "parallel_coordinates.png"))
    if front:
        plot_pareto(sweep, front, _add(report, "pareto", "pareto.png"))
    atomic_write(_add(report, "observations", "observations.md"), _observations_markdown(report))
    return report


def _add(report: Report, name: str, filename: str) -> Path:
    report.files[name] = report.out_dir / filename
    return report.files[name]


def _observations_markdown(report: Report) -> str:
    sweep, table = report.sweep, report.files["trials_md"].name
    figures = "".join(f"\n![{name}]({path.name})\n" for name, path in report.images.items())
    bullets = "".join(f"- {line}\n" for line in report.observations)
    return (f"# Sweep report: {sweep.source}\n\nMetric: {sweep.metric} ({sweep.goal}).\n\n{bullets}\n"
            f"The ranked trials: [{table}]({table})\n{figures}")


def log_to_wandb(report: Report, mode: str | None = None, wandb_dir: str | Path | None = None) -> Any:
    """Log the report's images and tables: into the active W&B run if there is one, else into a new run (mode
    from `mode`, else $WANDB_MODE, else online with an API key, else offline), which is then finished."""
    import wandb

    run = active_wandb_run()
    own = run is None
    if own:
        run = start_side_run("sweep-report", Path(wandb_dir or report.out_dir),
                             {"sweep": report.sweep.source, "metric": report.sweep.metric}, mode=mode,
                             group=sweep_group_of(report.sweep.source))
    payload: dict[str, Any] = {f"sweep_report/{name}": wandb.Image(str(path)) for name, path in report.images.items()}
    for name, (columns, rows) in report.tables.items():
        data = [[_plain(v) for v in row] for row in rows]
        payload[f"sweep_report/{name}_table"] = wandb.Table(columns=columns, data=data)
    run.log(payload)
    if own:
        run.finish()
    return run


def _plain(value: Any) -> Any:
    """A table cell W&B's Table accepts (anything but a scalar as text)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


# ---------------------------------------------------------------------------------------------------- CLI
def report(source: str, out_dir: str | Path | None = None, log_wandb: bool = False) -> Report:
    """Read a sweep (folder or W&B path), write its report, and log it to W&B when asked or when this process
    already has an active W&B run."""
    sweep, default_out = load(source)
    result = write_report(sweep, out_dir or default_out)
    if log_wandb or active_wandb_run() is not None:
        result.wandb_run = log_to_wandb(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m sweepcnn.sweep.report", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a sweep folder of `python -m sweepcnn.sweep`, or a W&B sweep ENTITY/PROJECT/ID")
    parser.add_argument("--out", default=None, help="report folder (default: SWEEP_DIR/report)")
    parser.add_argument("--wandb", action="store_true", help="also log the figures and tables to a W&B run")
    args = parser.parse_args(argv)
    result = report(args.sweep, args.out, args.wandb)
    sweep = result.sweep
    print(f"sweep {sweep.source}: {sweep.metric} ({sweep.goal})")
    for line in result.observations:
        print(f"- {line}")
    print(f"report: {result.out_dir}/ ({', '.join(p.name for p in result.files.values())})")
    if result.wandb_run is not None:
        print(describe_wandb_run(result.wandb_run))
    if not sweep.scored:
        trials = plural(len(sweep.trials), "trial")
        written = ", ".join(p.name for p in result.files.values())
        raise UserError(f"no trial of {sweep.source} has a {sweep.metric} ({trials}): wrote only {written}")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
