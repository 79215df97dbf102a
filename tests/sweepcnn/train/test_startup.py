"""Start-up as one transaction (issue 17): phase 1 checks everything and writes nothing, phase 2 holds the run
folder's lock and undoes its writes when it fails; one live process per run folder; stops during start-up."""
import errno
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

from sweepcnn.config import format_help, parse_args
from sweepcnn.errors import UserError
from sweepcnn.tracking import read_history
from tests.helpers import FAST, ROOT, train
from tests.sweepcnn.train.test_resume import assert_refused, snapshot

TINY = ["--data=digits", *FAST, "--max_images_per_class=20"]


# ---------------------------------------------------------------------------------------------- config (bug 11)
def test_config_files_apply_in_order_and_flags_win(tmp_path):
    from part_a.train import OPTIONS

    (tmp_path / "a.yaml").write_text("learning_rate: 0.1\nbase_filters: 4\nepochs: 3\n")
    (tmp_path / "b.yaml").write_text("learning_rate: 0.2\nepochs: 5\n")
    cfg, explicit = parse_args(["--config", str(tmp_path / "a.yaml"), "--epochs=7", f"--config={tmp_path / 'b.yaml'}"],
                               OPTIONS)
    assert (cfg["learning_rate"], cfg["base_filters"], cfg["epochs"]) == (0.2, 4, 7)
    assert {"learning_rate", "base_filters", "epochs"} <= explicit
    assert "in the order given" in format_help("p", "d", OPTIONS)


def test_a_run_folders_config_starts_a_new_run(tmp_path, capsys):
    from part_a.train import OPTIONS
    from sweepcnn.train.startup import resolve_config

    run = tmp_path / "runs" / "X"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"run_name": "X", "resume": True, "learning_rate": 0.01,
                                                     "base_filters": 4, "device": "cpu"}))
    (run / "split.json").write_text("{}")
    cfg, _ = resolve_config(["--config", str(run / "config.yaml"), "--learning_rate", "3e-4"], OPTIONS)
    assert (cfg["run_name"], cfg["resume"], cfg["device"]) == (None, False, "auto")
    assert (cfg["learning_rate"], cfg["base_filters"]) == (3e-4, 4)
    assert "run_name, resume, device" in capsys.readouterr().err


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_rank_0_alone_prints_the_configs_notes_and_errors(tmp_path, monkeypatch, capsys, rank):
    """Every rank resolves the config to join the process group; the others' notes would repeat rank 0's."""
    from part_a.train import OPTIONS
    from sweepcnn.train.runner import _resolve

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = tmp_path / "runs" / "X"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"run_name": "X", "base_filters": 4}))
    (run / "split.json").write_text("{}")
    cfg, _ = _resolve(["--config", str(run / "config.yaml")], OPTIONS, "p", "d")
    assert cfg["base_filters"] == 4 and cfg["run_name"] is None
    assert capsys.readouterr().err.count("note:") == (rank == "0")
    with pytest.raises(UserError if rank == "0" else SystemExit) as failed:
        _resolve(["--bogus=1"], OPTIONS, "p", "d")
    assert rank == "0" or (failed.value.code == 2 and capsys.readouterr().err == "")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["part_a/train.py", "part_b/finetune.py"])
def test_under_torchrun_a_refused_flag_is_said_by_rank_0_alone(script):
    for rank, said in (("1", ""), ("0", "error: command line: unknown option 'bogus'")):
        env = {**os.environ, "RANK": rank, "WORLD_SIZE": "2", "WANDB_MODE": "offline"}
        proc = subprocess.run([sys.executable, script, "--bogus=1"], cwd=ROOT, capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().startswith(said) and (said or not proc.stderr), proc.stderr


# ---------------------------------------------------------------------------------------------- identity (bug 1)
def test_a_resume_by_the_program_that_did_not_make_the_run_is_refused(tmp_path):
    from part_a.train import OPTIONS
    from sweepcnn.train.run_dir import open_run

    run = tmp_path / "b"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "resnet18", "strategy": "none", "epochs": 1}))
    cfg, explicit = parse_args(["--resume", "--run_name=b", f"--out_dir={tmp_path}"], OPTIONS)
    with pytest.raises(UserError, match="made by another program, not by part_a/train.py .its config.yaml has "
                                        "model, strategy"):  # a run made before run.json named its program
        open_run(cfg, explicit, OPTIONS, "part_a/train.py")
    (run / "run.json").write_text(json.dumps({"program": "part_b/finetune.py", "rebuild": "part_b.part:rebuild"}))
    with pytest.raises(UserError, match="made by part_b/finetune.py, not by part_a/train.py"):
        open_run(cfg, explicit, OPTIONS, "part_a/train.py")


