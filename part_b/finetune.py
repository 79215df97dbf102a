"""Fine-tune a pretrained torchvision backbone (or EfficientNet-Lite0) under an exact freezing strategy.

    python part_b/finetune.py --model efficientnet_lite0 --strategy all_except_last --data DIR --epochs 2 --test
    python part_b/finetune.py --model resnet50 --strategy all_except_k --k 2 --data DIR --test
    python part_b/finetune.py --model vit_b_16 --weights none --strategy first_k --k 6 --dry_run --num_classes 10
    python part_b/finetune.py --model vit_b_16 --strategy none --layer_decay 0.75 --schedule fine_tune --data DIR
    python part_b/finetune.py --model resnet50 --lr_find --data DIR      # LR range test: plot and suggestion
    python part_b/finetune.py --help                                     # every flag
"""
from __future__ import annotations

import json
from dataclasses import replace

from sweepcnn.config import exit_on_help, grouped, parse_args, run_cli
from sweepcnn.options import (AUGMENT_OPTIONS, DATA_OPTIONS, ENGINE_OPTIONS, LR_FIND_OPTIONS, OPTIM_OPTIONS,
                              REPORT_OPTIONS, RUN_OPTIONS, TRACKING_OPTIONS)
from part_b.options import FINETUNE_OPTIONS

# Fine-tuning defaults: AdamW with a warm-up, the head at 1e-3 and the backbone at 1e-4 (--backbone_lr_mult 0.1),
# label smoothing. Full fine-tuning at a single lr of 1e-3 wrecks pretrained features.
_DEFAULTS = {"epochs": 5, "batch_size": 32, "optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.05,
             "warmup_epochs": 0.5, "label_smoothing": 0.1}
TRAINING = {k: replace(opt, default=_DEFAULTS[k]) if k in _DEFAULTS else opt
            for k, opt in {**OPTIM_OPTIONS, **ENGINE_OPTIONS}.items()}
OPTIONS = {**DATA_OPTIONS, **AUGMENT_OPTIONS, **grouped("model and fine-tuning", FINETUNE_OPTIONS), **TRAINING,
           **LR_FIND_OPTIONS, **TRACKING_OPTIONS, **RUN_OPTIONS, **REPORT_OPTIONS}
PROG, DESCRIPTION = "python part_b/finetune.py", __doc__.strip().splitlines()[0]


def main(argv: list[str]) -> int:
    """python part_b/finetune.py [flags]."""
    exit_on_help(argv, OPTIONS, PROG, DESCRIPTION)
    # torch and the training stack load after --help, which stays fast
    from part_b.part import FineTune, dry_run
    from sweepcnn import distributed
    from sweepcnn.report.run_report import report_tested_run
    from sweepcnn.train.runner import run_training

    with distributed.said_by_rank_0():
        cfg, _ = parse_args(argv, OPTIONS, PROG, DESCRIPTION)
    if cfg["dry_run"]:
        print(json.dumps(dry_run(cfg)))
        return 0
    job = FineTune()
    return run_training(argv, OPTIONS, prog=PROG, description=DESCRIPTION, prepare=job.prepare, build=job.build,
                        job_type="finetune", after_test=report_tested_run)


if __name__ == "__main__":
    run_cli(main)
