"""The Part A CNN's config: its flags (MODEL_OPTIONS, also sweep parameters) and `resolve_cnn_config`, which
validates a dict of model keys and fills in explicit per-layer `filter_counts` / `filter_sizes`.

Kept apart from the module (part_a/model.py) so that `--help` and part_a/counting.py import no torch.
"""
from __future__ import annotations

from typing import Any

from sweepcnn.config import Option, parse_value
from sweepcnn.errors import UserError


NUM_BLOCKS = 5
MIN_INPUT_SIZE = 2 ** NUM_BLOCKS  # five MaxPool2d(2) with floor division: the last feature map is floor(S / 32)

# --activation name -> its torch.nn class name (names: importing this module imports no torch)
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