# ---------------------------------------------------------------------------------------------- checks (7, 13)
def test_a_cuda_index_beyond_the_machines_devices_is_refused(monkeypatch):
    from sweepcnn.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="cuda:3 requested but this machine has 1 CUDA device"):
        resolve_device("cuda:3")


def test_the_report_checks_its_device_before_it_reads_the_run(tmp_path):
    from sweepcnn.report.cli import main

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(UserError, match="--device: mps requested but Apple's MPS is not available"):
        main([str(tmp_path / "not_a_run"), "--device", "mps"])


def test_a_state_dict_mismatch_names_a_few_keys_of_each_kind():
    from sweepcnn.train.checkpoint import state_mismatch

    text = state_mismatch({f"k{i}": (1,) for i in range(6)} | {"w": (2, 2)}, {"w": (3, 2), "x": (1,)})
    assert "6 missing key(s): k0, k1, k2 and 3 more" in text and "1 unexpected key(s): x" in text
    assert "w [3, 2] (the model's: [2, 2])" in text and state_mismatch({"a": (1,)}, {"a": (1,)}) == ""


def test_a_weights_file_of_another_architecture_names_its_keys(tmp_path):
    from part_b.models import load_backbone

    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    for model in ("efficientnet_lite0", "resnet18"):
        with pytest.raises(UserError) as err:
            load_backbone(model, str(tmp_path / "linear.pt"), 64, 3)
        message = str(err.value)
        assert "missing key(s)" in message and "unexpected key(s): weight, bias" in message, message
        assert "\n" not in message


def test_training_never_imports_the_report():
    import re

    sources = list((ROOT / "sweepcnn" / "train").glob("*.py"))
    importing = [p.name for p in sources if re.search(r"^\s*(from|import) sweepcnn\.report", p.read_text(), re.M)]
    assert sources and not importing


