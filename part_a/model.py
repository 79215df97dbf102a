"""The Part A CNN: 5 conv blocks (Conv2d -> [BatchNorm2d] -> activation -> MaxPool2d(2)) and a dense head,
built from a config that part_a/cnn_config.py validates:

    features.block{1..5}.{conv, bn, act, pool}   (bn only when batch_norm is on)
    classifier.{flatten, drop1, fc, act, drop2, out}

Convolutions use stride 1 and 'same' padding, so block i maps S_{i-1} x S_{i-1} to S_i = floor(S_{i-1} / 2) =
floor(S / 2^i); for even kernels torch pads one extra row/column at the bottom/right.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from part_a.cnn_config import ACTIVATIONS, resolve_cnn_config


class CNN(nn.Module):
    """features (5 conv blocks) -> classifier (flatten, dropout, dense, activation, dropout, output logits)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = cfg = resolve_cnn_config(config)
        act = getattr(nn, ACTIVATIONS[cfg["activation"]])
        blocks, channels, size = [], cfg["in_channels"], cfg["input_size"]
        for i, (filters, k) in enumerate(zip(cfg["filter_counts"], cfg["filter_sizes"]), start=1):
            layers: list[tuple[str, nn.Module]] = [
                ("conv", nn.Conv2d(channels, filters, k, padding="same", bias=not cfg["batch_norm"]))]
            if cfg["batch_norm"]:
                layers.append(("bn", nn.BatchNorm2d(filters)))
            layers += [("act", act()), ("pool", nn.MaxPool2d(2))]
            blocks.append((f"block{i}", nn.Sequential(OrderedDict(layers))))
            channels, size = filters, size // 2
        self.features = nn.Sequential(OrderedDict(blocks))
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()),
            ("drop1", nn.Dropout(cfg["dropout_rate"])),
            ("fc", nn.Linear(channels * size * size, cfg["dense_neurons"])),
            ("act", act()),
            ("drop2", nn.Dropout(cfg["dropout_rate"])),
            ("out", nn.Linear(cfg["dense_neurons"], cfg["num_classes"])),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_cnn(config: dict[str, Any]) -> CNN:
    """Validate `config` (model keys only) and build the CNN with torch's default initialisation."""
    return CNN(config)


def first_conv(model: CNN) -> nn.Conv2d:
    """The first convolution (`features.block1.conv`): its weights are the first-layer filters to plot."""
    return model.features.block1.conv


def last_conv(model: CNN) -> nn.Conv2d:
    """The last convolution (`features.block5.conv`): the layer Grad-CAM and guided backprop hook."""
    return model.features[-1].conv
