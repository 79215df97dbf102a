"""A finished run folder read back: its config, its best model rebuilt by the part that built it (named in
run.json, see sweepcnn.train.record) and its data, split as in training."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from sweepcnn.data.datasets import Data, load_data
from sweepcnn.errors import UserError
from sweepcnn.report.predictions import Normalization
from sweepcnn.train.record import RECORD, load_rebuild, read_record
from sweepcnn.train.checkpoint import load_checkpoint

if TYPE_CHECKING:
    from sweepcnn.train.spec import ModelSpec


def read_config(run_dir: Path) -> dict:
    """The run's config.yaml."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: no config.yaml: not a run folder of part_a/train.py or part_b/finetune.py")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    return config


def load_run_model(run_dir: Path) -> tuple[ModelSpec, dict, list[str], Normalization]:
    """Rebuild a run's best model through its part's rebuild function and `best.pt`: (its ModelSpec, the model in
    eval mode on the CPU; config; classes; (mean, std))."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    rebuild = load_rebuild(run_dir, read_record(run_dir))
    state = load_checkpoint(run_dir / "best.pt")
    missing = {"model", "classes", "normalization"} - set(state)
    if missing:
        raise UserError(f"{run_dir / 'best.pt'}: not a best checkpoint of this project ({', '.join(sorted(missing))} "
                        "missing)")
    classes = list(state["classes"])
    spec = rebuild(cfg, classes)
    try:
        spec.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"{run_dir / 'best.pt'} does not fit the model of {run_dir / 'config.yaml'}: "
                        f"{str(exc).splitlines()[0]}") from None
    spec.model.eval()
    norm = state["normalization"]
    return spec, cfg, classes, (list(norm["mean"]), list(norm["std"]))


def load_run_data(run_dir: Path, cfg: dict, classes: list[str]) -> Data:
    """The run's data at its input size and channels (from run.json), split as in training (the split is
    reproducible from the config); refuses data whose classes or test split differ from the run's."""
    record = read_record(run_dir)
    if not isinstance(record.get("input_size"), int) or not isinstance(record.get("in_channels"), int):
        raise UserError(f"{Path(run_dir) / RECORD}: needs the run's input_size and in_channels (integers)")
    data = load_data(cfg, record["input_size"], record["in_channels"])
    if data.classes != classes:
        raise UserError(f"the data {cfg['data']} has classes {data.classes}, the run {run_dir} was trained on "
                        f"{classes}")
    split = Path(run_dir) / "split.json"
    if split.is_file() and [n for n, _ in json.loads(split.read_text())["test"]] != data.test.names:
        raise UserError(f"the test split of {cfg['data']} differs from {split}: the data changed since the run")
    return data
