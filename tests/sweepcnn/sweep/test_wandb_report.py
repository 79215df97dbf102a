"""sweepcnn.sweep.wandb_report: the W&B Report pages' offline specification and the server's format."""
import json

import pytest
import yaml

from sweepcnn.errors import UserError
from sweepcnn.report.keys import PANEL_KEYS, WANDB_TABLE_KEYS
from sweepcnn.sweep import wandb_report
from tests.helpers import ROOT


def test_wandb_report_offline_writes_its_specification(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "spec.json"
    assert wandb_report.main(["--entity", "me", "--project", "proj", "--sweep", "abc123", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not saved" in printed and str(out) in printed
    spec = json.loads(out.read_text())
    assert spec["saved"] is False and spec["filters"]["trials"].startswith("Sweep = 'abc123' and ")
    assert spec["filters"]["reports"].startswith("Group = 'sweep-abc123' and ")  # the retrained run is in no sweep
    grids = [b for b in spec["report"]["blocks"] if b["type"] == "PanelGrid"]
    every_panel = [p for g in grids for p in g["panels"]]
    by_type: dict[str, list] = {}
    for p in every_panel:
        by_type.setdefault(p["type"], []).append(p)
    sweep = yaml.safe_load((ROOT / "sweeps" / "cnn.yaml").read_text())
    searched = [k for k, v in sweep["parameters"].items() if set(v) != {"value"}]
    columns = by_type["ParallelCoordinatesPlot"][0]["columns"]
    assert [c["metric"] for c in columns] == [{"type": "Config", "name": k} for k in searched] + \
        [{"type": "SummaryMetric", "name": "val_acc"}]
    assert by_type["ParameterImportancePlot"][0]["with_respect_to"] == "val_acc"
    assert {k for p in by_type["MediaBrowser"] for k in p["media_keys"]} >= {f"report/{k}" for k in PANEL_KEYS}
    assert {p["table_name"] for p in by_type["WeavePanelSummaryTable"]} >= {f"report/{k}" for k in
                                                                           WANDB_TABLE_KEYS}
    assert grids[0]["runsets"][0]["filters"] == spec["filters"]["trials"]
    assert len(grids) == 2  # the Part B section only with --compare
    with pytest.raises(UserError, match="not both"):
        wandb_report.main(["--entity", "me", "--project", "proj", "--sweep", "a", "--group", "b"])


def test_wandb_report_converts_to_the_servers_format(monkeypatch):
    """What report.save() sends, with the one server call it needs (the project's id) answered here."""
    import wandb_workspaces.reports.v2.interface as interface

    monkeypatch.setattr(interface, "_get_api", lambda: None)
    monkeypatch.setattr(interface, "execute_graphql", lambda api, query, variables: {"project": {"internalId": "P1"}})
    parameters, metric, maximize = wandb_report.swept_parameters(wandb_report.DEFAULT_SWEEP_YAML)
    report = wandb_report.build("me", "proj", "t", wandb_report.section_filters(None, "sweep-digits"), parameters,
                                metric, maximize)
    blocks = json.loads(report._to_model().spec.model_dump_json(by_alias=True, exclude_none=True))["blocks"]
    grids = [b for b in blocks if b["type"] == "panel-grid"]
    views = [p["viewType"] for p in grids[0]["metadata"]["panelBankSectionConfig"]["panels"]]
    assert {"Scatter Plot", "Parallel Coordinates Plot", "Parameter Importance", "Run History Line Plot"} <= set(views)
    assert grids[0]["metadata"]["runSets"][0]["filters"]["filters"][0]["key"] == {"section": "run", "name": "group"}
    assert grids[0]["metadata"]["runSets"][0]["filters"]["filters"][0]["value"] == "sweep-digits"