# ---------------------------------------------------------------------------------------------- Part B (#21, 12)
@pytest.mark.slow
def test_finetune_checks_every_flag_before_any_weights_are_looked_for(tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "torch")}  # an empty hub cache: the weights would be downloaded
    proc = subprocess.run([sys.executable, "part_b/finetune.py", "--strategy", "first_k", f"--out_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    assert_refused(proc, "--strategy first_k needs --k", "resnet50")
    assert "Downloading" not in proc.stderr and not (tmp_path / "torch").exists()
    # the agent's model is applied before the model is looked at
    params = tmp_path / "params.yaml"
    params.write_text("model: {value: efficientnet_lite0}\nstrategy: {value: first_k}\n")
    agent = {"WANDB_SWEEP_ID": "s1", "WANDB_RUN_ID": "t1", "WANDB_SWEEP_PARAM_PATH": str(params)}
    proc = subprocess.run([sys.executable, "part_b/finetune.py", f"--out_dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **env, **agent})
    assert_refused(proc, "needs --k", "efficientnet_lite0")
    assert not (tmp_path / "t1").exists()


# ---------------------------------------------------------------------------------------------- one process (bug 3)
def _popen(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "part_a/train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _wait_for_epochs(run: Path, proc: subprocess.Popen, epochs: int) -> None:
    deadline = time.time() + 300
    while len(read_history(run)) < epochs:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)


@pytest.mark.slow
def test_a_live_run_folder_is_refused_to_a_second_process_and_freed_by_a_kill(tmp_path):
    args = [*TINY, f"--out_dir={tmp_path}", "--epochs=200"]
    live = _popen(*args, "--run_name=r")
    run = tmp_path / "r"
    try:
        _wait_for_epochs(run, live, 1)
        for second in (["--run_name=r"], ["--run_name=r", "--resume"]):  # the same name; a resume
            proc = train(*args, *second, check=False)
            assert_refused(proc, f"in use by pid {live.pid} on ")
    finally:
        live.kill()  # SIGKILL: no clean-up runs, the kernel releases the lock
        live.communicate()
    proc = train(*TINY, f"--out_dir={tmp_path}", "--run_name=r", "--resume", f"--epochs={len(read_history(run)) + 1}")
    epochs = [row["epoch"] for row in read_history(run)]
    assert epochs == sorted(set(epochs)) and json.loads((run / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_relaunch_of_a_live_wandb_run_id_is_refused(tmp_path):
    env = {"WANDB_RUN_ID": "live1", "SWEEPCNN_SWEEP_TRIAL": "1"}
    args = [*TINY, f"--out_dir={tmp_path}", "--epochs=200"]
    live = _popen(*args, env=env)
    try:
        _wait_for_epochs(tmp_path / "live1", live, 1)
        assert_refused(train(*args, env=env, check=False), f"in use by pid {live.pid}")
    finally:
        live.kill()
        live.communicate()


# ---------------------------------------------------------------------------------------------- phase 2 failures
def _main_with(monkeypatch, patches: dict, *argv: str) -> int:
    """part_a/train.py's main in this process with `patches` ({"module:name": replacement}), its signal handlers
    restored afterwards."""
    import importlib

    from part_a.train import main

    for target, replacement in patches.items():
        module, name = target.split(":")
        monkeypatch.setattr(importlib.import_module(module), name, replacement)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        return main(list(argv))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def _refuse_wandb(**kwargs):
    import wandb

    raise wandb.errors.CommError("permission denied to project sweepcnn")


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "run.json")


@pytest.mark.slow
@pytest.mark.parametrize("patch, fragment", [({"wandb:init": _refuse_wandb}, "W&B refused the run (CommError)"),
                                             ({"sweepcnn.train.runner:write_record": _disk_full},
                                              "No space left on device")])
def test_a_failure_after_writing_began_leaves_the_folder_as_it_was(tmp_path, monkeypatch, patch, fragment):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [*TINY, f"--out_dir={tmp_path / 'runs'}", "--epochs=1"]
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        _main_with(monkeypatch, patch, *args, "--run_name=new")
    assert not (tmp_path / "runs").exists()  # the new run's folder, and the out_dir made for it
    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _main_with(monkeypatch, {}, *args, "--run_name=r") == 0
    before = snapshot(tmp_path / "runs")
    wandb_files = sorted((tmp_path / "runs" / "r" / "wandb").rglob("*"))
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        _main_with(monkeypatch, patch, *args, "--run_name=r", "--resume", "--epochs=2")
    assert snapshot(tmp_path / "runs") == before
    assert sorted((tmp_path / "runs" / "r" / "wandb").rglob("*")) == wandb_files


# ---------------------------------------------------------------------------------------------- stops (bug 13)
def _stop_inside(target: str, signum: int, *args: str, env: dict) -> subprocess.CompletedProcess:
    """part_a/train.py, sent `signum` by itself as `target` ("module:function") is first called."""
    module, name = target.split(":")
    code = (f"import os, signal, sys, {module} as m\n"
            f"real = m.{name}\n"
            f"def stop(*a, **k):\n    os.kill(os.getpid(), {int(signum)})\n    return real(*a, **k)\n"
            f"m.{name} = stop\n"
            "from part_a.train import main\nfrom sweepcnn.config import run_cli\n"
            f"sys.argv = ['part_a/train.py', *{list(args)!r}]\nrun_cli(main)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env})


@pytest.mark.slow
def test_a_stop_while_the_run_folder_is_made_ends_as_a_stop_and_leaves_nothing(tmp_path):
    trial = {"WANDB_RUN_ID": "t1", "SWEEPCNN_SWEEP_TRIAL": "1", "WANDB_MODE": "offline"}
    proc = _stop_inside("sweepcnn.train.runner:Tracker", signal.SIGTERM, *TINY, f"--out_dir={tmp_path}", env=trial)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]  # a sweep's stop
    assert "before the run started: nothing was saved" in proc.stderr and not (tmp_path / "t1").exists()
    proc = _stop_inside("sweepcnn.train.runner:Tracker", signal.SIGINT, *TINY, f"--out_dir={tmp_path}",
                        "--run_name=r", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 128 + signal.SIGINT and not (tmp_path / "r").exists(), proc.stderr[-3000:]


@pytest.mark.slow
def test_a_stop_between_making_the_run_folder_and_locking_it_leaves_nothing(tmp_path):
    proc = _stop_inside("sweepcnn.train.run_lock:owned_lock", signal.SIGINT, *TINY, f"--out_dir={tmp_path / 'runs'}",
                        "--run_name=r", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # neither the run folder nor the --out_dir made for it


@pytest.mark.slow
def test_a_stop_before_the_first_epoch_does_not_claim_a_checkpoint(tmp_path):
    for env, code in (({}, 128 + signal.SIGINT), ({"WANDB_RUN_ID": "t1", "SWEEPCNN_SWEEP_TRIAL": "1"}, 0)):
        signum = signal.SIGINT if code else signal.SIGTERM
        proc = _stop_inside("sweepcnn.train.engine:train_one_epoch", signum, *TINY, f"--out_dir={tmp_path}", env=env)
        assert proc.returncode == code, proc.stderr[-3000:]
        assert "before the first epoch completed" in proc.stderr and "saved in" not in proc.stderr
        assert "None val_acc" not in proc.stderr
