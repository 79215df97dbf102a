import csv
import itertools
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

from sweepcnn.tracking import read_history
from tests.helpers import ROOT, write_class_folders
from sweepcnn.config import parse_args
from sweepcnn.errors import UserError
from sweepcnn.options import METRIC
from sweepcnn.sweep.spec import agent_command, load_sweep, metric_goal, search_engine, swept_names
from part_a.counting import count_cnn
from part_a.cnn_config import MODEL_OPTIONS
from part_a.train import OPTIONS

CNN_YAML = ROOT / "sweeps" / "cnn.yaml"
STAND_IN = Path(__file__).parent / "stand_in.py"


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


@pytest.mark.parametrize("yaml_file", sorted(p.name for p in (ROOT / "sweeps").glob("*.yaml")))
def test_every_file_a_sweep_yaml_names_exists(yaml_file):
    text = (ROOT / "sweeps" / yaml_file).read_text()
    named = re.findall(r"\b(?:tests|part_a|part_b|sweepcnn|sweeps|docs)/[\w/.-]*\w\.(?:py|md|yaml)\b", text)
    assert [path for path in named if not (ROOT / path).is_file()] == []


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


@pytest.mark.parametrize("yaml_file", ["cnn.yaml", "cnn_tricks.yaml"])
def test_agent_command_line_parses_back_to_the_sampled_config(yaml_file):
    sweeps = search_engine()
    sweep = load_sweep(ROOT / "sweeps" / yaml_file)
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


@pytest.mark.slow
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
    assert METRIC in read_history(tmp_path / "runs" / "agentrun")[0]


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


def best_params(sweep_dir: Path) -> dict:
    """best.yaml's trial parameters (without the W&B keys that link the retrained run to its sweep)."""
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    return {k: v for k, v in best.items() if k not in ("wandb_group", "wandb_tags")}


def sweep_cmd(path: Path, sweep_dir: Path, count: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweepcnn.sweep", str(path), "--count", str(count), "--sweep_dir", str(sweep_dir),
            "--poll", "0.2", *extra]


def read_trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


def state_trials(sweep_dir: Path) -> list[dict]:
    state = sweep_dir / "state.json"
    return json.loads(state.read_text())["trials"] if state.exists() else []


def assert_resumed(sweep_dir: Path, run_id: str, epochs: int, started: bool = True) -> None:
    """The trial was relaunched under its run id and every epoch trained once; if it had `started` (written its
    config), its run folder was continued with --resume."""
    trial = next(t for t in state_trials(sweep_dir) if t["run_id"] == run_id)
    assert trial.get("resumes", 0) >= 1, trial
    run_dir = sweep_dir / "runs" / run_id
    assert (f"--resume=True --run_name={run_id}" in (run_dir / "command.txt").read_text()) or not started
    assert [json.loads(row)["epoch"] for row in (run_dir / "metrics.jsonl").open()] == list(range(1, epochs + 1))


