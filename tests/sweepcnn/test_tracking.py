"""sweepcnn.tracking, sweepcnn.wandb_auth and sweepcnn.artifacts: what W&B records for a run (read back from the
offline run's .wandb file), and where W&B credentials are found."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sweepcnn import wandb_auth
from sweepcnn.errors import UserError
from sweepcnn.runtime import amp_name, resolve_amp
from sweepcnn.tracking import RUNTIME_KEYS, Tracker, read_history, warn_agent_offline
from tests.helpers import FAST, ROOT, run_script, train, write_class_folders
from tests.wandb_records import finished_records, history_and_summary, offline_runs, run_record

CFG = {"wandb_mode": None, "wandb_project": None, "wandb_entity": None}


@pytest.fixture
def offline(monkeypatch):
    """Offline W&B and no agent in the environment; the env for a subprocess (conftest isolates WANDB_DATA_DIR)."""
    for name in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RUN_GROUP", "WANDB_PROJECT", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return {"WANDB_MODE": "offline"}


def summaries_after_each_epoch(path: Path) -> list[dict]:
    """The summary as it stood after each history row and its updates (what W&B keeps if the process dies there)."""
    summary, after, seen = {}, [], False
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            if seen:
                after.append(dict(summary))
            seen = True
        elif kind == "summary":
            summary.update({(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in record.summary.update})
    return [*after, summary]


# ---------------------------------------------------------------------------------------------- summary and steps
def test_the_wandb_summary_is_the_best_epoch_after_every_epoch_even_when_the_run_crashes(tmp_path, offline):
    tracker = Tracker(tmp_path, CFG, "r", resume=False)
    for epoch, acc in enumerate([0.5, 0.9, 0.7], 1):
        tracker.log({"epoch": epoch, "val_acc": acc, "val_loss": 1 - acc}, epoch)
    tracker.finish(1)  # a crash: no final summary was written
    path = offline_runs(tmp_path)[0]
    assert [s["val_acc"] for s in summaries_after_each_epoch(path)] == [0.5, 0.9, 0.9]
    _, summary, _ = history_and_summary(tmp_path)
    assert (summary["val_acc"], summary["val_loss"], summary["best_epoch"]) == (0.9, pytest.approx(0.1), 2)
    assert "val_acc.max" not in summary
    metrics = run_record(path)["metrics"]
    assert metrics["val_acc"] == {"step_metric": "epoch", "summary_none": True}
    assert metrics["epoch"]["step_metric"] == ""


def test_the_best_epoch_follows_the_monitor(tmp_path, offline):
    tracker = Tracker(tmp_path, {**CFG, "monitor": "val_loss", "min_delta": 0.0}, "r", resume=False)
    for epoch, (acc, loss) in enumerate([(0.5, 0.9), (0.9, 0.6), (0.8, 0.4)], 1):
        tracker.log({"epoch": epoch, "val_acc": acc, "val_loss": loss}, epoch)
    tracker.finish(1)
    _, summary, _ = history_and_summary(tmp_path)
    assert (summary["val_acc"], summary["val_loss"], summary["best_epoch"]) == (0.8, 0.4, 3)


def test_a_resumed_offline_run_holds_every_epoch_once_and_a_later_report_row_collides_with_none(tmp_path, offline):
    first = Tracker(tmp_path, CFG, "r", resume=False)
    for epoch in (1, 2, 3):
        first.log({"epoch": epoch, "val_acc": epoch / 10}, epoch)
    first.finish(1)  # killed after epoch 3 was logged but before its checkpoint: the resume redoes epoch 3
    second = Tracker(tmp_path, CFG, "r", resume=True)
    for epoch in (3, 4):
        second.log({"epoch": epoch, "val_acc": epoch / 10 + 0.05}, epoch)
    second.run.log({"report/test_acc": 0.5})
    second.finish(0)
    older, newer = offline_runs(tmp_path)
    history, _, _ = history_and_summary(tmp_path, newer)
    epochs = [(row["epoch"], row["val_acc"]) for row in history if "val_acc" in row]
    assert epochs == [(1, 0.1), (2, 0.2), (3, 0.35), (4, 0.45)]  # as metrics.jsonl holds them
    assert [row["epoch"] for row in read_history(tmp_path)] == [1, 2, 3, 4]
    steps = [row["_step"] for row in history]
    assert steps == sorted(set(steps)) and "report/test_acc" in history[-1]
    assert run_record(newer)["run_id"] == run_record(older)["run_id"]


# ------------------------------------------------------------------------------------------ conventions, artifacts
@pytest.mark.slow
def test_a_training_run_records_project_job_type_tags_config_and_its_model_artifact(tmp_path, offline):
    train("--data=digits", "--epochs=2", "--report=false", f"--out_dir={tmp_path}", "--run_name=r", *FAST, env=offline)
    run = run_record(offline_runs(tmp_path / "r")[0])
    assert (run["project"], run["job_type"], run["tags"]) == ("sweepcnn", "train", ["part_a", "part_a_cnn"])
    assert "group" not in run and run["exit_code"] == 0
    assert not RUNTIME_KEYS & set(run["config"]), RUNTIME_KEYS & set(run["config"])
    assert run["config"]["num_classes"] == 10 and run["config"]["learning_rate"] == 0.001
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    ran = amp_name(resolve_amp("auto", torch.device("cpu")))  # the precision that ran, by the same rule
    assert run["config"]["amp_dtype"] == summary["amp_dtype"] == ran
    dataset, artifact = run["artifacts"]
    assert dataset["type"] == "dataset" and dataset["used"]  # see tests/sweepcnn/test_wandb_run_page.py
    assert (artifact["name"], artifact["type"], artifact["files"]) == (f"model-{run['run_id']}", "model", ["best.pt"])
    assert sorted(artifact["aliases"]) == ["best", "latest"]
    meta = artifact["metadata"]
    assert (meta["val_acc"], meta["epoch"], meta["params"], meta["flops"]) == (
        summary["val_acc"], summary["best_epoch"], summary["params"], summary["flops"])
    assert meta["classes"] == [str(d) for d in range(10)]


def test_the_project_comes_from_the_flag_then_the_environment(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    for name, flag in (("a", None), ("b", "from-flag")):
        (tmp_path / name).mkdir()
        Tracker(tmp_path / name, {**CFG, "wandb_project": flag}, name, resume=False).finish(0)
    assert run_record(offline_runs(tmp_path / "a")[0])["project"] == "from-env"
    assert run_record(offline_runs(tmp_path / "b")[0])["project"] == "from-flag"


def test_log_model_all_adds_last_pt_and_false_or_an_interrupted_run_logs_none(tmp_path, offline):
    def run(name: str, which: str, status: str) -> list[dict]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "best.pt").write_bytes(b"best")
        (folder / "last.pt").write_bytes(b"last")
        tracker = Tracker(folder, {**CFG, "wandb_log_model": which}, name, resume=False)
        tracker.log({"epoch": 1, "val_acc": 0.5}, 1)
        tracker.summary({"status": status, "val_acc": 0.5, "best_epoch": 1, "epochs_run": 1})
        tracker.finish(0)
        return run_record(offline_runs(folder)[0])["artifacts"]

    last, best = run("all", "all", "stopped")
    assert (last["files"], "last" in last["aliases"]) == (["last.pt"], True)
    assert (best["files"], sorted(best["aliases"])) == (["best.pt"], ["best", "latest"])
    assert run("none", "false", "finished") == []
    assert run("interrupted", "best", "interrupted (SIGINT)") == []


@pytest.mark.slow
def test_a_finetuning_run_is_tagged_with_its_model_and_strategy(tmp_path, offline):
    data = write_class_folders(tmp_path / "data", per_class=6)
    run_script("part_b/finetune.py", f"--data={data}", "--model=efficientnet_lite0", "--input_size=32",
               "--batch_size=12", "--epochs=1", "--wandb_log_model=false", f"--out_dir={tmp_path}", "--run_name=b",
               env=offline)
    run = run_record(offline_runs(tmp_path / "b")[0])
    assert run["job_type"] == "finetune" and run["tags"] == ["part_b", "efficientnet_lite0", "all_except_last"]
    assert run["config"]["num_classes"] == 3 and [a["type"] for a in run["artifacts"]] == ["dataset"]


# --------------------------------------------------------------------------------------------------- agent runs
@pytest.mark.slow
def test_a_simulated_agent_run_offline_is_grouped_by_its_sweep_and_warns_once(tmp_path, offline):
    params = tmp_path / "params.yaml"
    params.write_text("learning_rate: {value: 0.01}\nepochs: {value: 1}\n")
    env = {**offline, "WANDB_SWEEP_ID": "abc123", "WANDB_RUN_ID": "trial1", "WANDB_SWEEP_PARAM_PATH": str(params),
           "WANDB_PROJECT": "my-sweeps"}
    proc = train("--data=digits", "--report=false", f"--out_dir={tmp_path}", *FAST, env=env)
    assert proc.stderr.count("the sweep controller will never see this run's metrics") == 1, proc.stderr
    assert "WANDB_MODE" in proc.stderr
    run = run_record(offline_runs(tmp_path / "trial1")[0])
    assert (run["group"], run["project"], run["run_id"]) == ("sweep-abc123", "my-sweeps", "trial1")
    assert run["config"]["learning_rate"] == 0.01


def test_the_agent_warning_only_under_an_agent_and_not_online(monkeypatch, capsys):
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    warn_agent_offline("offline", None)
    monkeypatch.setenv("WANDB_SWEEP_ID", "s1")
    warn_agent_offline("online", None)
    assert capsys.readouterr().err == ""
    warn_agent_offline("disabled", "disabled")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "disabled (from --wandb_mode)" in err and "s1" in err


def test_the_agent_parameters_are_read_typed_from_its_file(tmp_path, monkeypatch):
    from part_a.train import OPTIONS
    from sweepcnn.tracking import agent_parameters

    params = tmp_path / "params.yaml"
    params.write_text("wandb_version: 1\nlearning_rate: {value: 0.01}\nfilter_sizes: {value: '[3, 5, 3, 3, 3]'}\n"
                      "_wandb: {desc: internal}\n")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert agent_parameters(OPTIONS) == {}  # only under `wandb agent`
    monkeypatch.setenv("WANDB_SWEEP_ID", "s1")
    assert agent_parameters(OPTIONS) == {"learning_rate": 0.01, "filter_sizes": [3, 5, 3, 3, 3]}


@pytest.mark.parametrize("content, fragment", [
    (None, "file not found"),
    ("epochs: 1\n", "epochs: expected {value: ...}"),
    ("[1, 2]\n", "must hold a mapping"),
    ("epochs: {value: 1\n", "cannot read"),
    ("epochs: {value: many}\n", "--epochs: expected an integer"),
    ("lr: {value: 0.1}\n", "unknown parameter 'lr'"),
])
def test_a_bad_agent_parameter_file_is_one_error(tmp_path, monkeypatch, content, fragment):
    from part_a.train import OPTIONS
    from sweepcnn.tracking import agent_parameters

    params = tmp_path / "params.yaml"
    if content is not None:
        params.write_text(content)
    monkeypatch.setenv("WANDB_SWEEP_ID", "s1")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    with pytest.raises(UserError, match="WANDB_SWEEP_PARAM_PATH") as err:
        agent_parameters(OPTIONS)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------- credentials
@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home and working folder, and no W&B variables: no credentials anywhere."""
    for name in list(os.environ):
        if name.startswith("WANDB_") or name == "NETRC":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "home"


