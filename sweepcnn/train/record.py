"""run.json: which part built a run and what identifies it, so that the shared tools rebuild and compare runs
without knowing the parts. sweepcnn.train.runner writes it from the part's ModelSpec:

    {"program": "part_b/finetune.py", "rebuild": "part_b.part:rebuild", "input_size": 224, "in_channels": 3,
     "total_params": 4021150, "trainable_params": 12810, "identity": {"model": "efficientnet_lite0", ...},
     "label": "all_except_last"}

`program` is the script that trains the run (only it resumes it). `rebuild` is the import path (module:function) of
the part's `rebuild(cfg, classes) -> ModelSpec`, which builds the run's model without downloading weights, ready for
best.pt's state dict (sweepcnn.report.runs loads it). `identity` tells the run apart in comparisons
(sweepcnn.report.compare; its `model` names the architecture) and `label` is how a comparison plot labels it. The
parameter counts are those of the model as training starts.
"""
from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweepcnn.errors import UserError
from sweepcnn.io import write_json

if TYPE_CHECKING:
    from torch import nn

    from sweepcnn.train.spec import ModelSpec

RECORD = "run.json"
_HOW = ('train it again, or write {run_dir}/run.json as {{"rebuild": "part_a.part:rebuild", "input_size": N, '
        '"in_channels": C}} with the run\'s input size and channels (part_b.part:rebuild for a run of '
        "part_b/finetune.py)")


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and trainable (requires_grad) parameters of any model."""
    return {"total_params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def import_path(function: Callable) -> str:
    """`module:function` of a module-level function, importable by a later process (so not from `__main__`)."""
    module, name = function.__module__, function.__qualname__
    if module == "__main__" or getattr(sys.modules.get(module), name, None) is not function:
        raise ValueError(f"{module}.{name} is not a module-level function of an importable module: a later "
                         "process could not import it")
    return f"{module}:{name}"


def write_record(run_dir: Path, spec: ModelSpec, input_size: int, in_channels: int, program: str | None = None
                 ) -> None:
    """RUN_DIR/run.json from the part's ModelSpec, with the model's parameter counts and the program that trains
    it (e.g. part_a/train.py: only it may resume the run)."""
    identity = spec.identity or {"model": type(spec.model).__name__}
    write_json(Path(run_dir) / RECORD, {
        "program": program, "rebuild": import_path(spec.rebuild) if spec.rebuild else None, "input_size": input_size,
        "in_channels": in_channels, **parameter_counts(spec.model), "identity": identity,
        "label": spec.label if spec.label is not None else default_label(identity)})


def default_label(identity: dict[str, Any]) -> str:
    """The identity's values but the model's, for a comparison plot."""
    return " ".join(str(v) for k, v in identity.items() if k != "model" and v is not None)


def read_record(run_dir: Path) -> dict[str, Any]:
    """A run folder's run.json; a UserError, saying what to do, for a run made before runs recorded it."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        raise UserError(f"{run_dir}: no {RECORD}, which says which part built the run (a run made before it was "
                        "recorded): " + _HOW.format(run_dir=run_dir))
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object")
    return record


def load_rebuild(run_dir: Path, record: dict[str, Any]) -> Callable[[dict, list[str]], ModelSpec]:
    """The part's rebuild function that `record` names, imported."""
    target = record.get("rebuild")
    if not isinstance(target, str) or target.count(":") != 1:
        raise UserError(f"{Path(run_dir) / RECORD}: no rebuild function (module:function): "
                        + _HOW.format(run_dir=run_dir))
    module, name = target.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{Path(run_dir) / RECORD}: cannot import the rebuild function {target}: {exc}") from None
