import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, write_class_folders
from sweepcnn.config import parse_args
from sweepcnn.errors import UserError
from sweepcnn.train.engine import METRIC
from sweepcnn.sweep.spec import agent_command, load_sweep, metric_goal, search_engine, swept_names
from part_a.counting import count_cnn
from part_a.model import MODEL_OPTIONS
from part_a.train import OPTIONS

CNN_YAML = ROOT / "sweeps" / "cnn.yaml"


def test_yaml_metric_is_the_logged_key():
    sweep = yaml.safe_load(CNN_YAML.read_text())
    assert sweep["metric"] == {"name": METRIC, "goal": "maximize"}
    assert sweep["program"] == "part_a/train.py" and sweep["method"] == "bayes"
    assert sweep["early_terminate"]["type"] == "hyperband"
    required = {"filter_counts_strategy", "base_filters", "filter_size", "activation", "dense_neurons", "dropout_rate",
                "learning_rate", "weight_decay", "batch_norm", "batch_size", "augmentation"}
    assert required <= set(swept_names(sweep))
    assert set(sweep["parameters"]) <= set(OPTIONS)  # every parameter is a train.py flag
    assert sweep["parameters"]["learning_rate"]["distribution"] == "log_uniform_values"


def test_search_space_is_bounded():
    params = yaml.safe_load(CNN_YAML.read_text())["parameters"]
    model_keys = [k for k in params if k in MODEL_OPTIONS]
    choices = [params[k]["values"] if "values" in params[k] else [params[k]["value"]] for k in model_keys]
    worst = max(count_cnn(dict(zip(model_keys, combo)))["flops"] for combo in itertools.product(*choices))
    assert worst <= 15e9  # the bound the YAML's comment states (the default CNN: 0.39 GFLOPs)


@pytest.mark.parametrize("metric,expected", [({"name": "val_acc", "goal": "maximize"}, ("val_acc", True)),
                                             ({"name": "val_loss", "goal": "minimize"}, ("val_loss", False)),
                                             ({"name": "val_loss"}, ("val_loss", False))])  # W&B's default
def test_metric_goal(metric, expected):
    assert metric_goal({"metric": metric}) == expected


@pytest.mark.parametrize("module", ["runner", "report", "wandb_report"])
def test_sweep_tools_start_neither_torch_nor_matplotlib(module):
    code = (f"import sys, sweepcnn.sweep.{module}; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_agent_command_equals_wandb_agent():
    utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    sweep = load_sweep(CNN_YAML)
    params = {"batch_norm": False, "augmentation": True, "filter_counts": [8, 8, 16, 16, 32], "learning_rate": 3e-4,
              "data": "some folder", "dropout_rate": None}
    ours = agent_command(sweep, params, interpreter="python")
    # wandb_agent.Agent._command_run, for a program (not a function)
    variables = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    variables.update(interpreter=["python"], program=[sweep["program"]], env=["/usr/bin/env"])
    theirs = []
    for chunk in utils.create_sweep_command(sweep["command"]):
        chunk = str(chunk)
        theirs += variables.get(chunk[2:-1]) or [] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    assert ours == theirs


def test_agent_command_line_parses_back_to_the_sampled_config():
    sweeps = search_engine()
    sweep = load_sweep(CNN_YAML)
    for _ in range(20):
        run = sweeps.next_run({**sweep, "method": "random"}, [])
        params = {k: spec["value"] for k, spec in run.config.items()}
        params.update(augmentations=["hflip", "color_jitter"], filter_sizes=[3, 3, 5, 5, 7], patience=None)
        command = agent_command(sweep, params)
        assert command[:3] == ["/usr/bin/env", sys.executable, "part_a/train.py"]
        cfg, explicit = parse_args(command[3:], OPTIONS)
        assert explicit == set(params)
        for key, value in params.items():
            assert cfg[key] == pytest.approx(value) if isinstance(value, float) else cfg[key] == value, key


def test_sampled_command_trains_one_tiny_epoch(tmp_path):
    sweeps = search_engine()
    data = write_class_folders(tmp_path / "data", per_class=8)
    sweep = load_sweep(CNN_YAML, [f"data={data}", "epochs=1", "input_size=32", "batch_size=8"])
    run = sweeps.next_run({**sweep, "method": "random"}, [])
    params = {k: spec["value"] for k, spec in run.config.items()}
    params["out_dir"] = str(tmp_path / "runs")
    out = subprocess.run(agent_command(sweep, params), cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "WANDB_RUN_ID": "agentrun"})
    assert out.returncode == 0, out.stderr[-2000:]
    saved = yaml.safe_load((tmp_path / "runs" / "agentrun" / "config.yaml").read_text())
    assert {k: saved[k] for k in swept_names(sweep)} == {k: params[k] for k in swept_names(sweep)}
    assert METRIC in json.loads((tmp_path / "runs" / "agentrun" / "metrics.jsonl").read_text().splitlines()[0])


