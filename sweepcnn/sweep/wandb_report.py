"""A W&B Report for a project or one sweep, built with the `wandb-workspaces` package: sweep charts of the trials
(the metric per run against its creation time, parallel coordinates, parameter importance, per-epoch curves; runs
best first by the sweep's goal), then the report of the retrained best trial and of any run with a report (figures,
the interactive confusion matrix, ROC and precision-recall charts of every class, the table of every test
prediction and the other tables), then, with --compare, Part B's comparison tables from
`python -m sweepcnn.report.compare`.

    python -m sweepcnn.sweep.wandb_report --entity E --project P [--sweep ID | --group sweep-NAME] [--compare]
                                          [--out FILE.json]

Online (an API key, and $WANDB_MODE neither offline nor disabled) the report is saved in the project and its URL
printed. Either way its specification (every block and panel with its settings, as wandb-workspaces holds them) is
written to JSON (--out; default runs/wandb_report-<project>[-<sweep or group>].json); offline that file is all there
is, and the command says so. Runs of `python -m sweepcnn.sweep` reach W&B through `wandb sync` as ordinary runs
grouped as `sweep-<name>`: select them with --group. The retrained best trial joins that group through the
wandb_group and wandb_tags of best.yaml (for a sweep of `wandb agent`, retrain with
`--wandb_group sweep-<id> --wandb_tags retrained`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.io import write_json
from sweepcnn.report.keys import CHARTS, PANEL_KEYS, WANDB_TABLE_KEYS
from sweepcnn.sweep.spec import metric_goal, swept_names
from sweepcnn.tracking import RETRAINED, resolve_mode, sweep_group_of

DEFAULT_SWEEP_YAML = Path(__file__).resolve().parents[2] / "sweeps" / "cnn.yaml"
# The tables sweepcnn.report.compare logs (with the trainable_params figure).
COMPARE_TABLES = ("strategy_comparison", "model_comparison")
REPORT_METRIC = "report/test_acc"  # in the summary of every run with a report


def swept_parameters(sweep_yaml: Path) -> tuple[list[str], str, bool]:
    """(the searched parameters, the metric, whether it is maximized) of a sweep YAML."""
    try:
        config = yaml.safe_load(Path(sweep_yaml).read_text())
        return swept_names(config), *metric_goal(config)
    except FileNotFoundError:
        raise UserError(f"--sweep_yaml: file not found: {sweep_yaml}") from None
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise UserError(f"--sweep_yaml: {sweep_yaml} is not a sweep config with parameters and a metric: "
                        f"{str(exc).splitlines()[0]}") from None


def run_filter(sweep: str | None, group: str | None) -> str:
    if sweep and group:
        raise UserError("give --sweep (a W&B sweep id) or --group (runs synced from `python -m sweepcnn.sweep`), "
                        "not both")
    if sweep:
        return f"Sweep = '{sweep}'"
    return f"Group = '{group}'" if group else ""


def section_filters(sweep: str | None, group: str | None) -> dict[str, str]:
    """The runs of each section: the sweep's trials (training runs, not the retrained best trial); the runs with a
    report in the sweep's group (the retrained best trial, which best.yaml puts in the group, and report runs);
    the comparisons."""
    scope = run_filter(sweep, group)
    trials = " and ".join(f for f in (scope, "JobType in ['train', 'finetune']", f"Tags() not in ['{RETRAINED}']")
                          if f)
    shared = f"Group = '{sweep_group_of(sweep)}'" if sweep else (f"Group = '{group}'" if group else "")
    reported = " and ".join(f for f in (shared, f"SummaryMetric('{REPORT_METRIC}') >= 0") if f)
    return {"trials": trials, "reports": reported, "comparisons": "JobType = 'compare'"}


def build(entity: str, project: str, title: str, filters: dict[str, str], parameters: list[str], metric: str,
          maximize: bool = True, compare: bool = False):
    """The report: wandb_workspaces.reports.v2.Report (not saved). Runs are listed best first by the sweep's goal."""
    import wandb_workspaces.reports.v2 as wr

    def runset(name: str, filters: str, by: str = metric, ascending: bool = not maximize) -> Any:
        return wr.Runset(entity=entity, project=project, name=name, filters=filters,
                         order=[wr.OrderBy(wr.SummaryMetric(by), ascending=ascending)])

    sweep_panels = [
        wr.ScatterPlot(title=f"{metric} per run", x=wr.Metric("CreatedTimestamp"), y=wr.SummaryMetric(metric)),
        wr.ParallelCoordinatesPlot(title="parallel coordinates",
                                   columns=[wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p)) for p in parameters]
                                   + [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric))]),
        wr.ParameterImportancePlot(with_respect_to=metric),
        wr.LinePlot(title=f"{metric} per epoch", x="epoch", y=[metric]),
        wr.LinePlot(title="loss per epoch", x="epoch", y=["train_loss", "val_loss"]),
        wr.LinePlot(title="learning rate", x="epoch", y=["learning_rate"]),
    ]
    report_panels = [wr.MediaBrowser(title=key.replace("_", " "), media_keys=[f"report/{key}"], num_columns=1)
                     for key in PANEL_KEYS]
    report_panels += [wr.CustomChart(query={"summaryTable": {"tableKey": f"report/{key}_table"}}, chart_name=spec,
                                     chart_fields=fields, chart_strings={"title": key.replace("_", " ")})
                      for key, (spec, fields) in CHARTS.items()]
    report_panels += [wr.WeavePanelSummaryTable(table_name=f"report/{key}") for key in WANDB_TABLE_KEYS]
    scope = f"runs filtered by `{filters['trials']}`"
    blocks = [
        wr.H1("Sweep"),
        wr.P(f"{metric} of each run ({'highest' if maximize else 'lowest'} first), the searched parameters "
             f"({', '.join(parameters)}) against it, and the per-epoch curves."),
        wr.PanelGrid(runsets=[runset("runs", filters["trials"])], panels=sweep_panels),
        wr.H1("Predictions and interpretability"),
        wr.P("The sweep's best trial trained again and tested (`python part_a/train.py --config SWEEP_DIR/best.yaml "
             "--test`; best.yaml puts it in the sweep's group, tagged retrained) and any run with a report "
             "(`python -m sweepcnn.report RUN_DIR --wandb`), best test accuracy first."),
        wr.PanelGrid(runsets=[runset("runs with a report", filters["reports"], REPORT_METRIC, False)],
                     panels=report_panels),
    ]
    if compare:
        compare_panels = [wr.WeavePanelSummaryTable(table_name=key) for key in COMPARE_TABLES]
        compare_panels.append(wr.MediaBrowser(title="trainable parameters", media_keys=["trainable_params"]))
        blocks += [wr.H1("Part B: strategy and model comparison"),
                   wr.P("Logged by `python -m sweepcnn.report.compare`."),
                   wr.PanelGrid(runsets=[runset("comparisons", filters["comparisons"])], panels=compare_panels)]
    return wr.Report(entity=entity, project=project, title=title, description=f"{project}: {scope}", blocks=blocks)


