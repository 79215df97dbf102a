"""Trials of several processes in the offline runner: torchrun command lines, GPU groups, and (slow) whole sweeps
of tests/sweepcnn/sweep/stand_in.py under torchrun on CPU: launching, each trial's environment, stopping."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweepcnn.errors import UserError
from sweepcnn.sweep.spec import load_sweep
from sweepcnn.sweep.torchrun import TORCHRUN, gpu_groups, trial_command, yaml_procs
from tests.helpers import ROOT
from tests.sweepcnn.sweep.test_runner import alive, state_trials, stand_in_sweep, sweep_cmd, wait_for

TORCHRUN_COMMAND = ["torchrun", "--nproc_per_node=2", "${program}", "${args}"]


def _sweep(command: list[str] | None = None) -> dict:
    sweep = {"program": "part_a/train.py", "method": "random", "metric": {"name": "val_acc"},
             "parameters": {"learning_rate": {"values": [0.1]}}}
    return {**sweep, "command": command} if command else sweep


def test_the_torchrun_yaml_is_cnn_yaml_through_torchrun():
    plain = yaml.safe_load((ROOT / "sweeps" / "cnn.yaml").read_text())
    sweep = load_sweep(ROOT / "sweeps" / "cnn_torchrun.yaml")
    assert sweep["command"] == TORCHRUN_COMMAND  # W&B's form
    assert {k: v for k, v in sweep.items() if k != "command"} == {k: v for k, v in plain.items() if k != "command"}
    assert yaml_procs(sweep, Path("cnn_torchrun.yaml")) == 2
    command = trial_command(sweep, {"learning_rate": 0.01}, 2)
    assert command == [*TORCHRUN, "--standalone", "--nproc_per_node=2", "part_a/train.py", "--learning_rate=0.01"]


def test_gpus_per_trial_wraps_the_default_command_in_torchrun():
    sweep = _sweep()
    assert trial_command(sweep, {"lr": 1}, 1) == ["/usr/bin/env", sys.executable, "part_a/train.py", "--lr=1"]
    assert trial_command(sweep, {"lr": 1}, 4) == ["/usr/bin/env", *TORCHRUN, "--standalone", "--nproc_per_node=4",
                                                  "part_a/train.py", "--lr=1"]
    assert yaml_procs(sweep, Path("x.yaml")) is None
    with pytest.raises(UserError, match=re.escape("${interpreter} ${program}")):
        trial_command(_sweep(["${program}", "${args}"]), {}, 2)


@pytest.mark.parametrize("options, procs", [(["--nproc_per_node", "3"], 3), (["--standalone", "--nproc-per-node=2"], 2),
                                           (["--nnodes=1", "--nproc_per_node=2"], 2), (["--nnodes=1:1", "--nproc_per_node=2"], 2)])
def test_a_torchrun_yaml_command_runs_standalone_once(options, procs):
    sweep = _sweep(["${env}", "torchrun", *options, "${program}", "${args}"])
    assert yaml_procs(sweep, Path("x.yaml")) == procs
    command = trial_command(sweep, {}, procs)
    assert command[:4] == ["/usr/bin/env", *TORCHRUN] and command.count("--standalone") == 1


@pytest.mark.parametrize("options, fragment", [
    ([], "--nproc_per_node=N"), (["--nproc_per_node=auto"], "'auto'"), (["--nproc_per_node=2", "--master_port=29500"],
                                                                        "--master_port=29500"),
    (["--nnodes=2", "--nproc_per_node=2"], "--nnodes=2"), (["--nnodes=1:2", "--nproc_per_node=2"], "--nnodes=1:2"),
    (["--nproc_per_node=2", "--rdzv_endpoint", "h:1"], "rdzv")])
def test_torchrun_options_an_offline_trial_cannot_honour_are_refused(options, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        yaml_procs(_sweep(["torchrun", *options, "${program}", "${args}"]), Path("x.yaml"))


def test_gpu_groups():
    assert gpu_groups(["0", "1", "2", "3"], 2) == ["0,1", "2,3"]
    assert gpu_groups(["0", "1"], 1) == ["0", "1"]
    with pytest.raises(UserError, match="does not divide the 3 GPU"):
        gpu_groups(["0", "1", "2"], 2)


def test_a_trial_killed_after_its_grace_takes_its_session_less_children_along():
    from sweepcnn.sweep.worker import _kill_tree

    # a parent and a child in a session of its own, as torchrun starts its workers
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(300)'], start_new_session=True); print(c.pid, flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    _kill_tree(parent.pid)
    parent.wait(timeout=30)
    wait_for(lambda: not alive(child), "the child to end", timeout=30)


# ----------------------------------------------------------------------------------------------- whole sweeps (slow)
def _rank_files(sweep_dir: Path) -> list[dict]:
    return [{"run_id": f.parent.name, **json.loads(f.read_text())} for f in sweep_dir.glob("runs/*/rank*.json")]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["--gpus_per_trial", "yaml command"])
def test_two_trials_at_a_time_each_on_two_processes(tmp_path, form):
    command = {"command": TORCHRUN_COMMAND} if form == "yaml command" else {}
    path = stand_in_sweep(tmp_path, {"score": {"values": [0.25, 0.75]}, "collective": {"value": True},
                                     "epochs": {"value": 2}, "epoch_seconds": {"value": 2}}, **command)
    sweep_dir = tmp_path / "sweep"
    flags = ["--gpus", "0,1,2,3"] + (["--gpus_per_trial", "2"] if form == "--gpus_per_trial" else [])
    out = subprocess.run(sweep_cmd(path, sweep_dir, 2, *flags), cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "2 worker(s)" in out.stdout  # one per pair of GPUs
    trials = state_trials(sweep_dir)
    assert [t["state"] for t in trials] == ["finished", "finished"] and {t["metric"] for t in trials} == {0.25, 0.75}
    ranks = _rank_files(sweep_dir)
    assert len(ranks) == 4
    for trial in trials:
        mine = [r for r in ranks if r["run_id"] == trial["run_id"]]
        assert sorted(r["RANK"] for r in mine) == ["0", "1"] and {r["WORLD_SIZE"] for r in mine} == {"2"}
        assert {r["WANDB_RUN_ID"] for r in mine} == {trial["run_id"]}  # every rank knows its trial
        assert len({r["CUDA_VISIBLE_DEVICES"] for r in mine}) == 1 and len({r["MASTER_PORT"] for r in mine}) == 1
        run_dir = sweep_dir / "runs" / trial["run_id"]
        assert [(run_dir / f"allreduce{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]  # the ranks met
        assert " -m torch.distributed.run --standalone " in (run_dir / "command.txt").read_text()
    assert sorted(r["CUDA_VISIBLE_DEVICES"] for r in ranks) == ["0,1", "0,1", "2,3", "2,3"]
    assert len({r["MASTER_PORT"] for r in ranks}) == 2  # concurrent trials, each its own rendezvous port


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "kill -9 of the coordinator"])
def test_stopping_the_sweep_ends_torchrun_and_every_rank(tmp_path, stop):
    path = stand_in_sweep(tmp_path, {"score": {"values": [0.25, 0.75]}, "epochs": {"value": 300},
                                     "epoch_seconds": {"value": 1}})
    sweep_dir = tmp_path / "sweep"
    main = subprocess.Popen(sweep_cmd(path, sweep_dir, 2, "--workers", "2", "--gpus_per_trial", "2"), cwd=ROOT,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(_rank_files(sweep_dir)) == 4 and len([t for t in state_trials(sweep_dir) if t.get("pid")])
             == 2, "two trials of two ranks each", main)
    trials = state_trials(sweep_dir)
    pids = [t["pid"] for t in trials] + [t["worker_pid"] for t in trials] + [r["pid"] for r in _rank_files(sweep_dir)]
    assert len(set(pids)) == 8 and all(alive(pid) for pid in pids)  # 2 workers, 2 torchruns, 4 ranks
    if stop == "ctrl-c":
        os.killpg(main.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        out, err = main.communicate(timeout=120)
        assert main.returncode == 130 and "Traceback" not in out + err, err
    else:
        main.kill()
        main.wait()
    wait_for(lambda: not any(alive(pid) for pid in pids), "every process of the sweep to end", timeout=90)
    for trial in trials:  # each rank was told, and could save
        run_dir = sweep_dir / "runs" / trial["run_id"]
        assert [(run_dir / f"signal{r}.txt").read_text() for r in (0, 1)] == ["SIGINT", "SIGINT"]
    wait_for(lambda: {t["state"] for t in state_trials(sweep_dir)} == {"interrupted"}, "the trials recorded",
             timeout=30)


@pytest.mark.slow
def test_a_rank_refusing_its_parameters_stops_the_sweep_with_its_error(tmp_path):
    path = stand_in_sweep(tmp_path, {"fail": {"values": ["usage", "none"]}})  # torchrun itself exits 1
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(sweep_cmd(path, sweep_dir, 2, "--gpus_per_trial", "2"), cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    assert out.stderr.count("\n") == 1 and "(error: --fail: 'usage' is refused" in out.stderr, out.stderr
    assert [t["state"] for t in state_trials(sweep_dir)] == ["failed"]


@pytest.mark.slow
def test_hyperband_stops_a_torchrun_trial_through_every_rank(tmp_path):
    path = stand_in_sweep(tmp_path, {"score": {"values": [0.9, 0.8, 0.1]}, "epochs": {"value": 12},
                                     "epoch_seconds": {"value": 0.5}},
                          early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2})
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(sweep_cmd(path, sweep_dir, 3, "--gpus_per_trial", "2"), cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    trials = {t["params"]["score"]: t for t in state_trials(sweep_dir)}
    assert [trials[s]["state"] for s in (0.9, 0.8, 0.1)] == ["finished", "finished", "stopped"], out.stdout
    run_dir = sweep_dir / "runs" / trials[0.1]["run_id"]
    assert [(run_dir / f"signal{r}.txt").read_text() for r in (0, 1)] == ["SIGTERM", "SIGTERM"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) < 12