def netrc(path: Path, machine: str, key: str = "k" * 40) -> Path:
    path.write_text(f"machine {machine}\n  login user\n  password {key}\n")
    return path


def settings(path: Path, **values: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[default]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return path


def test_no_credentials_means_offline(home):
    assert wandb_auth.credentials_source() is None and wandb_auth.resolve_mode(None) == "offline"


def test_credentials_are_found_in_wandbs_order(home, tmp_path, monkeypatch):
    global_settings = settings(home / ".config" / "wandb" / "settings", api_key="s" * 40)
    assert wandb_auth.credentials_source() == str(global_settings)
    netrc(home / "_netrc", "api.wandb.ai")  # Windows' name, read when ~/.netrc does not exist
    assert wandb_auth.credentials_source() == str(home / "_netrc")
    netrc(home / ".netrc", "api.forge.coreweave.com")  # where `wandb login` 0.31 writes the cloud's key
    assert wandb_auth.credentials_source() == str(home / ".netrc")
    monkeypatch.setenv("NETRC", str(netrc(tmp_path / "other-netrc", "example.org")))  # no entry for the cloud
    assert wandb_auth.credentials_source() == str(global_settings)
    token = tmp_path / "token"
    token.write_text("jwt")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(token))
    assert wandb_auth.credentials_source() == "WANDB_IDENTITY_TOKEN_FILE"
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    with pytest.raises(UserError, match="both WANDB_API_KEY and WANDB_IDENTITY_TOKEN_FILE"):
        wandb_auth.credentials_source()
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE")
    assert wandb_auth.credentials_source() == "WANDB_API_KEY" and wandb_auth.resolve_mode(None) == "online"