# ----------------------------------------------------------------------------------------------- offline runner
def tiny_sweep(tmp_path: Path, parameters: dict, method: str = "random", early_terminate: dict | None = None) -> Path:
    data = write_class_folders(tmp_path / "data", per_class=12)
    sweep = {"program": "part_a/train.py", "method": method, "metric": {"name": "val_acc", "goal": "maximize"},
             "command": ["${env}", "${interpreter}", "${program}", "${args}"],
             "parameters": {"data": {"value": str(data)}, "input_size": {"value": 32}, "epochs": {"value": 2},
                            "batch_size": {"value": 8}, "base_filters": {"value": 4}, "dense_neurons": {"value": 16},
                            **parameters}}
    if early_terminate:
        sweep["early_terminate"] = early_terminate
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep_cmd(path: Path, sweep_dir: Path, count: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweepcnn.sweep", str(path), "--count", str(count), "--sweep_dir", str(sweep_dir),
            "--poll", "0.2", *extra]


def read_trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_two_workers_record_every_trial_once_then_a_rerun_continues(tmp_path):
    path = tiny_sweep(tmp_path, {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-3, "max": 3e-2},
                                 "batch_norm": {"values": [True, False]}})
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(sweep_cmd(path, sweep_dir, 4, "--workers", "2"), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = read_trials(sweep_dir)
    assert len(trials) == 4 and len({t["run_id"] for t in trials}) == 4
    assert [t["state"] for t in trials] == ["finished"] * 4, out.stdout
    assert set(trials[0]) >= {"run_id", "state", "val_acc", "learning_rate", "batch_norm", "params", "flops"}
    for t in trials:  # each trial ran exactly once, in its own run folder, with the offline W&B record
        run_dir = sweep_dir / "runs" / t["run_id"]
        assert (run_dir / "output.log").read_text().count("run folder:") == 1
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
        assert float(t["val_acc"]) == max(json.loads(r)["val_acc"] for r in (run_dir / "metrics.jsonl").open())
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["learning_rate"] == pytest.approx(float(max(trials, key=lambda t: float(t["val_acc"]))
                                                       ["learning_rate"]))
    parse_args(["--config", str(sweep_dir / "best.yaml")], OPTIONS)  # usable as a train.py config

    again = subprocess.run(sweep_cmd(path, sweep_dir, 5), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = read_trials(sweep_dir)
    assert len(rerun) == 5 and [t["run_id"] for t in rerun[:4]] == [t["run_id"] for t in trials]


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    path = tiny_sweep(tmp_path, {"input_size": {"values": [16, 32]}}, method="grid")  # 16 < the CNN's minimum
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(sweep_cmd(path, sweep_dir, 3), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = read_trials(sweep_dir)
    assert sorted((t["input_size"], t["state"]) for t in trials) == [("16", "failed"), ("32", "finished")]
    assert "grid is exhausted" in out.stdout
    assert "smallest input size that works is 32" in (sweep_dir / "runs" / trials[0]["run_id"] / "output.log"
                                                      ).read_text() or trials[0]["input_size"] == "32"
    assert yaml.safe_load((sweep_dir / "best.yaml").read_text())["input_size"] == 32


def test_hyperband_stops_a_hopeless_trial(tmp_path):
    path = tiny_sweep(tmp_path, {"learning_rate": {"values": [0.02, 0.01, 1e-9]}, "epochs": {"value": 50},
                                 "scheduler": {"value": "none"}},
                      method="grid", early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2})
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(sweep_cmd(path, sweep_dir, 3), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = {float(t["learning_rate"]): t for t in read_trials(sweep_dir)}
    assert trials[1e-9]["state"] == "stopped", out.stdout
    assert int(trials[1e-9]["epochs_run"]) < 50
    assert trials[0.02]["state"] == trials[0.01]["state"] == "finished"
    assert float(trials[1e-9]["val_acc"]) < max(float(trials[0.02]["val_acc"]), float(trials[0.01]["val_acc"]))


def test_a_killed_worker_loses_nothing(tmp_path):
    path = tiny_sweep(tmp_path, {"learning_rate": {"values": [0.01, 0.02, 0.005]}, "epochs": {"value": 30}},
                      method="grid")
    sweep_dir = tmp_path / "sweep"
    worker = subprocess.Popen(sweep_cmd(path, sweep_dir, 3), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300  # generous: CI machines can be slow and busy
    while time.time() < deadline:  # wait until the first trial has finished an epoch
        state = json.loads((sweep_dir / "state.json").read_text()) if (sweep_dir / "state.json").exists() else {}
        trials = state.get("trials", [])
        if trials and (sweep_dir / "runs" / trials[0]["run_id"] / "metrics.jsonl").exists():
            break
        time.sleep(0.2)
    else:
        worker.kill()
        pytest.fail("the first trial never started:\n" + worker.communicate()[0])
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    first = trials[0]["run_id"]
    summary = sweep_dir / "runs" / first / "summary.json"
    deadline = time.time() + 120  # the orphaned trial gets SIGTERM (PDEATHSIG), saves and stops
    while time.time() < deadline and "interrupted" not in (summary.read_text() if summary.exists() else ""):
        time.sleep(0.2)
    assert "interrupted" in summary.read_text()

    out = subprocess.run(sweep_cmd(path, sweep_dir, 3), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = read_trials(sweep_dir)
    assert len(trials) == 3 and trials[0]["run_id"] == first
    assert [t["state"] for t in trials] == ["crashed", "finished", "finished"], out.stdout
    assert sorted(float(t["learning_rate"]) for t in trials) == [0.005, 0.01, 0.02]  # no grid point run twice


def test_folder_state_and_records(tmp_path):
    from sweepcnn.sweep.folder import SweepFolder, write_records

    sweep = {"program": "part_a/train.py", "metric": {"name": "val_acc", "goal": "maximize"},
             "parameters": {"epochs": {"value": 2}, "learning_rate": {"values": [0.1, 0.01]},
                            "filter_sizes": {"values": [[3, 5], [5, 3]]}}}
    folder = SweepFolder(tmp_path / "sweep", sweep)
    folder.create(Path("tiny.yaml"))
    assert yaml.safe_load((folder.root / "sweep.yaml").read_text()) == sweep
    written = (folder.root / "state.json").stat().st_mtime_ns
    with folder.locked() as state:  # read, not changed: not written again
        assert state["sweep"] == sweep and state["trials"] == []
    assert (folder.root / "state.json").stat().st_mtime_ns == written
    with folder.locked() as state:
        state["trials"] += [
            {"run_id": "a", "state": "finished", "metric": 0.5, "started": 0.0, "ended": 2.0,
             "params": {"epochs": 2, "learning_rate": 0.1, "filter_sizes": [3, 5]}},
            {"run_id": "b", "state": "stopped", "metric": 0.75, "started": 1.0, "ended": 4.5,
             "params": {"epochs": 2, "learning_rate": 0.01, "filter_sizes": [5, 3]}},
            {"run_id": "c", "state": "failed", "metric": None, "started": 2.0, "ended": 3.0,
             "params": {"epochs": 2, "learning_rate": 0.1, "filter_sizes": [5, 3]}}]
        for run_id in "ab":
            run = folder.runs / run_id
            run.mkdir()
            (run / "metrics.jsonl").write_text('{"epoch": 1, "val_acc": 0.25}\n{"epoch": 2, "val_acc": 0.5}\n')
            (run / "summary.json").write_text(json.dumps({"params": 100, "flops": 2e6, "test_acc": None}))
        write_records(folder, state)
    assert json.loads((folder.root / "state.json").read_text())["trials"][1]["run_id"] == "b"
    assert (folder.root / "trials.csv").read_text().splitlines() == [
        "trial,run_id,state,val_acc,epochs_run,params,flops,test_acc,seconds,learning_rate,filter_sizes",
        '1,a,finished,0.5,2,100,2000000.0,,2.0,0.1,"[3, 5]"',
        '2,b,stopped,0.75,2,100,2000000.0,,3.5,0.01,"[5, 3]"',
        '3,c,failed,,0,,,,1.0,0.1,"[5, 3]"']
    best = (folder.root / "best.yaml").read_text()
    assert best.startswith(f"# best trial of {folder.root}: run b (stopped), val_acc = 0.75\n")
    assert yaml.safe_load(best) == {"epochs": 2, "learning_rate": 0.01, "filter_sizes": [5, 3]}
    assert sorted(p.name for p in folder.root.iterdir()) == ["best.yaml", "lock", "runs", "state.json",
                                                              "sweep.yaml", "trials.csv"]  # no temporary file left
    (tmp_path / "plain").write_text("")  # atomic writes create files as open() does (not mkstemp's 0600)
    modes = {(folder.root / name).stat().st_mode & 0o777 for name in ("best.yaml", "state.json", "trials.csv")}
    assert modes == {(tmp_path / "plain").stat().st_mode & 0o777}
    with pytest.raises(UserError, match="holds a different sweep"):
        SweepFolder(folder.root, {**sweep, "method": "grid"}).create(Path("other.yaml"))


def test_lost_trials_are_told_from_live_ones():
    import socket

    from sweepcnn.sweep.folder import STALE_SECONDS, process_start, reap_lost_trials

    now = time.time()
    me = {"host": socket.gethostname(), "worker_pid": os.getpid(), "worker_start": process_start(os.getpid()),
          "heartbeat": now, "state": "running"}
    state = {"trials": [
        {**me, "run_id": "alive"},
        {**me, "run_id": "pid_reused", "worker_start": "1"},  # same pid, a different process: the worker is gone
        {**me, "run_id": "other_host", "host": "elsewhere", "heartbeat": now - 10},
        {**me, "run_id": "other_host_silent", "host": "elsewhere", "heartbeat": now - STALE_SECONDS - 1},
        {**me, "run_id": "done", "state": "finished"},
    ]}
    lost = reap_lost_trials(state, now)
    assert [t["run_id"] for t in lost] == ["pid_reused", "other_host_silent"]
    assert [t["state"] for t in state["trials"]] == ["running", "crashed", "running", "crashed", "finished"]


def test_one_of_three_workers_killed_then_all_killed_and_restarted(tmp_path):
    rates = [0.01, 0.02, 0.005, 0.03, 0.015, 0.008]
    path = tiny_sweep(tmp_path, {"learning_rate": {"values": rates}, "epochs": {"value": 40}}, method="grid")
    sweep_dir = tmp_path / "sweep"
    main = subprocess.Popen(sweep_cmd(path, sweep_dir, 6, "--workers", "3"), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def trials() -> list[dict]:
        state = sweep_dir / "state.json"
        return json.loads(state.read_text())["trials"] if state.exists() else []

    def wait(condition, what: str) -> None:
        deadline = time.time() + 300
        while not condition():
            if time.time() > deadline:
                os.killpg(main.pid, signal.SIGKILL)
                pytest.fail(f"timed out waiting for {what}: {trials()}")
            time.sleep(0.1)

    wait(lambda: len({t["worker_pid"] for t in trials() if t["state"] == "running"}) == 3, "three running trials")
    victim = next(t for t in trials() if t["state"] == "running")
    os.kill(victim["worker_pid"], signal.SIGKILL)  # one worker dies mid-trial; the other two go on
    wait(lambda: len(trials()) >= 4, "the other workers to claim more trials")
    os.killpg(main.pid, signal.SIGKILL)  # then every process of the sweep, trials included
    main.wait()

    out = subprocess.run(sweep_cmd(path, sweep_dir, 6), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_trials(sweep_dir)
    assert len(rows) == 6 and len({r["run_id"] for r in rows}) == 6
    assert sorted(float(r["learning_rate"]) for r in rows) == sorted(rates)  # every grid point once, none lost
    states = {r["run_id"]: r["state"] for r in rows}
    assert states[victim["run_id"]] == "crashed"
    assert set(states.values()) <= {"crashed", "finished"} and "finished" in states.values()
