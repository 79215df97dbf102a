import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from tests.helpers import ROOT
from sweepcnn.errors import UserError
from sweepcnn.report.figures import DPI
from sweepcnn.sweep.analysis import parameter_stats, pareto_front, ranked
from sweepcnn.sweep.report import report as report_sweep
from sweepcnn.sweep.report import write_report
from sweepcnn.sweep.trials import Sweep, Trial, load_sweep_folder, parse_cell
from tests.wandb_records import records

SWEEP_CONFIG = {
    "program": "part_a/train.py", "method": "bayes", "metric": {"name": "val_acc", "goal": "maximize"},
    "parameters": {
        "epochs": {"value": 3},
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-3},
        "activation": {"values": ["relu", "gelu", "silu"]},
        "batch_norm": {"values": [True, False]},
        "base_filters": {"values": [16, 32, 64]},
        "batch_size": {"values": [64]},
        "filter_sizes": {"values": [[3, 3, 3, 3, 3], [5, 5, 3, 3, 3]]},
    },
}
SWEPT = ["learning_rate", "activation", "batch_norm", "base_filters", "batch_size", "filter_sizes"]
HEADER = ["trial", "run_id", "state", "val_acc", "epochs_run", "params", "flops", "test_acc", "seconds", *SWEPT]


def write_sweep(root: Path, rows: list[dict], config: dict = SWEEP_CONFIG, header: list[str] = HEADER) -> Path:
    """A sweep folder as sweepcnn.sweep.folder writes it: trials.csv (csv's own rendering of the values),
    sweep.yaml, runs/."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with (root / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in header} for row in rows)
    metric = config["metric"]["name"]
    for row in rows:
        run = root / "runs" / row["run_id"]
        run.mkdir(parents=True)
        curve = [] if row.get(metric) is None else [row[metric] - 0.1, row[metric]]
        run.joinpath("metrics.jsonl").write_text("".join(json.dumps({"epoch": e, metric: v, "train_loss": 1.0}) + "\n"
                                                         for e, v in enumerate(curve, 1)))
        run.joinpath("summary.json").write_text(json.dumps({metric: row.get(metric), "flops": row.get("flops")}))
    return root


def synthetic_rows(n: int = 24, seed: int = 0) -> list[dict]:
    """val_acc falls with log10(learning_rate) (plus a little noise); FLOPs grow with base_filters."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        lr = float(10 ** rng.uniform(-4, math.log10(3e-3)))
        base = int(rng.choice([16, 32, 64]))
        acc = 0.9 - 0.12 * (math.log10(lr) + 4) + 0.01 * math.log2(base / 16) + rng.normal(0, 0.01)
        rows.append({"trial": i, "run_id": f"run{i:05d}", "state": "finished", "val_acc": round(acc, 4),
                     "epochs_run": 3, "params": base * 1000, "flops": base ** 2 * 1e6 * (1 + 0.1 * rng.random()),
                     "test_acc": round(acc - 0.02, 4), "seconds": 12.5, "learning_rate": lr,
                     "activation": str(rng.choice(["relu", "gelu", "silu"])), "batch_norm": bool(rng.random() < 0.5),
                     "base_filters": base, "batch_size": 64,
                     "filter_sizes": [[3, 3, 3, 3, 3], [5, 5, 3, 3, 3]][int(rng.random() < 0.5)]})
    return rows


def with_states(rows: list[dict]) -> list[dict]:
    """Trial 4 stopped, 6 failed, 10 crashed, the last one still running."""
    rows[3].update(state="stopped", epochs_run=1)
    rows[5].update(state="failed", val_acc=None, test_acc=None, params=None, flops=None, epochs_run=0)
    rows[9].update(state="crashed", val_acc=None, test_acc=None, epochs_run=0)
    rows[-1].update(state="running", val_acc=None, test_acc=None, params=None, flops=None, epochs_run=2)
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rows = with_states(synthetic_rows())
    root = write_sweep(tmp_path_factory.mktemp("sweep") / "cnn-abc", rows)
    return write_report(load_sweep_folder(root), root / "report")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def brute_force_front(trials: list[Trial], maximize: bool = True) -> set[int]:
    sign = 1 if maximize else -1
    points = [t for t in trials if t.metric is not None and t.flops]
    return {p.number for p in points
            if not any(q.flops <= p.flops and sign * q.metric >= sign * p.metric
                       and (q.flops < p.flops or sign * q.metric > sign * p.metric) for q in points)}


