"""Train the CustomCNN from scratch.

    python part_a/train.py                                   # built-in offline `digits` data, default config
    python part_a/train.py --data path/to/inaturalist_12K --epochs 20 --filter_counts_strategy=doubling \\
        --base_filters=32 --test
    python part_a/train.py --config best.yaml --test         # a YAML config, flags override it
    python part_a/train.py --help                            # every flag
"""
from sweepcnn.config import grouped, run_cli
from sweepcnn.data.augment import AUGMENT_OPTIONS
from sweepcnn.data.batches import check_batch_size
from sweepcnn.data.datasets import DATA_OPTIONS
from sweepcnn.train.engine import ENGINE_OPTIONS
from sweepcnn.train.optim import OPTIM_OPTIONS
from sweepcnn.errors import UserError
from sweepcnn.report.run_report import REPORT_OPTIONS, report_tested_run
from sweepcnn.train.runner import RUN_OPTIONS, run_training
from sweepcnn.tracking import TRACKING_OPTIONS
from part_a.model import MODEL_OPTIONS, resolve_cnn_config
from part_a.part import build, model_config

OPTIONS = {**DATA_OPTIONS, **AUGMENT_OPTIONS, **grouped("model", MODEL_OPTIONS), **OPTIM_OPTIONS, **ENGINE_OPTIONS,
           **TRACKING_OPTIONS, **RUN_OPTIONS, **REPORT_OPTIONS}


def prepare(cfg: dict) -> tuple[int, int]:
    """Validate the model keys before any data is read; (input size, channels)."""
    try:
        resolve_cnn_config(model_config(cfg))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_batch_size(cfg["batch_size"], cfg["batch_norm"], "--batch_norm false")
    return cfg["input_size"], cfg["in_channels"]


def main(argv: list[str]) -> int:
    """python part_a/train.py [flags]."""
    return run_training(argv, OPTIONS, prog="python part_a/train.py", description=__doc__.strip().splitlines()[0],
                        prepare=prepare, build=build, after_test=report_tested_run)


if __name__ == "__main__":
    run_cli(main)
