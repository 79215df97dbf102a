"""A sweep's trials as data: read from a sweep folder of `python -m sweepcnn.sweep` (its trials.csv and sweep.yaml)
or from a W&B sweep (online, with the public API)."""
from __future__ import annotations

import ast
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweepcnn.errors import UserError
from sweepcnn.sweep.folder import RECORD_COLUMNS
from sweepcnn.sweep.spec import metric_goal, swept_names
from sweepcnn.tracking import has_api_key

FIXED_COLUMNS = ("trial", "run_id", "state", *RECORD_COLUMNS)  # trials.csv's columns that are not parameters
WANDB_PATH = re.compile(r"^[\w.-]+/[\w.-]+/\w+$")


@dataclass
class Trial:
    """One trial: its number in launch order, its metric (None if it has none) and its swept parameters."""

    number: int
    run_id: str
    state: str
    metric: float | None
    params: dict[str, Any]
    flops: float | None = None
    n_params: float | None = None
    test_acc: float | None = None
    epochs_run: float | None = None
    seconds: float | None = None


@dataclass
class Sweep:
    """A sweep's trials with its metric and goal, from a sweep folder or W&B."""

    source: str
    metric: str
    maximize: bool
    parameters: list[str]  # the swept parameters, in trials.csv's column order
    specs: dict[str, Any]  # sweep.yaml's `parameters:` entries (distributions)
    trials: list[Trial]

    @property
    def scored(self) -> list[Trial]:
        return [t for t in self.trials if t.metric is not None]

    @property
    def goal(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b


def parse_cell(text: str) -> Any:
    """A trials.csv cell as the Python value that csv wrote: None, bool, int, float, list or str."""
    text = text.strip()
    if not text:
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text[0] in "[({":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            pass
    return text


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------------- sweep folder
def load_sweep_folder(root: str | Path) -> Sweep:
    """Read a `python -m sweepcnn.sweep` folder: its trials.csv, with the metric's name and goal from its sweep.yaml."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"sweep folder not found: {root}")
    config = _read_sweep_yaml(root / "sweep.yaml")
    metric, maximize = metric_goal(config)
    try:
        with (root / "trials.csv").open(newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)
    except FileNotFoundError:
        raise UserError(f"{root} has no trials.csv: is it a sweep folder of `python -m sweepcnn.sweep`?") from None
    missing = [c for c in ("trial", "run_id", "state", metric) if c not in header]
    if missing:
        raise UserError(f"{root / 'trials.csv'}: column(s) {', '.join(missing)} missing (the sweep's metric is "
                        f"{metric!r})")
    parameters = [c for c in header if c not in (*FIXED_COLUMNS, metric)]
    trials = [_trial_from_row(row, i, metric, parameters) for i, row in enumerate(rows, 1)]
    return Sweep(str(root), metric, maximize, parameters, config.get("parameters") or {}, trials)


def _read_sweep_yaml(path: Path) -> dict:
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path.parent} has no sweep.yaml (it names the metric and its goal)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict) or not isinstance(config.get("metric"), dict) or "name" not in config["metric"]:
        raise UserError(f"{path}: `metric: {{name: ..., goal: ...}}` is missing")
    return config


def _trial_from_row(row: dict[str, str], index: int, metric: str, parameters: list[str]) -> Trial:
    value = {k: parse_cell(v or "") for k, v in row.items() if k is not None}
    number = value.get("trial")
    return Trial(number=number if isinstance(number, int) else index, run_id=str(value.get("run_id") or ""),
                 state=str(value.get("state") or "unknown"), metric=_number(value.get(metric)),
                 params={k: value.get(k) for k in parameters}, flops=_number(value.get("flops")),
                 n_params=_number(value.get("params")), test_acc=_number(value.get("test_acc")),
                 epochs_run=_number(value.get("epochs_run")), seconds=_number(value.get("seconds")))


# ---------------------------------------------------------------------------------------------------- W&B (online)
def load_wandb_sweep(path: str) -> Sweep:
    """Read a W&B sweep, ENTITY/PROJECT/SWEEP_ID, with the public API into the same form as a sweep folder.
    Runs are numbered in creation order; `killed` runs count as stopped."""
    import wandb

    try:
        sweep = wandb.Api(timeout=60).sweep(path)
        config = sweep.config
        runs = sorted(sweep.runs, key=lambda run: run.created_at)
    except Exception as exc:  # network, authentication and unknown-sweep errors all surface as different types
        first_line = (str(exc) or type(exc).__name__).splitlines()[0]
        raise UserError(f"cannot read W&B sweep {path}: {first_line}") from None
    metric, maximize = metric_goal(config)
    names = swept_names(config)
    trials = []
    for number, run in enumerate(runs, 1):
        summary = run.summary_metrics
        trials.append(Trial(number=number, run_id=run.id, state={"killed": "stopped"}.get(run.state, run.state),
                            metric=_number(summary.get(metric)), params={k: run.config.get(k) for k in names},
                            flops=_number(summary.get("flops")), n_params=_number(summary.get("params")),
                            test_acc=_number(summary.get("test_acc")), epochs_run=_number(summary.get("epochs_run")),
                            seconds=_number(summary.get("_runtime"))))
    return Sweep(path, metric, maximize, names, config["parameters"], trials)


def load(source: str) -> tuple[Sweep, Path]:
    """A sweep folder or, when no such folder exists, a W&B sweep path; and the default report folder."""
    path = Path(source)
    if not path.exists() and WANDB_PATH.match(source):
        if not has_api_key():
            raise UserError(f"{source}: no such sweep folder, and reading it as the W&B sweep ENTITY/PROJECT/SWEEP_ID "
                            f"needs a W&B API key (wandb login)")
        return load_wandb_sweep(source), Path("runs") / "sweeps" / f"wandb-{source.rsplit('/', 1)[1]}" / "report"
    return load_sweep_folder(path), path / "report"