def spec(obj: Any) -> Any:
    """A wandb-workspaces object as plain JSON data: each object with its type name and its public fields that
    are set."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            value = spec(getattr(obj, f.name))
            if not f.name.startswith("_") and value not in (None, "", [], {}):
                out[f.name] = value
        return out
    if isinstance(obj, (list, tuple)):
        return [spec(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): spec(v) for k, v in obj.items()}
    return obj


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m sweepcnn.sweep.wandb_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"), help="default: $WANDB_ENTITY")
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT"), help="default: $WANDB_PROJECT")
    parser.add_argument("--sweep", help="a W&B sweep id: only its runs")
    parser.add_argument("--group", help="a run group, e.g. sweep-<name> for runs synced from "
                                        "`python -m sweepcnn.sweep`")
    parser.add_argument("--title", help="default: '<project> sweep report'")
    parser.add_argument("--sweep_yaml", type=Path, default=DEFAULT_SWEEP_YAML,
                        help="the sweep config whose parameters and metric the charts show (default: sweeps/cnn.yaml)")
    parser.add_argument("--out", type=Path, help="the specification's JSON file")
    parser.add_argument("--compare", action="store_true", help="add Part B's comparison section (runs of "
                        "`python -m sweepcnn.report.compare`)")
    args = parser.parse_args(argv)
    if not args.entity or not args.project:
        raise UserError("--entity and --project are required (or set $WANDB_ENTITY and $WANDB_PROJECT)")
    filters = section_filters(args.sweep, args.group)
    parameters, metric, maximize = swept_parameters(args.sweep_yaml)
    title = args.title or f"{args.project} sweep report"
    report = build(args.entity, args.project, title, filters, parameters, metric, maximize, args.compare)
    suffix = f"-{args.sweep or args.group}" if args.sweep or args.group else ""
    out = args.out or Path("runs") / f"wandb_report-{args.project}{suffix}.json"
    mode = resolve_mode(None)
    write_json(out, {"entity": args.entity, "project": args.project, "filters": filters, "saved": mode == "online",
                     "report": spec(report)})
    if mode != "online":
        print(f"W&B is {mode} (no API key, or WANDB_MODE={mode}): the report was not saved; its specification is in "
              f"{out}. Run this command again online to save it.")
        return 0
    try:
        report.save()
    except Exception as exc:  # network, authentication and GraphQL errors surface as many types
        raise UserError(f"cannot save the W&B report: {(str(exc) or type(exc).__name__).splitlines()[0]} "
                        f"(its specification is in {out})") from None
    print(f"saved the W&B report: {report.url} (specification in {out})")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
