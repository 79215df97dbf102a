"""The Part A CNN: 5 conv blocks (Conv2d -> [BatchNorm2d] -> activation -> MaxPool2d(2)) and a dense head.

Every key of MODEL_OPTIONS is also a CLI flag and a sweep parameter. `resolve_cnn_config` validates a dict of model
keys and fills in explicit per-layer `filter_counts` / `filter_sizes`; `build_cnn` turns it into a module:

    features.block{1..5}.{conv, bn, act, pool}   (bn only when batch_norm is on)
    classifier.{flatten, drop1, fc, act, drop2, out}

Convolutions use stride 1 and 'same' padding, so block i maps S_{i-1} x S_{i-1} to S_i = floor(S_{i-1} / 2) =
floor(S / 2^i); for even kernels torch pads one extra row/column at the bottom/right.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import cache
from typing import TYPE_CHECKING, Any

from sweepcnn.config import Option, parse_value
from sweepcnn.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

NUM_BLOCKS = 5
MIN_INPUT_SIZE = 2 ** NUM_BLOCKS  # five MaxPool2d(2) with floor division: the last feature map is floor(S / 32)

# --activation name -> its torch.nn class name (names, so that importing this module does not import torch)
ACTIVATIONS: dict[str, str] = {
    "relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "mish": "Mish",
    "leaky_relu": "LeakyReLU", "elu": "ELU", "selu": "SELU", "tanh": "Tanh",
}
STRATEGIES = ("same", "doubling", "halving")

MODEL_OPTIONS: dict[str, Option] = {
    "filter_counts": Option(None, "filters per conv layer; overrides base_filters/filter_counts_strategy",
                            kind="ints", min=1, nullable=True, length=NUM_BLOCKS),
    "base_filters": Option(32, "filters in the first (same, doubling) or last (halving) conv layer", kind="int", min=1),
    "filter_counts_strategy": Option("same", "same: base in every layer; doubling: base*2^i; halving: base*2^(4-i)",
                                     choices=STRATEGIES),
    "max_filters": Option(None, "cap on the filters of any layer from base_filters/filter_counts_strategy (keeps "
                                "a sweep's halving/doubling layers affordable)", kind="int", min=1, nullable=True),
    "filter_sizes": Option(None, "kernel size per conv layer; overrides filter_size",
                           kind="ints", min=1, nullable=True, length=NUM_BLOCKS),
    "filter_size": Option(3, "kernel size of every conv layer", kind="int", min=1),
    "activation": Option("relu", "activation after each conv and the dense layer", choices=tuple(ACTIVATIONS)),
    "dense_neurons": Option(256, "neurons in the hidden dense layer", kind="int", min=1),
    # Option.max is inclusive; 0.99 keeps 1.0 (a layer that drops everything) out on the CLI, in YAML and here.
    "dropout_rate": Option(0.2, "dropout before and after the hidden dense layer, in [0, 1)", kind="float",
                           min=0.0, max=0.99),
    "batch_norm": Option(True, "BatchNorm2d after each conv (the conv then has no bias)", kind="bool"),
    "input_size": Option(224, f"square input image side in pixels (at least {MIN_INPUT_SIZE})", kind="int", min=1),
    "in_channels": Option(3, "input image channels", kind="int", choices=(1, 3)),
    "num_classes": Option(10, "output classes (the trainer sets it from the data)", kind="int", min=2),
}


def resolve_cnn_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a dict of model keys (missing ones take defaults) and return it with explicit 5-int
    `filter_counts` and `filter_sizes`. Raises ValueError naming the bad key."""
    unknown = sorted(set(config) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(map(repr, unknown))}; "
                         f"valid options: {', '.join(MODEL_OPTIONS)}")
    cfg: dict[str, Any] = {}
    for name, opt in MODEL_OPTIONS.items():
        try:
            cfg[name] = parse_value(name, opt, config.get(name, opt.default))
        except UserError as exc:
            raise ValueError(str(exc).removeprefix("--")) from None
    if cfg["filter_counts"] is None:
        base, strategy = cfg["base_filters"], cfg["filter_counts_strategy"]
        exponent = {"same": lambda i: 0, "doubling": lambda i: i, "halving": lambda i: NUM_BLOCKS - 1 - i}[strategy]
        cap = cfg["max_filters"] or float("inf")
        cfg["filter_counts"] = [int(min(base * 2 ** exponent(i), cap)) for i in range(NUM_BLOCKS)]
    if cfg["filter_sizes"] is None:
        cfg["filter_sizes"] = [cfg["filter_size"]] * NUM_BLOCKS
    cfg["filter_counts"], cfg["filter_sizes"] = list(cfg["filter_counts"]), list(cfg["filter_sizes"])
    if cfg["input_size"] < MIN_INPUT_SIZE:
        raise ValueError(f"input_size: {cfg['input_size']} is too small: {NUM_BLOCKS} MaxPool2d(2) stages shrink it "
                         f"to floor({cfg['input_size']}/{MIN_INPUT_SIZE}) = 0; the smallest input size that works "
                         f"is {MIN_INPUT_SIZE}")
    return cfg


@cache
def _cnn_class() -> type[nn.Module]:
    """The CNN class, defined on first use: the config half of this module (MODEL_OPTIONS, resolve_cnn_config) is
    what counting.py and --help need, and they should not wait for torch to import."""
    from torch import nn

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

    return CNN


def __getattr__(name: str) -> Any:
    if name == "CNN":  # `from part_a.model import CNN` and `isinstance(m, CNN)` work as for a module-level class
        return _cnn_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_cnn(config: dict[str, Any]) -> CNN:
    """Validate `config` (model keys only) and build the CNN with torch's default initialisation."""
    return _cnn_class()(config)


def first_conv(model: CNN) -> nn.Conv2d:
    """The first convolution (`features.block1.conv`): its weights are the first-layer filters to plot."""
    return model.features.block1.conv


def last_conv(model: CNN) -> nn.Conv2d:
    """The last convolution (`features.block5.conv`): the layer Grad-CAM and guided backprop hook."""
    return model.features[-1].conv
