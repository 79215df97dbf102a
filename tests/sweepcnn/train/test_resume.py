"""--resume end to end: what may change, early-stopped runs, runs that never started, changed data."""
import json
import os
from pathlib import Path

import pytest
import yaml

from sweepcnn.tracking import read_history
from tests.helpers import FAST, train, write_class_folders

TINY = ["--data=digits", *FAST]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (W&B's own folder aside)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "wandb" not in p.relative_to(folder).parts}


def assert_refused(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


@pytest.mark.slow
def test_a_refused_resume_changes_nothing_and_names_what_may_change(tmp_path):
    train(*TINY, "--epochs=1", f"--out_dir={tmp_path}", "--run_name=r")
    before = snapshot(tmp_path / "r")
    other = write_class_folders(tmp_path / "photos", per_class=5)
    for change, flag in ((["--base_filters=4"], "--base_filters"), (["--filter_counts_strategy=halving"],
                         "--filter_counts_strategy"), ([f"--data={other}"], "--data"), (["--optimizer=sgd"],
                         "--optimizer")):
        proc = train("--resume", "--run_name=r", f"--out_dir={tmp_path}", *change, check=False)
        assert_refused(proc, flag, "cannot change", "--epochs", "--patience", "--device", "--num_workers")
        assert snapshot(tmp_path / "r") == before, change
    # the folder is intact: a plain resume with more epochs continues it
    train("--resume", "--run_name=r", f"--out_dir={tmp_path}", "--epochs=2")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs_run"] == 2


@pytest.mark.slow
def test_an_early_stopped_run_stays_stopped(tmp_path):
    # min_delta 1: no epoch after the first can improve val_acc, so --patience 1 stops the run after epoch 2
    args = [*TINY, "--epochs=20", "--patience=1", "--min_delta=1", f"--out_dir={tmp_path}", "--run_name=r"]
    train(*args)
    run = tmp_path / "r"
    assert [row["epoch"] for row in read_history(run)] == [1, 2]
    trained = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "last.pt", "best.pt")}
    train("--resume", "--run_name=r", f"--out_dir={tmp_path}")
    proc = train("--resume", "--test", "--report=false", "--run_name=r", f"--out_dir={tmp_path}")
    assert {name: (run / name).read_bytes() for name in trained} == trained  # no epoch trained, nothing saved
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["test_acc"] is not None and "early stopping ended" in proc.stdout
    # a raised --patience trains on
    train("--resume", "--run_name=r", f"--out_dir={tmp_path}", "--patience=2")
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 3


@pytest.mark.slow
def test_a_run_that_never_started_is_started_by_resume(tmp_path):
    (tmp_path / "r").mkdir()  # killed during start-up: the folder, but no config.yaml
    proc = train("--resume", "--run_name=r", f"--out_dir={tmp_path}", *TINY, "--epochs=1")
    assert "never started" in proc.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_file_replaced_under_the_same_name_refuses_the_resume(tmp_path):
    data = write_class_folders(tmp_path / "photos", per_class=6)
    train(f"--data={data}", *FAST, "--epochs=1", f"--out_dir={tmp_path}", "--run_name=r")
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    name = split["train"][0][0]
    assert name in split["stamps"]
    before = snapshot(tmp_path / "r")
    stat = (data / name).stat()
    os.utime(data / name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, touched
    proc = train("--resume", "--run_name=r", f"--out_dir={tmp_path}", "--epochs=2", check=False)
    assert_refused(proc, "changed since the run started", name)
    assert snapshot(tmp_path / "r") == before
    (data / name).write_bytes((data / split["train"][1][0]).read_bytes())  # another image, the same name
    proc = train("--resume", "--run_name=r", f"--out_dir={tmp_path}", "--epochs=2", check=False)
    assert_refused(proc, "changed since the run started")
    assert snapshot(tmp_path / "r") == before


@pytest.mark.slow
def test_a_config_files_num_classes_is_not_an_explicit_flag(tmp_path):
    train(*TINY, "--epochs=1", f"--out_dir={tmp_path}", "--run_name=digits")
    assert yaml.safe_load((tmp_path / "digits" / "config.yaml").read_text())["num_classes"] == 10
    data = write_class_folders(tmp_path / "photos", per_class=6)
    train("--config", str(tmp_path / "digits" / "config.yaml"), f"--data={data}", f"--out_dir={tmp_path}",
          "--run_name=photos")
    assert yaml.safe_load((tmp_path / "photos" / "config.yaml").read_text())["num_classes"] == 3
    # given on the command line it is still checked
    proc = train(f"--data={data}", *FAST, "--num_classes=10", f"--out_dir={tmp_path}", "--run_name=x", check=False)
    assert_refused(proc, "--num_classes=10 but the data has 3 classes")
    assert not (tmp_path / "x").exists()
