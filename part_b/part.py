"""How Part B plugs into the shared code: FineTune (the prepare and build steps of part_b/finetune.py), the layers a
report inspects, what identifies a fine-tuning run in a comparison, and `rebuild` (which run.json names for
sweepcnn.report; part_b/predict.py uses it too)."""
from __future__ import annotations

import sys
from collections.abc import Callable

from torch import nn

from sweepcnn import distributed
from sweepcnn.data.batches import check_batch_size
from sweepcnn.data.datasets import Data, count_classes
from sweepcnn.errors import UserError
from sweepcnn.report.interpret import Layers, conv_layers
from sweepcnn.train.engine import Phase, fit
from sweepcnn.train.lr_find import check_range, lr_range_test
from sweepcnn.train.record import parameter_counts
from sweepcnn.train.spec import ModelSpec
from part_b.blocks import (Layout, block_parameters, check_k, check_layout, freeze, frozen_batchnorm_eval,
                           frozen_count, param_groups, trains_batchnorm)
from part_b.models import (Backbone, architecture, gray_normalization, load_backbone, replace_head,
                           resolve_preset)

IDENTITY = ("model", "weights", "strategy", "k", "schedule")  # keys of describe()'s summary


def input_size(cfg: dict) -> int:
    """The run's input side: --input_size, else the weights' own."""
    return cfg["input_size"] or resolve_preset(cfg["model"], cfg["weights"]).input_size


def interpretability_layers(model: nn.Module, layout: Layout) -> Layers:
    """ResNet: conv1 and layer4; ViT: the patch embedding and the last encoder block's ln_1 (the input of its
    attention: the block's output reaches the logits only through the class token, so its patch tokens get no
    gradient); any other backbone: its first and last Conv2d."""
    if layout.family == "resnet":
        return Layers(model.conv1, model.layer4)
    if layout.family == "vit":
        return Layers(model.conv_proj, model.encoder.layers[-1].ln_1)
    return conv_layers(model)


def identity(info: dict) -> dict:
    """The run's model, weights and freezing, from describe()'s summary."""
    return {key: info[key] for key in IDENTITY}


def label(identity: dict) -> str:
    """The strategy, with k, the schedule and scratch weights when they matter, for a comparison plot."""
    return (identity["strategy"] + (f" k={identity['k']}" if identity["k"] is not None else "")
            + (" (fine_tune)" if identity["schedule"] == "fine_tune" else "")
            + (" [from scratch]" if identity["weights"] == "none" else ""))


def rebuild(cfg: dict, classes: list[str]) -> ModelSpec:
    """The backbone of a finished run's config with a head for `classes`, randomly initialised (no download),
    ready for best.pt's state dict."""
    backbone = load_backbone(cfg["model"], None, input_size(cfg), cfg["in_channels"])
    replace_head(backbone.model, backbone.layout, len(classes))
    return ModelSpec(backbone.model, {}, layers=interpretability_layers(backbone.model, backbone.layout),
                     rebuild=rebuild)


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
        if cfg["strategy"] not in ("first_k", "all_except_k") and cfg["k"] is not None and distributed.is_main():
            print(f"note: --k is ignored by --strategy {cfg['strategy']}", file=sys.stderr)
        if cfg["schedule"] == "fine_tune":
            if cfg["strategy"] == "all_except_last":
                raise UserError("--schedule fine_tune unfreezes per --strategy after the head-only epochs; "
                                "--strategy all_except_last never unfreezes: use none, first_k or all_except_k")
            if cfg["freeze_epochs"] >= cfg["epochs"] and distributed.is_main():  # a later --resume may unfreeze
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
