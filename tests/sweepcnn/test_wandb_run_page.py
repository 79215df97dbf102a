"""What a training run's W&B page holds, read from its offline records: name, tags, notes and group (flags and
W&B's environment variables), the dataset it used, its model artifact's rebuild metadata, wandb.watch; model
upload as WANDB_LOG_MODEL says (off in a sweep trial); and a console without W&B's banner."""
import pytest
import yaml

from tests.helpers import FAST, train, write_class_folders
from tests.wandb_records import history_and_summary, offline_runs, run_record

QUIET = {"WANDB_MODE": "offline"}


@pytest.fixture(autouse=True)
def _as_a_user_sees_it(monkeypatch):
    """The console as a user sees it: conftest silences W&B for every other test."""
    monkeypatch.delenv("WANDB_SILENT", raising=False)


@pytest.mark.slow
def test_a_simulated_agent_trial_uses_the_environments_tags_notes_and_group_and_uploads_no_model(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"learning_rate": {"value": 0.002}, "_wandb": {"value": {}}}))
    env = {**QUIET, "WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "trial1", "WANDB_SWEEP_PARAM_PATH": str(params),
           "WANDB_TAGS": "t1,t2", "WANDB_NOTES": "from the environment"}
    proc = train("--data=digits", "--max_images_per_class=20", "--epochs=1", "--report=false",
                 f"--out_dir={tmp_path}", *FAST, env=env)
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    run = run_record(offline_runs(run_dir)[0])
    assert (run["run_id"], run["group"], run["notes"]) == ("trial1", "sweep-sw1", "from the environment")
    assert run["tags"][:2] == ["t1", "t2"] and "part_a" in run["tags"]
    assert run["config"]["learning_rate"] == 0.002
    assert [a["type"] for a in run["artifacts"]] == ["dataset"]  # no model upload in a sweep trial
    [dataset] = run["artifacts"]
    assert dataset["used"] and dataset["name"] == "dataset-digits" and dataset["files"] == ["split.json"]
    assert dataset["metadata"]["classes"] == [str(d) for d in range(10)]
    # the console: W&B's banner and run summary are gone; the line that says where the run is stays
    printed = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in printed if line.startswith("wandb:")], printed
    where = [line for line in printed if "offline W&B run trial1" in line]
    assert len(where) == 2 and "wandb sync" in where[0]
    output_log = next(run_dir.glob("wandb/offline-run-*/files/output.log")).read_text()
    assert "epoch 1/1" in output_log  # the training output still reaches W&B's log


@pytest.mark.slow
def test_flags_name_tags_notes_group_watch_and_log_the_dataset_folder_and_every_checkpoint(tmp_path):
    data = write_class_folders(tmp_path / "photos", per_class=45)  # >100 batches of 1: one wandb.watch log
    env = {**QUIET, "WANDB_LOG_MODEL": "checkpoint", "WANDB_NAME": "named-by-env", "WANDB_TAGS": "ignored"}
    train(f"--data={data}", "--epochs=1", "--report=false", f"--out_dir={tmp_path}", "--run_name=r",
          "--wandb_tags=x,y", "--wandb_notes=by flag", "--wandb_group=g1", "--wandb_watch=all", "--batch_size=1",
          "--batch_norm=false",
          "--input_size=32", "--base_filters=8", "--dense_neurons=32", env=env)
    path = offline_runs(tmp_path / "r")[0]
    run = run_record(path)
    assert (run["name"], run["group"], run["notes"]) == ("named-by-env", "g1", "by flag")
    assert run["tags"][:2] == ["x", "y"] and "ignored" not in run["tags"]
    dataset, *models = run["artifacts"]
    assert dataset["used"] and dataset["name"] == "dataset-photos"
    references = dataset["references"]  # each image by path and size, not uploaded
    assert len(references) == 135 and references["data/cat/img_000.jpg"] == (data / "cat/img_000.jpg").as_uri()
    assert [a["files"] for a in models] == [["last.pt"], ["best.pt"]]  # checkpoint: both checkpoints
    assert "last" in models[0]["aliases"] and "best" in models[1]["aliases"]
    meta = models[-1]["metadata"]
    assert (meta["part"], meta["rebuild"], meta["model"]) == ("part_a", "part_a.part:rebuild", "part_a_cnn")
    assert (meta["input_size"], meta["channels"], meta["classes"]) == (32, 3, ["cat", "dog", "owl"])
    assert len(meta["normalization"]["mean"]) == 3 and "load_state_dict" in meta["usage"]
    history, _, _ = history_and_summary(tmp_path / "r", path)
    assert any(k.startswith("gradients/") for row in history for k in row)
    assert any(k.startswith("parameters/") for row in history for k in row)


def test_a_bad_wandb_log_model_is_one_error_line_before_anything_is_written(tmp_path):
    proc = train("--data=digits", f"--out_dir={tmp_path}", env={**QUIET, "WANDB_LOG_MODEL": "sometimes"},
                 check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: WANDB_LOG_MODEL='sometimes' is not valid: use end, checkpoint or false (as for HF transformers), "
        "or one of false, best, all"]
    assert not list(tmp_path.iterdir())


@pytest.fixture
def side_run(monkeypatch) -> dict:
    """The report's side run faked: returns the keyword arguments it is started with."""
    from sweepcnn.report import wandb_log

    for name in ("WANDB_RUN_GROUP", "WANDB_SWEEP_ID"):
        monkeypatch.delenv(name, raising=False)
    started = {}

    class Run:
        settings = type("Settings", (), {"mode": "disabled"})()

        def finish(self):
            pass

    monkeypatch.setattr(wandb_log, "start_side_run", lambda *args, **kwargs: started.update(kwargs) or Run())
    monkeypatch.setattr(wandb_log, "log_report", lambda *args: None)
    return started


@pytest.mark.parametrize("cfg, env, group", [({"wandb_group": "sweep-x"}, {}, "sweep-x"),
                                             ({}, {"WANDB_RUN_GROUP": "g2"}, "g2"), ({}, {}, "r")])
def test_a_report_run_shares_its_training_runs_group(tmp_path, monkeypatch, side_run, cfg, env, group):
    from sweepcnn.report import wandb_log

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    wandb_log.log_to_wandb(None, tmp_path / "r", cfg, new_run=True)
    assert side_run["group"] == group  # the training run's group; a run without one: its folder's name


def test_a_sweep_trials_report_run_reported_later_joins_the_sweeps_group(tmp_path, monkeypatch, side_run):
    from sweepcnn.report import wandb_log
    from sweepcnn.tracking import Tracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-s")  # as `python -m sweepcnn.sweep` starts its trials
    trial = tmp_path / "trial-1"
    trial.mkdir()
    Tracker(trial, {"wandb_mode": None, "wandb_project": None, "wandb_entity": None}, trial.name, False).finish()
    monkeypatch.delenv("WANDB_RUN_GROUP")  # later, by hand: python -m sweepcnn.report TRIAL_DIR --wandb
    wandb_log.log_to_wandb(None, trial, {}, new_run=True)
    assert side_run["group"] == "sweep-s"  # before: trial-1, the folder's name