# ---------------------------------------------------------------------------------------------------- reading
def test_cells_parse_back_to_what_csv_wrote():
    assert [parse_cell(s) for s in ("", "3", "0.0003", "1e-05", "True", "False", "relu", "[8, 16]", "[5, 'a']")] == \
        [None, 3, 3e-4, 1e-5, True, False, "relu", [8, 16], [5, "a"]]


def test_folder_is_read_with_types(report):
    sweep = report.sweep
    assert sweep.metric == "val_acc" and sweep.maximize and sweep.parameters == SWEPT
    assert len(sweep.trials) == 24 and [t.number for t in sweep.trials] == list(range(1, 25))
    first = sweep.trials[0].params
    assert isinstance(first["batch_norm"], bool) and isinstance(first["base_filters"], int)
    assert isinstance(first["filter_sizes"], list) and isinstance(first["learning_rate"], float)
    assert sweep.trials[-1].state == "running" and sweep.trials[-1].metric is None
    assert sweep.trials[5].metric is None and sweep.trials[5].flops is None and sweep.trials[4].flops > 0


# ---------------------------------------------------------------------------------------------------- outputs
def test_every_output_is_written(report):
    names = {"trials_sorted.csv", "trials_sorted.md", "importance.csv", "importance.png", "parallel_coordinates.png",
             "metric_vs_trial.png", "pareto.png", "observations.md"}
    assert {p.name for p in report.out_dir.iterdir()} == names
    assert {p.name for p in report.files.values()} == names
    assert all(p.stat().st_size > 0 for p in report.files.values())


# parallel coordinates: 1.5 inches per axis (6 parameters and the metric); importance: 0.3 inches per feature (9)
@pytest.mark.parametrize("name,size", [("metric_vs_trial", (8, 5)), ("pareto", (8, 5)),
                                       ("parallel_coordinates", (1.5 * 7, 5.5)), ("importance", (9, 1.2 + 0.3 * 9))])
def test_images_have_the_expected_size_and_content(report, name, size):
    pixels = imread(report.files[name])
    assert pixels.shape[:2] == (round(size[1] * DPI), round(size[0] * DPI))
    assert pixels[..., :3].var() > 0.001  # not blank
    assert pixels[..., :3].reshape(-1, 3).std(axis=0).max() > 0.01 and len(np.unique(pixels[..., 0])) > 20


def test_table_is_sorted_by_the_metric_with_unscored_trials_last(report):
    rows = read_csv(report.files["trials_csv"])
    scored = [r for r in rows if r["val_acc"]]
    values = [float(r["val_acc"]) for r in scored]
    assert len(scored) == 21 and values == sorted(values, reverse=True)
    assert [r["rank"] for r in scored] == [str(i) for i in range(1, 22)]
    assert [r["trial"] for r in rows[21:]] == ["6", "10", "24"] and rows[-1]["rank"] == ""
    assert rows[0]["filter_sizes"] in ("[3, 3, 3, 3, 3]", "[5, 5, 3, 3, 3]")
    markdown = report.files["trials_md"].read_text().splitlines()
    assert markdown[2].startswith("| rank | trial | run_id | state | val_acc | pareto |")
    assert markdown[4].split(" | ")[1:3] == [rows[0]["trial"], rows[0]["run_id"]]
    assert len(markdown) == 4 + 24


def test_minimize_goal_sorts_ascending(tmp_path):
    config = {**SWEEP_CONFIG, "metric": {"name": "val_loss", "goal": "minimize"}}
    header = [("val_loss" if c == "val_acc" else c) for c in HEADER]
    rows = [{**r, "val_loss": r["val_acc"]} for r in synthetic_rows(8)]
    sweep = load_sweep_folder(write_sweep(tmp_path / "s", rows, config, header))
    values = [t.metric for t in ranked(sweep) if t.metric is not None]
    assert values == sorted(values) and not sweep.maximize
    assert {t.number for t in pareto_front(sweep)} == brute_force_front(sweep.trials, maximize=False)