def test_a_self_hosted_server_is_looked_up_in_netrc_by_host_and_port(home, monkeypatch):
    netrc(home / ".netrc", "api.wandb.ai")
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.lab:8080")
    assert wandb_auth.credentials_source() is None  # the cloud's key is not this server's
    netrc(home / ".netrc", "wandb.lab:8080")
    assert wandb_auth.credentials_source() == str(home / ".netrc")
    monkeypatch.delenv("WANDB_BASE_URL")  # the server named by the settings file instead
    assert wandb_auth.credentials_source() is None
    settings(home / ".config" / "wandb" / "settings", base_url="http://wandb.lab:8080")
    assert wandb_auth.credentials_source() == str(home / ".netrc")


def test_the_settings_files_mode_is_used_below_the_flag_and_the_environment(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    settings(Path("wandb") / "settings", mode="offline")  # what `wandb offline` writes in the working folder
    assert wandb_auth.resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_auth.resolve_mode(None) == "disabled" and wandb_auth.resolve_mode("online") == "online"


@pytest.mark.slow
def test_online_without_credentials_is_one_error_line_and_writes_nothing(home, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    proc = subprocess.run([sys.executable, str(ROOT / "part_a/train.py"), "--data=digits", "--wandb_mode=online",
                           f"--out_dir={tmp_path / 'runs'}", "--run_name=r", *FAST], capture_output=True, text=True,
                          env={**env, "HOME": str(home)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "wandb login" in lines[0], proc.stderr
    assert not (tmp_path / "runs" / "r").exists()


def test_side_runs_default_to_the_project_and_sweep_reports_to_the_sweeps_group(tmp_path, offline):
    from sweepcnn.tracking import start_side_run, sweep_group_of

    assert sweep_group_of("runs/sweeps/cnn-ab12/") == "sweep-cnn-ab12" and sweep_group_of("me/proj/x1") == "sweep-x1"
    start_side_run("compare", tmp_path, {"runs": []}, mode="offline").finish()
    run = run_record(offline_runs(tmp_path)[0])
    assert (run["project"], run["job_type"]) == ("sweepcnn", "compare")
