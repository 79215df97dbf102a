"""How Part A plugs into the shared code: the checks of a CNN config (`prepare`), its ModelSpec built for training
(part_a/train.py) and rebuilt for a finished run (`rebuild`, which run.json names for sweepcnn.report)."""
from __future__ import annotations

from sweepcnn.data.batches import check_batch_size
from sweepcnn.data.datasets import Data
from sweepcnn.errors import UserError
from sweepcnn.report.interpret import Layers
from sweepcnn.train.spec import ModelSpec
from part_a.cnn_config import MODEL_OPTIONS, resolve_cnn_config
from part_a.counting import count_cnn
from part_a.model import CNN, build_cnn, first_conv, last_conv


def model_config(cfg: dict) -> dict:
    """The model keys of a run's config (keys an older config lacks take their defaults)."""
    return {key: cfg[key] for key in MODEL_OPTIONS if key in cfg}


def prepare(cfg: dict) -> tuple[int, int]:
    """Validate the model keys before any data is read; (input size, channels)."""
    try:
        resolve_cnn_config(model_config(cfg))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_batch_size(cfg["batch_size"], cfg["batch_norm"], "--batch_norm false")
    return cfg["input_size"], cfg["in_channels"]


def identity(model: CNN) -> dict:
    """What tells one CNN apart from another in a comparison (sweepcnn.report.compare)."""
    cfg = model.config
    return {"model": "part_a_cnn", "filter_counts": "-".join(map(str, cfg["filter_counts"])),
            "filter_sizes": "-".join(map(str, cfg["filter_sizes"])), "activation": cfg["activation"],
            "batch_norm": cfg["batch_norm"], "dense_neurons": cfg["dense_neurons"]}


def interpretability_layers(model: CNN) -> Layers:
    """The first convolution (filters) and the last one (Grad-CAM and guided backpropagation)."""
    return Layers(first_conv(model), last_conv(model))


def _spec(model_cfg: dict, info: dict) -> ModelSpec:
    model = build_cnn(model_cfg)
    ident = identity(model)
    label = f"{ident['filter_counts']} k{ident['filter_sizes']} {ident['activation']}"
    return ModelSpec(model, info, layers=interpretability_layers(model), identity=ident, label=label,
                     rebuild=rebuild)


def build(cfg: dict, data: Data) -> ModelSpec:
    """The CNN to train, with its closed-form parameter, MAC and FLOP counts for the summary."""
    counts = count_cnn(model_config(cfg))
    return _spec(model_config(cfg), {k: counts[k] for k in ("params", "macs", "flops")})


def rebuild(cfg: dict, classes: list[str]) -> ModelSpec:
    """The CNN of a finished run's config, with a head for `classes`, ready for best.pt's state dict."""
    return _spec({**model_config(cfg), "num_classes": len(classes)}, {})