# ---------------------------------------------------------------------------------------------------- analysis
def test_learning_rate_has_the_strongest_negative_correlation_and_importance(report):
    rows = read_csv(report.files["importance_csv"])
    by_feature = {r["feature"]: r for r in rows}
    strongest = max((r for r in rows if r["correlation"]), key=lambda r: abs(float(r["correlation"])))
    assert strongest["feature"] == "learning_rate" and strongest["encoding"] == "log10"
    assert float(strongest["correlation"]) < -0.9
    assert rows[0]["feature"] == "learning_rate" and float(rows[0]["importance"]) > 0.5  # first = most important
    assert math.isclose(sum(float(r["importance"]) for r in rows), 1.0, abs_tol=1e-6)
    assert by_feature["batch_norm"]["encoding"] == "0/1"
    assert {"activation=relu", "activation=gelu", "activation=silu", "filter_sizes=[3, 3, 3, 3, 3]"} <= set(by_feature)
    # constant parameter: no variance, so no correlation, and the table says why
    assert by_feature["batch_size"]["correlation"] == "" and "constant" in by_feature["batch_size"]["note"]
    assert float(by_feature["batch_size"]["importance"]) == 0.0


def test_observations_name_the_strongest_parameter_with_its_sign(report):
    text = report.files["observations"].read_text()
    assert "learning_rate (log scale) has the strongest correlation with val_acc: -0.9" in text
    assert "higher learning_rate goes with lower val_acc" in text
    assert "batch_size=64" in text and "correlation is undefined" in text
    best = max((t for t in report.sweep.trials if t.metric is not None), key=lambda t: t.metric)
    assert f"Best trial: #{best.number} (run {best.run_id}" in text
    assert "1 trial stopped early: #4" in text
    assert "2 trials failed or crashed: #6 (failed, no val_acc), #10 (crashed, no val_acc)" in text
    assert "1 trial still running: #24 (no val_acc)" in text
    assert "Random-forest importance (21 trials; one-hot columns summed per parameter): learning_rate" in text
    assert "24 trials (" in text and "; 21 with a val_acc" in text
    for name in ("pareto.png", "parallel_coordinates.png", "importance.png", "metric_vs_trial.png"):
        assert f"]({name})" in text


def test_observations_follow_the_data_when_the_sign_flips(tmp_path):
    rows = synthetic_rows(16)
    for r in rows:
        r["val_acc"] = round(0.5 + 0.1 * (math.log10(r["learning_rate"]) + 4), 4)
    report = write_report(load_sweep_folder(write_sweep(tmp_path / "s", rows)), tmp_path / "out")
    assert "learning_rate (log scale) has the strongest correlation with val_acc: +1.00" in \
        report.files["observations"].read_text()


def test_pareto_front_on_a_known_case():
    def trial(n, flops, metric):
        return Trial(n, f"r{n}", "finished", metric, {}, flops=flops)

    trials = [trial(1, 1e8, 0.50), trial(2, 2e8, 0.45), trial(3, 3e8, 0.70), trial(4, 3e8, 0.60),
              trial(5, 5e9, 0.70), trial(6, 1e10, 0.90), trial(7, None, 0.99), trial(8, 5e8, None)]
    sweep = Sweep("s", "val_acc", True, [], {}, trials)
    assert [t.number for t in pareto_front(sweep)] == [1, 3, 6]
    sweep.maximize = False
    assert [t.number for t in pareto_front(sweep)] == [1, 2]


def test_pareto_front_of_the_report(report):
    expected = brute_force_front(report.sweep.trials)
    assert expected and {int(r["trial"]) for r in read_csv(report.files["trials_csv"]) if r["pareto"] == "True"} == \
        expected
    text = report.files["observations"].read_text()
    front = sorted((t for t in report.sweep.trials if t.number in expected), key=lambda t: t.flops)
    cheapest = text.split("cheapest first: ")[1].split("\n")[0]
    assert [int(chunk.split(" ")[0]) for chunk in cheapest.split("#")[1:]] == [t.number for t in front]


