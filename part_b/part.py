"""How Part B plugs into the shared code: the layers a report inspects, what identifies a fine-tuning run in a
comparison, and `rebuild` (which run.json names for sweepcnn.report; part_b/predict.py uses it too)."""
from __future__ import annotations

from torch import nn

from sweepcnn.report.interpret import Layers, conv_layers
from sweepcnn.train.spec import ModelSpec
from part_b.blocks import Layout
from part_b.models import load_backbone, replace_head, resolve_preset

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
