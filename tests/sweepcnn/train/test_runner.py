"""part_a/train.py end to end, as a user runs it (subprocesses from the repo root)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sweepcnn.tracking import read_history
from tests.helpers import FAST, ROOT, train, write_class_folders
from tests.wandb_records import history_and_summary

@pytest.mark.slow
def test_digits_run_writes_every_artifact(tmp_path):
    train("--data=digits", "--epochs=2", "--test", f"--out_dir={tmp_path}", "--run_name=r", *FAST)
    run = tmp_path / "r"
    assert {"config.yaml", "split.json", "metrics.jsonl", "summary.json", "best.pt", "last.pt"} <= {
        p.name for p in run.iterdir()}
    summary = json.loads((run / "summary.json").read_text())
    for key in ("val_acc", "val_loss", "test_acc", "test_loss", "params", "flops", "epochs_run", "skipped_files",
                "train_seconds"):
        assert key in summary, key
    assert summary["status"] == "finished" and summary["epochs_run"] == 2 and summary["skipped_files"] == []
    rows = read_history(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "learning_rate", "epoch_seconds",
            "images_per_sec"} <= set(rows[0])
    # the summary reports the best epoch, and the test metrics come from the best checkpoint
    best = max(rows, key=lambda r: r["val_acc"])
    assert summary["val_acc"] == best["val_acc"] and summary["best_epoch"] == best["epoch"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["num_classes"] == 10 and config["input_size"] == 32
    from part_a.counting import count_cnn
    from part_a.cnn_config import MODEL_OPTIONS

    assert summary["params"] == count_cnn({k: config[k] for k in MODEL_OPTIONS})["params"]
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    assert checkpoint["epoch"] == best["epoch"]


@pytest.mark.slow
def test_test_metrics_come_from_the_best_checkpoint(tmp_path):
    """Re-evaluate best.pt on the saved test split independently and compare with the summary."""
    train("--data=digits", "--epochs=3", "--test", "--learning_rate=0.05", "--optimizer=sgd",
          f"--out_dir={tmp_path}", "--run_name=r", "--amp=off", *FAST)
    run = tmp_path / "r"
    summary = json.loads((run / "summary.json").read_text())
    from sweepcnn.config import parse_args
    from sweepcnn.data.datasets import load_data
    from part_a.model import build_cnn
    from part_a.cnn_config import MODEL_OPTIONS
    from part_a.train import OPTIONS

    cfg, _ = parse_args(["--config", str(run / "config.yaml")], OPTIONS)
    data = load_data(cfg, cfg["input_size"], cfg["in_channels"], progress=False)
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    model = build_cnn({k: cfg[k] for k in MODEL_OPTIONS})
    model.load_state_dict(checkpoint["model"])
    model.eval()
    mean = torch.tensor(checkpoint["normalization"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(checkpoint["normalization"]["std"]).view(1, -1, 1, 1)
    images = torch.from_numpy(data.test.pixels[data.test.rows]).float() / 255
    with torch.no_grad():
        predictions = model((images - mean) / std).argmax(1)
    accuracy = (predictions == torch.from_numpy(data.test.labels)).sum().item() / len(predictions)
    assert accuracy == pytest.approx(summary["test_acc"], abs=1e-9)


@pytest.mark.slow
def test_class_folder_dataset_trains(tmp_path):
    data = write_class_folders(tmp_path / "photos", per_class=12)
    train(f"--data={data}", "--epochs=1", "--test", f"--out_dir={tmp_path}", "--run_name=r", *FAST)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert summary["test_acc"] is not None and len(split["test"]) == 3 and split["classes"] == ["cat", "dog", "owl"]


@pytest.mark.slow
@pytest.mark.parametrize("args, fragment", [
    (["--activation=swish"], "--activation: 'swish' is not valid"),
    (["--epochs=-2"], "--epochs: -2 is out of range"),
    (["--input_size=16"], "smallest input size that works is 32"),
    (["--data=/no/such/folder"], "/no/such/folder is not a folder"),
    (["--lr=0.1"], "unknown option 'lr'"),
    (["--resume"], "--resume needs --run_name"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, args, fragment):
    proc = train(*args, f"--out_dir={tmp_path}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and fragment in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_existing_run_folder_is_never_overwritten(tmp_path):
    train("--epochs=1", f"--out_dir={tmp_path}", "--run_name=r", *FAST)
    proc = train("--epochs=1", f"--out_dir={tmp_path}", "--run_name=r", *FAST, check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr


def _wait_for(path: Path, predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {path}")


@pytest.mark.slow
def test_resume_after_kill_is_exact(tmp_path):
    args = ["--data=digits", "--epochs=3", "--deterministic", "--test", "--scheduler=onecycle",
            "--augmentation=true", "--dropout_rate=0.3", f"--out_dir={tmp_path}", *FAST]
    train(*args, "--run_name=whole")
    killed = subprocess.Popen([sys.executable, "part_a/train.py", *args, "--run_name=killed"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "killed"
    _wait_for(run / "metrics.jsonl", lambda: len(read_history(run)) >= 1 and (run / "last.pt").exists())
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (run / "summary.json").exists() or json.loads((run / "summary.json").read_text())["status"] != "finished"
    train("--resume", "--run_name=killed", f"--out_dir={tmp_path}")
    whole, resumed = read_history(tmp_path / "whole"), read_history(run)
    drop = ("epoch_seconds", "images_per_sec")
    assert [{k: v for k, v in r.items() if k not in drop} for r in whole] == \
           [{k: v for k, v in r.items() if k not in drop} for r in resumed]
    a, b = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("whole", "killed"))
    assert (a["test_acc"], a["test_loss"], a["val_acc"]) == (b["test_acc"], b["test_loss"], b["val_acc"])


@pytest.mark.slow
def test_sigterm_saves_and_finishes_the_offline_wandb_run(tmp_path):
    proc = subprocess.Popen([sys.executable, "part_a/train.py", "--epochs=50", f"--out_dir={tmp_path}",
                             "--run_name=r", *FAST], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "WANDB_MODE": "offline"})
    run = tmp_path / "r"
    _wait_for(run / "metrics.jsonl", lambda: len(read_history(run)) >= 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "--resume --run_name=r" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"].startswith("interrupted")
    logged = len(read_history(run))
    assert torch.load(run / "last.pt", weights_only=True)["progress"]["epoch"] >= logged - 1
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    # every logged epoch is in the offline W&B file, and the summary holds the best epoch, not the last
    history, wandb_summary, _ = history_and_summary(run)
    assert sorted(row["epoch"] for row in history) == list(range(1, logged + 1))
    assert wandb_summary["status"] == summary["status"]


def test_wandb_summary_holds_the_best_epoch(tmp_path, monkeypatch):
    # W&B's summary defaults to the last logged value of each key; a run's summary must be its best epoch's.
    from sweepcnn.tracking import Tracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = {"wandb_mode": None, "wandb_project": None, "wandb_entity": None}
    tracker = Tracker(tmp_path, cfg, "r", resume=False)
    for epoch, acc in enumerate([0.5, 0.9, 0.7], 1):
        tracker.log({"epoch": epoch, "val_acc": acc}, epoch)
    tracker.summary({"val_acc": 0.9, "best_epoch": 2, "params": 123})
    tracker.finish()
    history, wandb_summary, _ = history_and_summary(tmp_path)
    assert [row["val_acc"] for row in history] == [0.5, 0.9, 0.7]
    assert wandb_summary["val_acc"] == 0.9 and wandb_summary["best_epoch"] == 2 and wandb_summary["params"] == 123
    assert json.loads((tmp_path / "summary.json").read_text())["val_acc"] == 0.9


@pytest.mark.slow
def test_summary_holds_the_best_epoch_end_to_end(tmp_path):
    train("--epochs=3", f"--out_dir={tmp_path}", "--run_name=r", *FAST, env={"WANDB_MODE": "offline"})
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    history, wandb_summary, _ = history_and_summary(tmp_path / "r")
    best = max(history, key=lambda row: row["val_acc"])
    assert len(history) == 3 and summary["best_epoch"] == best["epoch"]
    assert wandb_summary["val_acc"] == summary["val_acc"] == best["val_acc"]
    assert wandb_summary["params"] == summary["params"] and wandb_summary["flops"] == summary["flops"]


@pytest.mark.slow
def test_a_tested_run_writes_its_report_and_logs_it_to_its_wandb_run(tmp_path):
    train("--data=digits", "--epochs=1", "--test", f"--out_dir={tmp_path}", "--run_name=r", *FAST,
          env={"WANDB_MODE": "offline"})
    report = tmp_path / "r" / "report"
    assert {"report.html", "predictions.png", "confusion_matrix.png", "filters.png", "gradcam.png",
            "guided_backprop.png", "curves.png", "per_class.csv"} <= {p.name for p in report.iterdir()}
    history, _, files = history_and_summary(tmp_path / "r")
    logged = {key for row in history for key in row}
    assert {"report/predictions.path", "report/gradcam.path", "report/filters.path"} <= logged, sorted(logged)
    assert any(f.endswith(".png") and "report" in f for f in files), files


@pytest.mark.slow
def test_a_failed_report_is_one_warning_line_and_the_tested_run_still_succeeds(tmp_path):
    run = tmp_path / "r"
    train("--data=digits", "--epochs=1", f"--out_dir={tmp_path}", "--run_name=r", *FAST)
    (run / "report" / "report.html").mkdir(parents=True)  # the report's page cannot be written
    proc = train("--resume", "--test", f"--out_dir={tmp_path}", "--run_name=r")  # exit 0
    assert "Traceback" not in proc.stderr, proc.stderr
    [warning] = [line for line in proc.stderr.splitlines() if "report failed" in line]
    assert warning.startswith("warning: the report failed (IsADirectoryError: [Errno 21] Is a directory: ")
    assert warning.endswith(f"report.html'), traceback in {run / 'report' / 'error.txt'}; training and test results "
                            f"are saved; retry with: python -m sweepcnn.report {run}")
    assert "Traceback" in (run / "report" / "error.txt").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and "test_acc" in summary
    (run / "report" / "report.html").rmdir()
    subprocess.run([sys.executable, "-m", "sweepcnn.report", str(run)], cwd=ROOT, check=True, capture_output=True)
    assert (run / "report" / "report.html").is_file() and not (run / "report" / "error.txt").exists()


@pytest.mark.slow
def test_kills_at_random_moments_then_resume_end_like_an_uninterrupted_run(tmp_path):
    import random

    args = ["--data=digits", "--epochs=12", "--deterministic", "--report=false", f"--out_dir={tmp_path}", *FAST]
    train(*args, "--run_name=whole")
    rng, run = random.Random(0), tmp_path / "killed"
    # Kill during start-up, then twice at a random moment after a given number of epochs (mid-epoch, validation or
    # a checkpoint write), resuming each time; then let it finish.
    for epochs_logged in (0, 2, 5):
        resume = ["--resume"] if (run / "config.yaml").exists() else []
        proc = subprocess.Popen([sys.executable, "part_a/train.py", *args, "--run_name=killed", *resume], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if epochs_logged:
            _wait_for(run / "metrics.jsonl", lambda: (run / "metrics.jsonl").read_text().count("\n") >= epochs_logged)
        time.sleep(rng.uniform(0.5, 2.0) if not epochs_logged else rng.uniform(0.0, 0.3))
        proc.kill()
        err = proc.communicate()[1]
        assert proc.returncode == -signal.SIGKILL, err[-2000:]  # killed, not finished or failed on a torn file
    train(*args, "--run_name=killed", *(["--resume"] if (run / "config.yaml").exists() else []))
    drop = ("epoch_seconds", "images_per_sec")
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_history(tmp_path / "whole")] == \
           [{k: v for k, v in r.items() if k not in drop} for r in read_history(run)]

def _agent_env(tmp_path: Path, run_id: str, mode: str = "offline") -> dict:
    """The environment `wandb agent` gives a trial: sweep id, run id and the parameter file."""
    params = tmp_path / f"{run_id}-params.yaml"
    params.write_text(yaml.safe_dump({"base_filters": {"value": 8}, "learning_rate": {"value": 0.01}}))
    return {"WANDB_SWEEP_ID": "sweep123", "WANDB_RUN_ID": run_id, "WANDB_SWEEP_PARAM_PATH": str(params),
            "WANDB_MODE": mode}


def _wandb_records(run: Path) -> list:
    """Every offline run file's records, each once W&B has written its exit record (finish() may return first)."""
    from tests.wandb_records import finished_records

    return [record for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")) for record in finished_records(path)]


@pytest.mark.slow
def test_sigterm_under_a_sweep_agent_ends_the_trial_as_a_finished_stopped_run(tmp_path):
    from tests.sweepcnn.train.test_resume import snapshot
    from tests.sweepcnn.train.test_run_folder import interrupt_after

    env = _agent_env(tmp_path, "agent001")
    args = [f"--out_dir={tmp_path}", *FAST, "--base_filters=8", "--learning_rate=0.01", "--epochs=50"]
    proc = interrupt_after(args, 2, signal.SIGTERM, env)
    assert proc.returncode == 0
    run = tmp_path / "agent001"
    summary = json.loads((run / "summary.json").read_text())
    saved = torch.load(run / "last.pt", weights_only=True)["progress"]["epoch"]
    best = max(read_history(run)[:saved], key=lambda row: row["val_acc"])
    assert summary["status"] == "stopped" and saved >= 2
    assert summary["val_acc"] == best["val_acc"] and summary["best_epoch"] == best["epoch"]
    exits = [r.exit.exit_code for r in _wandb_records(run) if r.WhichOneof("record_type") == "exit"]
    _, wandb_summary, _ = history_and_summary(run)
    assert exits == [0] and wandb_summary["val_acc"] == best["val_acc"] and wandb_summary["status"] == "stopped"
    # the controller's stop is final: a relaunch of the trial trains nothing more
    before = snapshot(run)
    proc = train(*args, env=env)
    assert "already stopped" in proc.stdout and snapshot(run) == before


@pytest.mark.slow
def test_sigterm_of_an_offline_sweep_trial_is_a_stop_too(tmp_path):
    from tests.sweepcnn.train.test_run_folder import interrupt_after

    env = {"SWEEPCNN_SWEEP_TRIAL": "1", "WANDB_RUN_ID": "trial001", "WANDB_MODE": "disabled"}
    proc = interrupt_after([f"--out_dir={tmp_path}", *FAST, "--epochs=50"], 1, signal.SIGTERM, env)
    assert proc.returncode == 0
    assert json.loads((tmp_path / "trial001" / "summary.json").read_text())["status"] == "stopped"


@pytest.mark.slow
def test_sigusr1_preempts_the_trial_and_its_relaunch_resumes(tmp_path):
    from tests.sweepcnn.train.test_run_folder import interrupt_after

    env = _agent_env(tmp_path, "agent002")
    args = [f"--out_dir={tmp_path}", *FAST, "--base_filters=8", "--learning_rate=0.01"]
    proc = interrupt_after([*args, "--epochs=100"], 1, signal.SIGUSR1, env)
    assert proc.returncode == 128 + signal.SIGUSR1, proc.stderr
    run = tmp_path / "agent002"
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    kinds = [r.WhichOneof("record_type") for r in _wandb_records(run)]
    exits = [r.exit.exit_code for r in _wandb_records(run) if r.WhichOneof("record_type") == "exit"]
    assert "preempting" in kinds and exits == [128 + signal.SIGUSR1]
    saved = torch.load(run / "last.pt", weights_only=True)["progress"]["epoch"]
    train(*args, f"--epochs={saved + 1}", env=env)  # W&B's requeue: the same run id again
    assert [row["epoch"] for row in read_history(run)] == list(range(1, saved + 2))
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