# ---------------------------------------------------------------------------------------------------- edge cases
def test_single_trial_writes_a_report_and_says_what_is_undefined(tmp_path):
    report = write_report(load_sweep_folder(write_sweep(tmp_path / "s", synthetic_rows(1))), tmp_path / "out")
    text = report.files["observations"].read_text()
    assert "Correlation needs at least 2 trials with a val_acc; there is 1." in text and "Best trial: #1" in text
    assert all(r["correlation"] == "" and r["importance"] == "" for r in read_csv(report.files["importance_csv"]))
    assert "importance" not in report.files  # nothing to chart
    for name in ("parallel_coordinates", "pareto", "metric_vs_trial"):
        assert imread(report.files[name])[..., :3].var() > 0.001


def test_constant_and_non_numeric_parameters(tmp_path):
    config = {**SWEEP_CONFIG, "parameters": {"width": {"values": [64, "auto"]}, "seed": {"values": [7]},
                                             "flag": {"values": [True]}}}
    header = [*HEADER[:9], "width", "seed", "flag"]
    rows = [{"trial": i, "run_id": f"r{i}", "state": "finished", "val_acc": v, "flops": 1e8 * i,
             "width": w, "seed": 7, "flag": True}
            for i, (v, w) in enumerate([(0.5, 64), (0.7, "auto"), (0.52, 64), (0.71, "auto")], 1)]
    report = write_report(load_sweep_folder(write_sweep(tmp_path / "s", rows, config, header)), tmp_path / "out")
    stats = {s.feature: s for s in parameter_stats(report.sweep)}
    assert set(stats) == {"width=64", "width=auto", "seed", "flag"}
    assert stats["width=auto"].correlation > 0.99 and stats["width=64"].correlation < -0.99
    assert stats["seed"].correlation is None and stats["flag"].correlation is None
    text = report.files["observations"].read_text()
    assert "width=auto has the strongest correlation with val_acc: +1.00 (trials with width=auto have higher val_acc)" \
        in text
    assert "seed=7, flag=True" in text
    assert imread(report.files["parallel_coordinates"])[..., :3].var() > 0.001


def test_constant_metric_leaves_correlation_and_importance_undefined(tmp_path):
    rows = synthetic_rows(6)
    for r in rows:
        r.update(state="finished", val_acc=0.5)
    report = write_report(load_sweep_folder(write_sweep(tmp_path / "s", rows)), tmp_path / "out")
    assert all(s.correlation is None and s.importance is None for s in parameter_stats(report.sweep))
    text = report.files["observations"].read_text()
    assert "No parameter has a defined correlation with val_acc" in text
    assert "Random-forest importance is undefined" in text


def test_missing_sweep_yaml_or_metric_column(tmp_path):
    root = write_sweep(tmp_path / "s", synthetic_rows(3))
    (root / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP_CONFIG, "metric": {"name": "val_f1", "goal": "maximize"}}))
    with pytest.raises(UserError, match="column.*val_f1 missing"):
        load_sweep_folder(root)
    (root / "sweep.yaml").unlink()
    with pytest.raises(UserError, match="no sweep.yaml"):
        load_sweep_folder(root)


# ---------------------------------------------------------------------------------------------------- CLI
def logged_files(wandb_dir: Path, wait: float = 15.0) -> set[str]:
    """The media files that the single offline W&B run under wandb_dir recorded. W&B's service process may still be
    writing the run file when finish() returns: read it until its exit record is there."""
    from google.protobuf.message import DecodeError

    runs = list(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    deadline = time.monotonic() + wait
    while True:
        try:
            found = list(records(runs[0]))
        except (DecodeError, AssertionError):  # a record (or the header) half written
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return {f.path for r in found if r.WhichOneof("record_type") == "files" for f in r.files.files}
        time.sleep(0.1)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweepcnn.sweep.report", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("case", ["missing folder", "no trials.csv"])
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, case):
    target = tmp_path / "nope"
    if case == "no trials.csv":
        target.mkdir()
        (target / "sweep.yaml").write_text(yaml.safe_dump(SWEEP_CONFIG))
    result = run_cli(str(target))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and str(target) in result.stderr
    assert ("not found" if case == "missing folder" else "has no trials.csv") in result.stderr


