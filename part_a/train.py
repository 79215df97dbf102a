"""Train the CustomCNN from scratch.

    python part_a/train.py                                   # built-in offline `digits` data, default config
    python part_a/train.py --data path/to/inaturalist_12K --epochs 20 --filter_counts_strategy=doubling \\
        --base_filters=32 --test
    python part_a/train.py --config best.yaml --test         # a YAML config, flags override it
    python part_a/train.py --help                            # every flag
"""
from sweepcnn.config import exit_on_help, grouped, run_cli
from sweepcnn.options import (AUGMENT_OPTIONS, DATA_OPTIONS, ENGINE_OPTIONS, OPTIM_OPTIONS, REPORT_OPTIONS, RUN_OPTIONS,
                              TRACKING_OPTIONS)
from part_a.cnn_config import MODEL_OPTIONS

OPTIONS = {**DATA_OPTIONS, **AUGMENT_OPTIONS, **grouped("model", MODEL_OPTIONS), **OPTIM_OPTIONS, **ENGINE_OPTIONS,
           **TRACKING_OPTIONS, **RUN_OPTIONS, **REPORT_OPTIONS}
PROG, DESCRIPTION = "python part_a/train.py", __doc__.strip().splitlines()[0]


def main(argv: list[str]) -> int:
    """python part_a/train.py [flags]."""
    exit_on_help(argv, OPTIONS, PROG, DESCRIPTION)
    # torch and the training stack load after --help, which stays fast
    from part_a.part import build, prepare
    from sweepcnn.report.run_report import report_tested_run
    from sweepcnn.train.runner import run_training

    return run_training(argv, OPTIONS, prog=PROG, description=DESCRIPTION, prepare=prepare, build=build,
                        after_test=report_tested_run)


if __name__ == "__main__":
    run_cli(main)
