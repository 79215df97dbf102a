"""Train the CustomCNN from scratch.

    python part_a/train.py                                   # built-in offline `digits` data, default config
    python part_a/train.py --data path/to/inaturalist_12K --epochs 20 --filter_counts_strategy=doubling \\
        --base_filters=32 --test
    python part_a/train.py --config best.yaml --test         # a YAML config, flags override it
    python part_a/train.py --help                            # every flag
"""
from sweepcnn.config import run_cli
from sweepcnn.data.datasets import DATA_OPTIONS, Data
from sweepcnn.train.engine import ENGINE_OPTIONS
from sweepcnn.errors import UserError
from sweepcnn.train.runner import RUN_OPTIONS, ModelSpec, run_training
from sweepcnn.tracking import TRACKING_OPTIONS
from part_a.counting import count_cnn
from part_a.model import MODEL_OPTIONS, build_cnn, resolve_cnn_config

OPTIONS = {**DATA_OPTIONS, **MODEL_OPTIONS, **ENGINE_OPTIONS, **TRACKING_OPTIONS, **RUN_OPTIONS}


def model_config(cfg: dict) -> dict:
    return {key: cfg[key] for key in MODEL_OPTIONS}


def prepare(cfg: dict) -> tuple[int, int]:
    try:
        resolve_cnn_config(model_config(cfg))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return cfg["input_size"], cfg["in_channels"]


def build(cfg: dict, data: Data) -> ModelSpec:
    counts = count_cnn(model_config(cfg))
    return ModelSpec(build_cnn(model_config(cfg)), {k: counts[k] for k in ("params", "macs", "flops")})


def main(argv: list[str]) -> int:
    return run_training(argv, OPTIONS, prog="python part_a/train.py", description=__doc__.strip().splitlines()[0],
                        prepare=prepare, build=build)


if __name__ == "__main__":
    run_cli(main)