def alive(pid: int | None) -> bool:
    return pid is not None and Path(f"/proc/{pid}").exists() and \
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.time() + timeout  # generous: CI machines can be slow and busy
    while not condition():
        if time.time() > deadline:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
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
    assert (best["wandb_group"], best["wandb_tags"]) == (f"sweep-{sweep_dir.name}", ["retrained"])
    assert best["learning_rate"] == pytest.approx(float(max(trials, key=lambda t: float(t["val_acc"]))
                                                       ["learning_rate"]))
    parse_args(["--config", str(sweep_dir / "best.yaml")], OPTIONS)  # usable as a train.py config

    again = subprocess.run(sweep_cmd(path, sweep_dir, 5), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = read_trials(sweep_dir)
    assert len(rerun) == 5 and [t["run_id"] for t in rerun[:4]] == [t["run_id"] for t in trials]


def stand_in_sweep(tmp_path: Path, parameters: dict, method: str = "grid", **extra) -> Path:
    """A sweep of tests/sweepcnn/sweep/stand_in.py, a program that trains nothing (fast)."""
    sweep = {"program": str(STAND_IN), "method": method, "metric": {"name": "val_acc", "goal": "maximize"},
             "parameters": parameters, **extra}
    path = tmp_path / "stand_in.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    path = stand_in_sweep(tmp_path, {"fail": {"values": ["crash", "none"]}})
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(sweep_cmd(path, sweep_dir, 3), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = read_trials(sweep_dir)
    assert sorted((t["fail"], t["state"]) for t in trials) == [("crash", "failed"), ("none", "finished")]
    assert "grid is exhausted" in out.stdout
    assert yaml.safe_load((sweep_dir / "best.yaml").read_text())["fail"] == "none"


@pytest.mark.slow
def test_a_parameter_the_program_refuses_stops_the_sweep_with_its_error(tmp_path):
    path = tiny_sweep(tmp_path, {"input_size": {"values": [8, 16]}})  # below the CNN's minimum (32): refused
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(sweep_cmd(path, sweep_dir, 4, "--workers", "2"), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "was refused by part_a/train.py (error: " in out.stderr and "is too small" in out.stderr
    trials = read_trials(sweep_dir)
    assert 1 <= len(trials) <= 2 and {t["state"] for t in trials} == {"failed"}  # no trial claimed after it


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert f"trial {first}: interrupted (its worker is gone)" in out.stdout
    assert [t["state"] for t in trials] == ["finished"] * 3, out.stdout  # the lost trial was resumed
    assert_resumed(sweep_dir, first, epochs=30)
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
    assert yaml.safe_load(best) == {"epochs": 2, "learning_rate": 0.01, "filter_sizes": [5, 3],
                                    "wandb_group": "sweep-sweep", "wandb_tags": ["retrained"]}
    assert sorted(p.name for p in folder.root.iterdir()) == ["best.yaml", "lock", "runs", "state.json",
                                                              "sweep.yaml", "trials.csv"]  # no temporary file left
    (tmp_path / "plain").write_text("")  # atomic writes create files as open() does (not mkstemp's 0600)
    modes = {(folder.root / name).stat().st_mode & 0o777 for name in ("best.yaml", "state.json", "trials.csv")}
    assert modes == {(tmp_path / "plain").stat().st_mode & 0o777}
    with pytest.raises(UserError, match="holds a different sweep"):
        SweepFolder(folder.root, {**sweep, "method": "grid"}).create(Path("other.yaml"))


def test_lost_trials_are_told_from_live_ones(tmp_path):
    import socket

    from sweepcnn.sweep.folder import STALE_SECONDS, SweepFolder, process_start, reap_lost_trials

    now = time.time()
    me = {"host": socket.gethostname(), "worker_pid": os.getpid(), "worker_start": process_start(os.getpid()),
          "heartbeat": now, "state": "running"}
    state = {"trials": [
        {**me, "run_id": "alive"},
        {**me, "run_id": "pid_reused", "worker_start": "1"},  # same pid, a different process: the worker is gone
        {**me, "run_id": "other_host", "host": "elsewhere", "heartbeat": now - 10},
        {**me, "run_id": "other_host_silent", "host": "elsewhere", "heartbeat": now - STALE_SECONDS - 1},
        {**me, "run_id": "done", "state": "finished"},
        {**me, "run_id": "ended_alone", "worker_start": "1"},  # its run finished as its worker died
    ]}
    folder = SweepFolder(tmp_path, {"metric": {"name": "val_acc", "goal": "maximize"}})
    (folder.runs / "ended_alone").mkdir(parents=True)
    (folder.runs / "ended_alone" / "summary.json").write_text('{"status": "finished"}')
    lost = reap_lost_trials(folder, state, now)
    assert [t["run_id"] for t in lost] == ["pid_reused", "other_host_silent", "ended_alone"]
    # this host's lost trial is resumable; another host's may still train, so it is never resumed
    assert [t["state"] for t in state["trials"]] == ["running", "interrupted", "running", "crashed", "finished",
                                                      "finished"]


def test_a_process_start_is_when_the_process_started():
    from sweepcnn.sweep.folder import process_start

    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = boot + int(process_start(child.pid)) / os.sysconf("SC_CLK_TCK")
    finally:
        child.kill()
        child.wait()
    assert before - 2 <= started <= time.time() + 2  # btime is in whole seconds


@pytest.mark.slow
def test_one_of_three_workers_killed_then_all_killed_and_restarted(tmp_path):
    rates = [0.01, 0.02, 0.005, 0.03, 0.015, 0.008]
    path = tiny_sweep(tmp_path, {"learning_rate": {"values": rates}, "epochs": {"value": 25}}, method="grid")
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
    assert {r["state"] for r in rows} == {"finished"}  # the victim's trial and the killed ones were resumed
    assert_resumed(sweep_dir, victim["run_id"], epochs=25, started=False)  # it may have died starting up


# ----------------------------------------------------------------------------------------------- Ctrl-C, kill -9
def _trained_an_epoch(sweep_dir: Path) -> bool:
    running = [t for t in state_trials(sweep_dir) if t["state"] == "running"]
    return bool(running) and all((sweep_dir / "runs" / t["run_id"] / "metrics.jsonl").exists() for t in running)


@pytest.mark.slow
@pytest.mark.parametrize("method,workers", [("grid", 2), ("random", 1), ("bayes", 1)])
def test_ctrl_c_saves_the_trials_and_a_rerun_resumes_them(tmp_path, method, workers):
    if method == "grid":
        space = {"learning_rate": {"values": [0.01, 0.02, 0.005]}}
    else:
        space = {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-3, "max": 3e-2}}
    count = 3 if method == "grid" else 2
    path = tiny_sweep(tmp_path, {**space, "epochs": {"value": 20}}, method=method)
    sweep_dir = tmp_path / "sweep"
    command = sweep_cmd(path, sweep_dir, count, "--workers", str(workers))
    # its own process group, as a terminal's foreground job: Ctrl-C sends SIGINT to all of it
    main = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: _trained_an_epoch(sweep_dir), "every running trial to finish an epoch", main)
    os.killpg(main.pid, signal.SIGINT)
    sent = time.time()
    out, err = main.communicate(timeout=120)
    assert main.returncode == 130, err
    assert time.time() - sent < 40, "the sweep did not stop promptly"
    assert "Traceback" not in out + err and "run the same command again" in err
    before = state_trials(sweep_dir)
    interrupted = [t for t in before if t["state"] == "interrupted"]
    assert interrupted and {t["state"] for t in before} <= {"finished", "interrupted"}, before
    assert not any(alive(t.get("pid")) for t in before)  # no trial trains on in the background
    for t in interrupted:
        assert json.loads((sweep_dir / "runs" / t["run_id"] / "summary.json").read_text())["status"] == \
            "interrupted (SIGINT)"
    if (sweep_dir / "best.yaml").exists():  # only ever a finished trial's
        assert any(t["state"] == "finished" and t["params"] == best_params(sweep_dir) for t in before)

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    after = state_trials(sweep_dir)
    assert len(after) == count and [t["state"] for t in after] == ["finished"] * count, again.stdout
    for t in interrupted:  # resumed with the same run id and parameters
        assert next(a for a in after if a["run_id"] == t["run_id"])["params"] == t["params"]
        assert_resumed(sweep_dir, t["run_id"], epochs=20)
    if method == "grid":
        assert sorted(t["params"]["learning_rate"] for t in after) == [0.005, 0.01, 0.02]
    best = max(after, key=lambda t: t["metric"])
    assert best_params(sweep_dir) == best["params"]


@pytest.mark.slow
def test_a_killed_coordinator_leaves_no_training_process(tmp_path):
    path = tiny_sweep(tmp_path, {"learning_rate": {"values": [0.01, 0.02]}, "epochs": {"value": 20}}, method="grid")
    sweep_dir = tmp_path / "sweep"
    main = subprocess.Popen(sweep_cmd(path, sweep_dir, 2, "--workers", "2"), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len([t for t in state_trials(sweep_dir) if t.get("pid")]) == 2, "two trial processes", main)
    trials = state_trials(sweep_dir)
    pids = [t["pid"] for t in trials] + [t["worker_pid"] for t in trials]
    assert all(alive(pid) for pid in pids)
    main.kill()  # kill -9 of the coordinator alone: its workers and their trials must not train on
    main.wait()
    wait_for(lambda: not any(alive(pid) for pid in pids), "the workers and trials to end", timeout=90)
    assert {t["state"] for t in state_trials(sweep_dir)} <= {"interrupted", "finished"}

    out = subprocess.run(sweep_cmd(path, sweep_dir, 2), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [t["state"] for t in state_trials(sweep_dir)] == ["finished", "finished"]


# ----------------------------------------------------------------------------------------------- metric, hyperband
@pytest.mark.slow
def test_a_metric_no_trial_logs_is_warned_about_once(tmp_path):
    path = tiny_sweep(tmp_path, {"learning_rate": {"values": [0.01, 0.02]}, "epochs": {"value": 1}}, method="grid")
    sweep = yaml.safe_load(path.read_text())
    sweep["metric"]["name"] = "val_accuracy"  # train.py logs val_acc
    path.write_text(yaml.safe_dump(sweep))
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(sweep_cmd(path, sweep_dir, 2), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, out.stderr
    first = state_trials(sweep_dir)[0]["run_id"]
    assert f"trial {first} finished without logging the sweep's metric 'val_accuracy'" in warnings[0]
    logged = warnings[0].split("the trial logged: ")[1].split(", ")
    assert {"val_acc", "val_loss", "train_loss"} <= set(logged)
    assert not (sweep_dir / "best.yaml").exists()


def _band_of_stop(tmp_path, early_terminate: dict) -> int | None:
    """The epoch at which hyperband stops a trial that starts well then falls to chance, beside two finished ones
    (eta 2, min_iter 1: bands at epochs 1, 2, 4, 8)."""
    from sweepcnn.sweep.folder import SweepFolder
    from sweepcnn.sweep.suggest import should_stop

    sweep = {"program": "part_a/train.py", "method": "grid", "metric": {"name": "val_acc", "goal": "maximize"},
             "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2, **early_terminate},
             "parameters": {"learning_rate": {"values": [0.1, 0.01, 0.001]}}}
    folder = SweepFolder(tmp_path / f"sweep-{len(list(tmp_path.iterdir()))}", sweep)
    folder.create(Path("tiny.yaml"))
    curves = {"a": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.9, 0.9], "b": [0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.8, 0.8],
              "c": [0.55] + [0.3] * 7}
    trials = [{"run_id": run_id, "state": "finished" if run_id != "c" else "running", "metric": None,
               "params": {"learning_rate": lr}} for run_id, lr in zip(curves, (0.1, 0.01, 0.001))]
    for run_id in "ab":
        (folder.runs / run_id).mkdir()
        (folder.runs / run_id / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "val_acc": v}) + "\n" for e, v in enumerate(curves[run_id], 1)))
    (folder.runs / "c").mkdir()
    for epoch, value in enumerate(curves["c"], 1):
        with open(folder.runs / "c" / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, "val_acc": value}) + "\n")
        if should_stop(folder, trials, "c"):
            return epoch
    return None


def test_hyperband_stops_at_the_band_the_wandb_server_does(tmp_path):
    # Band 2: c's val_acc there (0.3) is outside the top half of a, b, c (0.6, 0.5, 0.3): the strict rule, the
    # server's default, stops it. The conservative rule compares its best so far (0.55) and stops it only at band 4
    # (0.8, 0.7, 0.3 there), one band later; sweeps 0.2.0 compared one epoch late and stopped it at epoch 3.
    assert _band_of_stop(tmp_path, {}) == 2
    assert _band_of_stop(tmp_path, {"strict": True}) == 2
    assert _band_of_stop(tmp_path, {"strict": False}) == 4
    path = tiny_sweep(tmp_path, {}, early_terminate={"type": "hyperband", "min_iter": 1, "strict": False})
    assert load_sweep(path)["early_terminate"]["strict"] is False  # the engine's schema accepts it


@pytest.mark.parametrize("flag", ["--workers=0", "--count=0"])
def test_zero_workers_or_trials_is_refused_before_the_folder_is_made(tmp_path, flag):
    proc = subprocess.run([sys.executable, "-m", "sweepcnn.sweep", "sweeps/cnn.yaml", "--count=1", flag,
                           "--sweep_dir", str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()
