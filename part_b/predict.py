"""python part_b/predict.py: sweepcnn.predict, for best checkpoints of either part (see its --help), which here
also takes a Part B best.pt kept without its run folder (e.g. a downloaded W&B model artifact): its config names
the backbone, as it did before runs recorded run.json.

    python part_b/predict.py --checkpoints runs/a/best.pt --images photos/ --out preds.csv
    python part_b/predict.py --checkpoints runs/a/best.pt runs/b/best.pt runs/c/best.pt --images photo.jpg
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sweepcnn.config import run_cli
from sweepcnn.predict import main as predict_main

if TYPE_CHECKING:
    from sweepcnn.predictor import Recipe


def standalone(config: dict) -> Recipe | None:
    """How to rebuild a Part B checkpoint from its config alone (only Part B's config has --strategy)."""
    if "strategy" not in config:
        return None
    # torch and the backbones load here, while checkpoints are read, not for --help
    from part_b.part import input_size, rebuild
    from sweepcnn.predictor import Recipe

    return Recipe(rebuild, (input_size(config), config["in_channels"]))


def main(argv: list[str]) -> int:
    return predict_main(argv, prog="python part_b/predict.py", standalone=standalone)


if __name__ == "__main__":
    run_cli(main)
