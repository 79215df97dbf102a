"""Training under torchrun with 2 processes on CPU (gloo), against one process: sweepcnn.distributed and
sweepcnn.data.shards. The unit tests at the top run in this process; the rest start processes (slow)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sweepcnn.data.augment import Augment
from sweepcnn.data.datasets import ImageSet
from sweepcnn.data.shards import Shard, ShardSampler, TrainShards, batch_positions, split_part
from sweepcnn.tracking import read_history
from sweepcnn.train.mixing import Mixer
from tests.helpers import ROOT, train
from tests.wandb_records import finished_records, offline_runs

# The CNN of tests.helpers.FAST without dropout (each rank draws its own dropout masks: not the masks of one
# process), at a learning rate that learns digits in 2 epochs.
BASE = ["--data=digits", "--input_size=32", "--base_filters=8", "--dense_neurons=32", "--batch_size=64",
        "--dropout_rate=0", "--learning_rate=0.01", "--deterministic", "--amp=off", "--report=false"]
# Without BatchNorm, 2 ranks differ from one process by the order of a few sums only: 1e-6 to 1e-4 after an epoch, which
# Adam (a step of about the learning rate for gradients of any size) grows by the second epoch: to about 1e-3 in the
# loss at a learning rate of 0.003, and to 0.014 at 0.01 on the 2-core AMD EPYC (too chaotic a run to compare).
STRICT = [*BASE, "--batch_norm=false", "--scheduler=none", "--learning_rate=0.003"]  # none: the same steps when --epochs grows on --resume
# With BatchNorm, this CNN on digits (upsampled 8 x 8 images: near-constant channels) amplifies float rounding:
# one process differs from itself by up to 0.06 val_acc after 2 epochs when only --channels_last changes the
# summation order (docs/training.md); 2 ranks, whose BatchNorm gradients equal one process's to 1e-5
# (test_synchronised_batchnorm_...), stay within the same band.
# Largest |train_loss|, |val_loss| and |val_acc, test_acc| differences. Without BatchNorm this CNN is still near
# chance after 2 epochs: its logits are near ties, so the rounding differences flip the argmax of a dozen images.
TOLERANCES = {"strict": (0.01, 0.05, 0.1), "batchnorm": (0.05, 0.1, 0.1)}
TIMING = ("epoch_seconds", "images_per_sec")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


def torchrun(*args: str, script: str = "part_a/train.py", env: dict | None = None, check: bool = True,
             ) -> subprocess.CompletedProcess:
    proc = subprocess.run(torchrun_command(script, *args), cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def torchrun_command(script: str, *args: str) -> list[str]:
    return [*TORCHRUN, script, *args]


def history(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_history(run)]


def assert_close_runs(one: Path, two: Path, tolerance: str = "strict") -> None:
    loss, val_loss, acc = TOLERANCES[tolerance]
    rows_one, rows_two = history(one), history(two)
    assert [r["epoch"] for r in rows_one] == [r["epoch"] for r in rows_two]
    if tolerance == "strict":  # before Adam has grown the rounding differences
        assert abs(rows_one[0]["train_loss"] - rows_two[0]["train_loss"]) <= 1e-3, (rows_one[0], rows_two[0])
    for a, b in zip(rows_one, rows_two):
        assert abs(a["train_loss"] - b["train_loss"]) <= loss, (a, b)
        assert abs(a["val_loss"] - b["val_loss"]) <= val_loss, (a, b)
        assert abs(a["val_acc"] - b["val_acc"]) <= acc, (a, b)
    tests = [json.loads((run / "summary.json").read_text()).get("test_acc") for run in (one, two)]
    assert None in tests or abs(tests[0] - tests[1]) <= acc, tests


# --- in this process ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_shards_of_a_batch_hold_each_sample_once_and_partners_mirror_the_global_batch(world):
    for total in range(0, 70):
        own = [batch_positions(total, r, world, False) for r in range(world)]
        assert sorted(p for part in own for p in part) == list(range(total))
        for rank in range(world):
            paired = batch_positions(total, rank, world, True)
            half = len(paired) // 2
            assert paired[:half] == own[rank] and paired[half:] == [total - 1 - p for p in own[rank]]


def test_the_loader_cuts_each_global_batch_into_the_shard_the_training_step_takes():
    class Reversed(TrainShards):  # any cut: the loader must follow the one TrainShards gives
        def __call__(self, batch: int) -> Shard:
            shard = super().__call__(batch)
            return Shard(shard.positions[::-1], shard.total, shard.size)

    shards = Reversed(10, 4, 1, 2, True)
    batches = [[9, 3, 0, 5], [1, 8, 2, 7], [6, 4]]
    assert list(ShardSampler(batches, shards)) == [[b[p] for p in shards(i).positions] for i, b in enumerate(batches)]


def test_evaluation_slices_hold_each_image_once():
    images = ImageSet(np.zeros((7, 1, 2, 2), np.uint8), np.arange(7), np.arange(7) % 3, [str(i) for i in range(7)])
    parts = [split_part(images, r, 2) for r in range(2)]
    assert [n for part in parts for n in part.names] == images.names


@pytest.mark.parametrize("partners", [False, True])
def test_each_rank_augments_its_shard_as_the_whole_batch_is_augmented(partners):
    augment = Augment(["hflip", "rotate", "random_resized_crop", "color_jitter", "gaussian_blur", "autoaugment"], 3)
    batch = torch.randint(0, 256, (9, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = torch.full((3,), 120.0), torch.full((3,), 60.0)
    whole = augment.normalized(batch, torch.Generator().manual_seed(5), mean, std)
    shards = TrainShards(9, 9, 0, 2, partners)
    for rank in range(2):
        shards.rank = rank
        shard = shards(0)
        part = augment.normalized(batch[shard.positions], torch.Generator().manual_seed(5), mean, std, shard)
        torch.testing.assert_close(part, whole[shard.positions], rtol=0, atol=1e-4)


def test_mixing_a_shard_with_its_partners_mixes_as_one_process():
    images, labels = torch.randn(7, 3, 8, 8), torch.arange(7) % 4
    for cutmix in (0.0, 1.0):
        whole = Mixer(0.4, cutmix, 1.0, 0.5, 4)
        whole.reseed(3)
        mixed, targets = whole(images, labels)
        for rank in range(2):
            shard = Shard(batch_positions(7, rank, 2, True), 7, 0)
            shard.size = len(shard.positions) // 2
            own, other = shard.positions[:shard.size], shard.positions[shard.size:]
            mixer = Mixer(0.4, cutmix, 1.0, 0.5, 4)
            mixer.reseed(3)
            part, part_targets = mixer(images[own], labels[own], (images[other], labels[other]))
            torch.testing.assert_close(part, mixed[own])
            torch.testing.assert_close(part_targets, targets[own])


def test_one_process_starts_no_process_group_and_signals_raise_at_once(tmp_path):
    from sweepcnn.runtime import Interrupted, collective_signals, install_signal_handlers, pending_signal

    train(*BASE, "--epochs=1", f"--out_dir={tmp_path}", "--run_name=r")
    assert not torch.distributed.is_initialized()
    install_signal_handlers()
    try:
        collective_signals(True)  # several ranks: recorded, raised when all agree
        os.kill(os.getpid(), signal.SIGUSR1)
        assert pending_signal() == signal.SIGUSR1
        with pytest.raises(Interrupted):
            collective_signals(False)
        with pytest.raises(Interrupted):  # one process: at once
            install_signal_handlers()
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)
    finally:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(s, signal.SIG_DFL if s != signal.SIGINT else signal.default_int_handler)


def _evaluate_rank(rank: int, init: str, out: str) -> None:
    """One of 2 gloo ranks: synchronised BatchNorm on a shard, and evaluation of a 179-image split's slice."""
    import torch.distributed as dist
    from torch import nn

    from sweepcnn import distributed
    from sweepcnn.data.datasets import make_loader
    from sweepcnn.train.engine import Batches, evaluate

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    distributed.prepare_model(model, {"sync_bn": True}, torch.device("cpu"))
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    mine = x[:4] if rank == 0 else x[4:7]  # unequal shards of a global batch of 7
    model.train()
    model(mine).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    for g in grads:
        dist.all_reduce(g)
    pixels = torch.randint(0, 256, (179, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    split = ImageSet(pixels.numpy(), np.arange(179), (np.arange(179) % 3), [str(i) for i in range(179)])
    loader = make_loader(split_part(split, rank, 2), 16, False, {"balanced_sampler": False, "num_workers": 0},
                         torch.Generator(), False)
    scores = evaluate(model, loader, Batches([0.5], [0.25], torch.device("cpu"), False), None)
    if rank == 0:
        torch.save({"grads": grads, "running_mean": model[1].running_mean, "scores": scores}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_synchronised_batchnorm_and_evaluation_across_2_ranks_equal_one_process(tmp_path):
    from torch import nn

    from sweepcnn.data.datasets import make_loader
    from sweepcnn.train.engine import Batches, evaluate

    init, out = f"file://{tmp_path / 'init'}", tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(_evaluate_rank, args=(init, str(out)), nprocs=2)
    got = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model.train()
    model(x[:7]).sum().backward()  # the global batch: the ranks' shards together
    for mine, expected in zip(got["grads"], [p.grad for p in model.parameters()]):
        torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["running_mean"], model[1].running_mean)
    pixels = torch.randint(0, 256, (179, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    split = ImageSet(pixels.numpy(), np.arange(179), (np.arange(179) % 3), [str(i) for i in range(179)])
    loader = make_loader(split, 32, False, {"balanced_sampler": False, "num_workers": 0}, torch.Generator(), False)
    scores = evaluate(model, loader, Batches([0.5], [0.25], torch.device("cpu"), False), None)
    assert got["scores"]["count"] == scores["count"] == 179  # every image once, none padded
    assert got["scores"]["acc"] == pytest.approx(scores["acc"])
    assert got["scores"]["loss"] == pytest.approx(scores["loss"])


# --- under torchrun ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_ranks_with_the_global_batch_train_as_one_process_and_only_rank_0_writes(tmp_path):
    env = {"WANDB_MODE": "offline"}
    for name, args in (("strict", STRICT), ("batchnorm", BASE)):
        args = [*args, "--epochs=2", "--test", f"--out_dir={tmp_path / name}"]
        train(*args, "--run_name=one", env=env)
        torchrun(*args, "--run_name=two", env=env)
        one, two = tmp_path / name / "one", tmp_path / name / "two"
        assert_close_runs(one, two, name)
        files = [sorted(str(p.relative_to(run)) for p in run.iterdir()) for run in (one, two)]
        assert files[0] == files[1] and len(offline_runs(two)) == 1  # rank 1 wrote nothing, started no W&B run
        for checkpoint in ("best.pt", "last.pt"):  # no DDP `module.` prefix
            keys = [list(torch.load(run / checkpoint, weights_only=True)["model"]) for run in (one, two)]
            assert keys[0] == keys[1]
    # another world size resumes a run: 1 epoch on 2 ranks, the second in one process
    # (seeded by the first run's config.yaml: the note on the keys it drops is printed once, by rank 0)
    out = f"--out_dir={tmp_path / 'strict'}"
    seeded = torchrun("--config", str(tmp_path / "strict" / "one" / "config.yaml"), "--epochs=1", "--test", out,
                      "--run_name=mixed")
    assert seeded.stderr.count("is a run folder's config") == 1, seeded.stderr
    train(out, "--run_name=mixed", "--resume", "--epochs=2")
    assert_close_runs(tmp_path / "strict" / "one", tmp_path / "strict" / "mixed")


@pytest.mark.slow
def test_two_ranks_augment_and_mix_the_global_batch_as_one_process(tmp_path):
    args = [*STRICT, "--epochs=2", "--augmentation", "--mixup=0.4", "--cutmix=1.0", "--balanced_sampler",
            f"--out_dir={tmp_path}"]
    train(*args, "--run_name=one")
    torchrun(*args, "--run_name=two")
    assert_close_runs(tmp_path / "one", tmp_path / "two")


def _agent_env(tmp_path: Path, run_id: str) -> dict:
    """`wandb agent`'s environment for a trial whose YAML command has no ${args}: the parameters come from the file
    alone, read by rank 0."""
    params = tmp_path / f"{run_id}-params.yaml"
    params.write_text(yaml.safe_dump({"base_filters": {"value": 8}, "learning_rate": {"value": 0.01},
                                      "dropout_rate": {"value": 0.0}}))
    return {"WANDB_SWEEP_ID": "sweep123", "WANDB_RUN_ID": run_id, "WANDB_SWEEP_PARAM_PATH": str(params),
            "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
            "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}


def _signal_torchrun_after(args: list[str], epochs: int, signum: int, env: dict, run: Path) -> subprocess.Popen:
    from tests.sweepcnn.train.test_run_folder import interrupt_after

    assert run.name == env["WANDB_RUN_ID"]
    return interrupt_after(args, epochs, signum, env, TORCHRUN)


def _exit_codes(run: Path) -> list[int]:
    return [r.exit.exit_code for path in offline_runs(run) for r in finished_records(path)
            if r.WhichOneof("record_type") == "exit"]


@pytest.mark.slow
def test_a_sweep_trial_on_2_ranks_stops_and_is_preempted_as_one_process(tmp_path):
    from tests.sweepcnn.train.test_resume import snapshot
    from tests.wandb_records import history_and_summary

    args = [f"--out_dir={tmp_path}", "--input_size=32", "--dense_neurons=32", "--batch_size=64", "--epochs=50"]
    env = _agent_env(tmp_path, "agent001")
    run = tmp_path / "agent001"
    _signal_torchrun_after(args, 2, signal.SIGTERM, env, run)  # torchrun forwards the agent's stop to both ranks
    summary = json.loads((run / "summary.json").read_text())
    saved = torch.load(run / "last.pt", weights_only=True)["progress"]["epoch"]
    best = max(read_history(run)[:saved], key=lambda row: row["val_acc"])
    assert summary["status"] == "stopped" and saved >= 2 and summary["val_acc"] == best["val_acc"]
    assert yaml.safe_load((run / "config.yaml").read_text())["dropout_rate"] == 0.0  # the sweep's, from rank 0
    _, wandb_summary, _ = history_and_summary(run)
    assert _exit_codes(run) == [0] and wandb_summary["val_acc"] == best["val_acc"]
    before = snapshot(run)
    torchrun(*args, env=env)  # the controller's stop is final
    assert snapshot(run) == before

    run = tmp_path / "agent002"
    env = _agent_env(tmp_path, "agent002")
    _signal_torchrun_after(args, 1, signal.SIGUSR1, env, run)  # preemption (SLURM --signal=USR1@90)
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    assert _exit_codes(run) == [128 + signal.SIGUSR1]
    saved = torch.load(run / "last.pt", weights_only=True)["progress"]["epoch"]
    torchrun(*args[:-1], f"--epochs={saved + 1}", env=env)  # W&B requeues it: the same run id resumes
    assert [row["epoch"] for row in read_history(run)] == list(range(1, saved + 2))
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def _workers(parent: int) -> list[int]:
    """The processes torchrun started (its children), from /proc."""
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


@pytest.mark.slow
def test_a_rank_killed_mid_epoch_takes_the_job_down_and_resume_is_exact(tmp_path):
    args = [*BASE, "--epochs=3", "--augmentation", "--mixup=0.4", f"--out_dir={tmp_path}"]
    torchrun(*args, "--run_name=whole")
    run = tmp_path / "killed"
    proc = subprocess.Popen(torchrun_command("part_a/train.py", *args, "--run_name=killed"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while len(read_history(run)) < 1 or not (run / "last.pt").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(_workers(proc.pid)[1], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun ends the other rank and fails
    torchrun(*args, "--run_name=killed", "--resume")
    assert history(tmp_path / "whole") == history(run)


@pytest.mark.slow
def test_without_sync_bn_a_last_batch_that_leaves_a_rank_one_image_is_dropped(tmp_path):
    """ResNet-18 at 32 px ends in 1 x 1 maps: BatchNorm cannot train on one image there. 240 images at --batch_size
    14 end with a batch of 2, which 2 ranks normalising their own shards would each see as 1."""
    args = ["--model=resnet18", "--weights=none", "--strategy=none", "--input_size=32", "--data=digits",
            "--max_images_per_class=30", "--batch_size=14", "--sync_bn=false", "--epochs=1", "--amp=off",
            "--report=false", f"--out_dir={tmp_path}", "--run_name=r"]
    proc = torchrun(*args, script="part_b/finetune.py")
    assert proc.stderr.count("leave a last batch of 2 images") == 1, proc.stderr  # the note, from rank 0
    assert [row["epoch"] for row in read_history(tmp_path / "r")] == [1]


@pytest.mark.slow
def test_part_b_first_k_two_phases_on_2_ranks_keeps_frozen_weights_and_trains_the_others(tmp_path):
    """EfficientNet-Lite0 has dropout and drop-connect, whose masks each rank draws for itself: its trained weights
    cannot equal one process's (docs/training.md), so this checks what holds: the frozen blocks stay bit-identical
    (outside DDP's gradient buckets) and every other weight trains, across the phase change."""
    from part_b.models import load_backbone

    args = ["--model=efficientnet_lite0", "--input_size=32", "--batch_size=12", "--data=digits",
            "--max_images_per_class=12", "--strategy=first_k", "--k=3", "--schedule=fine_tune", "--freeze_epochs=1",
            "--epochs=2", "--deterministic", "--amp=off", "--report=false", f"--out_dir={tmp_path}"]
    subprocess.run([sys.executable, "part_b/finetune.py", *args, "--run_name=one"], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    torchrun(*args, "--run_name=two", script="part_b/finetune.py")
    start = load_backbone("efficientnet_lite0", "DEFAULT", 32, 3).model.state_dict()
    one, two = (torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("one", "two"))
    assert list(one) == list(two)  # no `module.` prefix, no other keys
    weights = [k for k in one if k.endswith(".weight") and k in start and one[k].shape == start[k].shape]
    frozen = [k for k in weights if torch.equal(one[k], start[k])]
    assert frozen and len(frozen) < len(weights)
    assert all(torch.equal(two[k], start[k]) for k in frozen)
    assert not any(torch.equal(two[k], start[k]) for k in weights if k not in frozen)


def test_progress_bars_show_on_rank_0_alone_and_mps_is_refused_under_torchrun(monkeypatch):
    from sweepcnn import distributed
    from sweepcnn.errors import UserError

    assert distributed.bars_off() is None  # one process: tqdm decides by the terminal, as before
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.bars_off() is True
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="--device mps"):
        distributed.init({"batch_size": 64}, torch.device("mps"))
    assert not distributed.active()