def test_cli_with_no_scored_trial_writes_what_it_can_and_says_so(tmp_path):
    rows = [{**r, "state": "failed", "val_acc": None} for r in synthetic_rows(3)]
    root = write_sweep(tmp_path / "s", rows)
    result = run_cli(str(root))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: no trial of {root} has a val_acc (3 trials)")
    assert {p.name for p in (root / "report").iterdir()} == {"trials_sorted.csv", "trials_sorted.md",
                                                             "metric_vs_trial.png", "observations.md"}
    assert "No trial has a val_acc" in (root / "report" / "observations.md").read_text()
    assert "3 trials failed or crashed" in result.stdout


@pytest.mark.slow
def test_cli_logs_images_and_tables_to_an_offline_wandb_run(tmp_path):
    root = write_sweep(tmp_path / "s", synthetic_rows(8))
    out = tmp_path / "report"
    result = run_cli(str(root), "--out", str(out), "--wandb", env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr
    assert f"report: {out}/ (trials_sorted.csv" in result.stdout and "wandb sync" in result.stdout
    assert "- learning_rate (log scale) has the strongest correlation with val_acc: -" in result.stdout
    logged = logged_files(out)
    for name in ("metric_vs_trial", "pareto", "parallel_coordinates", "importance"):
        assert any(p.startswith(f"media/images/sweep_report/{name}_") for p in logged), (name, logged)
    for name in ("trials", "importance"):
        assert any(p.startswith(f"media/table/sweep_report/{name}_table_") for p in logged), (name, logged)


def test_an_active_wandb_run_gets_the_report_without_the_flag(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = write_sweep(tmp_path / "s", synthetic_rows(6))
    run = wandb.init(dir=str(tmp_path), project="sweep-report-test")
    try:
        result = report_sweep(str(root))
    finally:
        run.finish()
    assert result.wandb_run is run
    assert not (root / "report" / "wandb").exists()  # logged into the active run, no second run started
    logged = logged_files(tmp_path)
    assert any(p.startswith("media/images/sweep_report/pareto_") for p in logged), logged
    assert any(p.startswith("media/table/sweep_report/trials_table_") for p in logged), logged


def test_wandb_sweep_runs_become_trials(monkeypatch):
    """The online path against a stand-in for wandb.Api (no network here): creation order, states, summary metric."""
    wandb = pytest.importorskip("wandb")
    from types import SimpleNamespace

    from sweepcnn.sweep.trials import load_wandb_sweep

    def run(run_id, created, state, summary, lr):
        return SimpleNamespace(id=run_id, created_at=created, state=state, summary_metrics=summary,
                               config={"learning_rate": lr, "epochs": 3, "_wandb": {}})

    runs = [run("b", "2026-01-02T00:00:00", "killed", {"val_acc": 0.7, "flops": 2e8}, 1e-3),
            run("a", "2026-01-01T00:00:00", "finished", {"val_acc": 0.8, "flops": 1e8, "_runtime": 30}, 1e-4),
            run("c", "2026-01-03T00:00:00", "failed", {}, 3e-3)]
    config = {**SWEEP_CONFIG, "parameters": {k: SWEEP_CONFIG["parameters"][k] for k in ("epochs", "learning_rate")}}
    paths = []

    class Api:
        def __init__(self, **kwargs):
            pass

        def sweep(self, path):
            paths.append(path)
            return SimpleNamespace(config=config, runs=runs)

    monkeypatch.setattr(wandb, "Api", Api)
    sweep = load_wandb_sweep("me/proj/abc123")
    assert paths == ["me/proj/abc123"] and sweep.parameters == ["learning_rate"] and sweep.maximize
    assert [(t.number, t.run_id, t.state, t.metric) for t in sweep.trials] == \
        [(1, "a", "finished", 0.8), (2, "b", "stopped", 0.7), (3, "c", "failed", None)]
    assert sweep.trials[0].params == {"learning_rate": 1e-4} and sweep.trials[0].seconds == 30
    assert [t.number for t in pareto_front(sweep)] == [1]
