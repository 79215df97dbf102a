"""The W&B report page of a real offline sweep and its retrained best trial: every panel resolves to keys that the
runs its section selects logged (read from their offline records), and the retrained run's page holds what a user
looks at (every test prediction, per-class ROC/PR charts, the dataset it used, the model's rebuild metadata)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweepcnn.sweep import wandb_report
from tests.helpers import ROOT, train
from tests.wandb_records import finished_records, history_and_summary, run_record

ENV = {"WANDB_MODE": "offline"}


def offline_run(path: Path) -> dict:
    """What a report page can select and show of one offline run: its attributes, config, summary and history keys,
    its charts (config _wandb.visualize) and its artifacts."""
    record = run_record(path)
    history, summary, _ = history_and_summary(path.parent.parent.parent, path)
    charts = {k.removeprefix("_wandb.visualize."): v["panel_config"] for k, v in record["config"].items()
              if k.startswith("_wandb.visualize.")}
    return {**record, "summary": summary, "history_keys": {k for row in history for k in row}, "charts": charts}


def has(keys, key: str) -> bool:
    """A key, or a logged object (image, table) whose fields are flattened under it."""
    return key in keys or any(k.startswith(key + ".") for k in keys)


def matches(run: dict, f) -> bool:
    """Whether a run passes a wandb-workspaces filter (wandb_workspaces.expr.Filters)."""
    if f.op in ("AND", "OR"):
        results = [matches(run, sub) for sub in f.filters]
        return all(results) if f.op == "AND" else any(results)
    section, name = f.key.section, f.key.name
    if section == "run":
        value = {"group": run.get("group"), "jobType": run.get("job_type"), "tags": run.get("tags", [])}[name]
    else:
        value = (run["summary"] if section == "summary" else run["config"]).get(name)
    if f.op == "=":
        return value == f.value
    if f.op == ">=":
        return value is not None and value >= f.value
    if f.op in ("IN", "NIN"):
        hit = any(v in f.value for v in value) if isinstance(value, list) else value in f.value
        return hit == (f.op == "IN")
    raise AssertionError(f"filter op {f.op} not handled by this test")


def panel_keys_missing(panel: dict, runs: list[dict]) -> list[str]:
    """The keys a panel names that no run of its section logged."""
    def anywhere(where: str, key: str) -> bool:
        return any(has(run["summary"] if where == "summary" else run["config"] if where == "config"
                       else run["history_keys"], key) for run in runs)

    def metric(m) -> tuple[str, str]:
        if isinstance(m, str):
            return "history", m
        kind = {"SummaryMetric": "summary", "Config": "config", "Metric": "run"}[m["type"]]
        return kind, m["name"]

    kind = panel["type"]
    wanted: list[tuple[str, str]] = []
    if kind == "ScatterPlot":
        wanted = [metric(panel["x"]), metric(panel["y"])]
    elif kind == "ParallelCoordinatesPlot":
        wanted = [metric(c["metric"]) for c in panel["columns"]]
    elif kind == "ParameterImportancePlot":
        wanted = [("summary", panel["with_respect_to"])]
    elif kind == "LinePlot":
        wanted = [("history", panel["x"]), *(("history", y) for y in panel["y"])]
    elif kind == "MediaBrowser":
        wanted = [("history", k) for k in panel["media_keys"]]
    elif kind == "WeavePanelSummaryTable":
        wanted = [("summary", panel["table_name"])]
    elif kind == "CustomChart":
        table = panel["query"]["summaryTable"]["tableKey"]
        wanted = [("summary", table)]
        chart = table.removesuffix("_table")
        logged = [run["charts"][chart] for run in runs if chart in run["charts"]]
        assert logged, f"no run logged the chart {chart}"
        assert (panel["chart_name"], panel["chart_fields"]) == (logged[0]["panelDefId"], logged[0]["fieldSettings"])
    else:
        raise AssertionError(f"panel type {kind} not handled by this test")
    missing = []
    for where, key in wanted:
        if where == "run":  # a run attribute every run has
            assert key == "CreatedTimestamp", key
        elif not anywhere(where, key):
            missing.append(f"{kind} {where}:{key}")
    return missing


@pytest.mark.slow
def test_the_report_page_of_an_offline_sweep_and_its_retrained_run_names_only_logged_keys(tmp_path):
    sweep = {"program": "part_a/train.py", "method": "grid", "metric": {"name": "val_acc", "goal": "maximize"},
             "command": ["${env}", "${interpreter}", "${program}", "${args}"],
             "parameters": {"data": {"value": "digits"}, "max_images_per_class": {"value": 30},
                            "input_size": {"value": 32}, "epochs": {"value": 1}, "base_filters": {"value": 4},
                            "dense_neurons": {"value": 16}, "learning_rate": {"values": [0.001, 0.003]}}}
    sweep_yaml = tmp_path / "tiny.yaml"
    sweep_yaml.write_text(yaml.safe_dump(sweep))
    sweep_dir = tmp_path / "sweeps" / "tiny"
    proc = subprocess.run([sys.executable, "-m", "sweepcnn.sweep", str(sweep_yaml), "--count", "2", "--sweep_dir",
                           str(sweep_dir), "--poll", "0.2"], cwd=ROOT, capture_output=True, text=True,
                          env={**__import__("os").environ, **ENV}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train("--config", str(sweep_dir / "best.yaml"), "--test", f"--out_dir={tmp_path / 'runs'}", "--run_name=best",
          env=ENV)
    files = sorted(sweep_dir.glob("runs/*/wandb/offline-run-*/run-*.wandb"))
    retrained = next((tmp_path / "runs" / "best").glob("wandb/offline-run-*/run-*.wandb"))
    runs = [offline_run(path) for path in [*files, retrained]]
    assert len(runs) == 3

    out = tmp_path / "spec.json"
    assert wandb_report.main(["--entity", "me", "--project", "sweepcnn", "--group", "sweep-tiny", "--sweep_yaml",
                              str(sweep_yaml), "--out", str(out)]) == 0
    from wandb_workspaces.expr import expr_to_filters

    grids = [b for b in json.loads(out.read_text())["report"]["blocks"] if b["type"] == "PanelGrid"]
    selected = []
    for grid in grids:
        [runset] = grid["runsets"]
        assert runset["order"][0]["ascending"] is False  # val_acc is maximized: the best run first
        chosen = [run for run in runs if matches(run, expr_to_filters(runset["filters"]))]
        selected.append({run["run_id"] for run in chosen})
        missing = [m for panel in grid["panels"] for m in panel_keys_missing(panel, chosen)]
        assert not missing, (runset["name"], missing)
    trials, reported = selected
    assert trials == {run_record(f)["run_id"] for f in files}  # the retrained run is not a trial
    assert reported == {run_record(retrained)["run_id"]}
    assert grids[0]["panels"][0]["x"] == {"type": "Metric", "name": "CreatedTimestamp"}

    best = runs[-1]
    assert (best["group"], "retrained" in best["tags"]) == ("sweep-tiny", True)
    assert {"report/test_predictions", "report/roc_chart_table", "report/precision_recall_chart_table"} <= {
        k.rsplit(".", 1)[0] for k in best["summary"]}
    test_images = len(json.loads((tmp_path / "runs" / "best" / "split.json").read_text())["test"])
    table = staged_table(retrained, "report/test_predictions")
    assert len(table["data"]) == test_images == best["summary"]["report/test_predictions.nrows"]
    assert table["columns"][:2] == ["file", "thumbnail"]
    assert table["columns"][-10:] == [f"p_{d}" for d in range(10)]
    roc = staged_table(retrained, "report/roc_chart_table")
    assert {row[0] for row in roc["data"]} == {*map(str, range(10)), "micro avg", "macro avg"}
    dataset = next(a for a in best["artifacts"] if a["type"] == "dataset")
    model = next(a for a in best["artifacts"] if a["type"] == "model")
    assert dataset["used"] and model["metadata"]["rebuild"] == "part_a.part:rebuild"
    assert model["metadata"]["test_acc"] == best["summary"]["test_acc"]


def staged_table(run_file: Path, key: str) -> dict:
    """A wandb.Table an offline run logged, from the artifact staged for `wandb sync`."""
    name = key.replace("/", "")
    artifact = next(r.artifact for r in finished_records(run_file)
                    if r.WhichOneof("record_type") == "artifact" and f"-{name}-" in r.artifact.name)
    staged = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
    return json.loads(staged[f"{key}.table.json"].read_text())
