"""Mixup/CutMix, EMA and TTA through part_a/train.py: the flags reach W&B and summary.json, the better of the raw
and EMA weights is selected and named, the report evaluates with the run's TTA, and resume is exact."""
import json

import pytest
import torch

from sweepcnn.tracking import read_history
from sweepcnn.train.checkpoint import load_checkpoint
from tests.helpers import FAST, train
from tests.wandb_records import history_and_summary, offline_runs, run_record

TRICKS = ["--mixup=0.2", "--cutmix=1.0", "--mix_switch_prob=0.3", "--ema=true", "--ema_decay=0.9", "--tta=flip"]


@pytest.mark.slow
def test_tricks_reach_wandb_and_the_summary_and_ema_selects_the_best_checkpoint(tmp_path):
    train("--data=digits", "--epochs=3", "--test", f"--out_dir={tmp_path}", "--run_name=r", *FAST, *TRICKS,
          env={"WANDB_MODE": "offline"}, timeout=600)
    run = tmp_path / "r"
    config = run_record(offline_runs(run)[0])["config"]
    assert {k: config[k] for k in ("mixup", "cutmix", "mix_switch_prob", "ema", "ema_decay", "tta")} == \
           {"mixup": 0.2, "cutmix": 1.0, "mix_switch_prob": 0.3, "ema": True, "ema_decay": 0.9, "tta": "flip"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tricks"] == {"mixup": 0.2, "cutmix": 1.0, "ema_decay": 0.9, "tta": "flip"}
    rows = read_history(run)
    for row in rows:  # the epoch's val_acc is the better of the two weights'
        assert row["val_acc"] == max(row["val_acc_raw"], row["val_acc_ema"])
        assert 0 <= row["train_acc"] <= 1
    best = load_checkpoint(run / "best.pt")
    best_row = rows[summary["best_epoch"] - 1]
    assert summary["best_weights"] == best["weights"]
    assert best["weights"] == ("ema" if best_row["val_acc_ema"] > best_row["val_acc_raw"] else "raw")
    assert {"test_acc_no_tta", "test_loss_no_tta"} <= set(summary)
    _, wandb_summary, _ = history_and_summary(run)
    assert wandb_summary["best_weights"] == summary["best_weights"]
    assert wandb_summary["report/test_acc"] == summary["test_acc"]  # the report evaluates with the run's --tta


@pytest.mark.slow
def test_resume_with_mixing_and_ema_is_exact(tmp_path):
    args = ["--data=digits", "--deterministic", "--scheduler=none", "--report=false", "--augmentation=true",
            f"--out_dir={tmp_path}", *FAST, *TRICKS]
    train(*args, "--epochs=2", "--run_name=whole")
    train(*args, "--epochs=1", "--run_name=split")
    train("--resume", "--run_name=split", f"--out_dir={tmp_path}", "--epochs=2")
    drop = ("epoch_seconds", "images_per_sec")
    whole, split = ([{k: v for k, v in row.items() if k not in drop} for row in read_history(tmp_path / name)]
                    for name in ("whole", "split"))
    assert whole == split and len(whole) == 2
    a, b = (load_checkpoint(tmp_path / name / "last.pt")["ema"] for name in ("whole", "split"))
    assert a["updates"] == b["updates"] > 0
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
