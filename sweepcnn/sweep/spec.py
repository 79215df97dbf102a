"""A W&B sweep config: reading and checking the YAML, W&B's search engine, the command `wandb agent` runs for a
trial, the swept parameters and the metric's goal."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from sweepcnn.errors import UserError

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
# 0.3.0 has the server's hyperband (wandb/sweeps#99, #108); it pins numpy<2 but runs on numpy 2
ENGINE_INSTALL = "pip install --no-deps sweeps==0.3.0"


def load_sweep(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a sweep YAML and apply `key=value` overrides (each becomes a fixed parameter)."""
    path = Path(path)
    try:
        sweep = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"sweep file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read sweep file {path}: {exc}".splitlines()[0]) from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict) or not sweep["parameters"]:
        raise UserError(f"{path}: a sweep file needs a `parameters:` mapping")
    for key in ("program", "method", "metric"):
        if key not in sweep:
            raise UserError(f"{path}: `{key}:` is missing")
    if sweep["method"] not in ("bayes", "random", "grid"):
        raise UserError(f"{path}: method {sweep['method']!r} is not one of bayes, random, grid")
    if not isinstance(sweep["metric"], dict) or "name" not in sweep["metric"]:
        raise UserError(f"{path}: `metric:` needs a name (and a goal: maximize or minimize)")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value")
        sweep["parameters"][key] = {"value": yaml.safe_load(raw)}
    try:
        search_engine().config.SweepConfig(sweep)
    except Exception as exc:  # jsonschema's ValidationError and friends
        raise UserError(f"{path}: not a valid sweep config: {str(exc).splitlines()[0]}") from None
    _check_searchable(sweep, path)
    return sweep


def _check_searchable(sweep: dict, path: Path) -> None:
    """The engine's first suggestion, so that a space it cannot search (a continuous parameter in a grid, a bayes
    sweep whose parameters are all fixed) is refused before the sweep starts rather than in every worker."""
    try:
        search_engine().next_run(sweep, [], validate=False)
    except ValueError as exc:
        hint = {"grid": "give each parameter `values: [...]`, or use method: random or bayes",
                "bayes": "search at least one parameter (`values:` or a distribution; --set fixes one), or use "
                         "method: grid or random"}.get(sweep["method"], "fix its parameters")
        raise UserError(f"{path}: {str(exc).splitlines()[0].rstrip('.')}; {hint}") from None


def search_engine() -> Any:
    """W&B's open-source search engine (the `sweeps` package), imported without its pydantic-v1 config warning."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sweeps
            import sweeps.config
            from sweeps.config.schema import dereferenced_sweep_config_jsonschema as schema
    except ImportError:
        raise UserError(f"the `sweeps` package is missing: {ENGINE_INSTALL}") from None
    if "strict" not in schema["definitions"]["hyperband_stopping"]["properties"]:
        raise UserError(f"the installed `sweeps` engine predates hyperband's strict rule, which the W&B server "
                        f"applies: {ENGINE_INSTALL}")
    return sweeps


def agent_command(sweep: dict, params: dict[str, Any], interpreter: str = sys.executable) -> list[str]:
    """The command line `wandb agent` runs for one trial (wandb/wandb_agent.py: Agent._command_run with
    sdk/launch/sweeps/utils.py), except that ${interpreter} is this Python rather than whichever `python` is
    first on PATH."""
    flags, no_hyphens, no_booleans, no_equals = [], [], [], []
    for name, value in params.items():
        flags.append(f"--{name}={value}")
        no_hyphens.append(f"{name}={value}")
        no_equals += [f"--{name}", str(value)]
        if not isinstance(value, bool):
            no_booleans.append(f"--{name}={value}")
        elif value:
            no_booleans.append(f"--{name}")
    macros = {"env": ["/usr/bin/env"], "interpreter": [interpreter], "program": [sweep["program"]],
              "args": flags, "args_no_hyphens": no_hyphens, "args_no_boolean_flags": no_booleans,
              "args_no_equals": no_equals, "args_json": [json.dumps(params)],
              "args_append_hydra": ["+" + f for f in no_hyphens], "args_override_hydra": ["++" + f for f in no_hyphens]}
    command = []
    for chunk in sweep.get("command") or DEFAULT_COMMAND:
        chunk = os.path.expandvars(str(chunk)) if not str(chunk).startswith("${") else str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            if chunk[2:-1] not in macros:
                raise UserError(f"sweep command: macro {chunk} is not supported offline")
            command += macros[chunk[2:-1]]
        else:
            command.append(chunk)
    return command


def swept_names(sweep: dict) -> list[str]:
    """The parameters the sweep searches (not those fixed with `value:`), in the YAML's order."""
    return [k for k, spec in sweep["parameters"].items() if not (isinstance(spec, dict) and set(spec) == {"value"})]


def metric_goal(sweep: dict) -> tuple[str, bool]:
    """(the metric's name, whether it is maximized); a missing goal means minimize, as on W&B."""
    return sweep["metric"]["name"], sweep["metric"].get("goal", "minimize") == "maximize"
