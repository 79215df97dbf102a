"""What W&B's `sweeps` engine decides for an offline sweep: the next trial's parameters and which trials hyperband
stops, from the sweep folder's trials as the engine's runs."""
from __future__ import annotations

import secrets
import string
from typing import Any

from sweepcnn.sweep.folder import SweepFolder
from sweepcnn.sweep.spec import search_engine

# How the engine sees our states: a stopped trial is a finished run with the metric it reached, as on W&B; an
# interrupted one is a preempted run (requeued, counted as pending); failed and crashed ones are imputed (worst).
ENGINE_STATE = {"stopped": "finished", "interrupted": "preempted"}
WITH_HISTORY = ("running", "stopped", "finished", "interrupted")


def engine_config(sweep: dict) -> dict:
    """The sweep as the W&B server runs it: hyperband with the strict rule (wandb/sweeps#108, the server's default
    since 2024) unless the YAML says `strict: false`. A trial is stopped when its metric at a band is outside the
    top 1/eta; the conservative rule compares its best value so far instead, and stops later."""
    terminate = sweep.get("early_terminate")
    if not terminate or terminate.get("type") != "hyperband" or "strict" in terminate:
        return sweep
    return {**sweep, "early_terminate": {**terminate, "strict": True}}


def to_sweep_runs(folder: SweepFolder, trials: list[dict]) -> list:
    """Our trials as the `sweeps` engine's runs."""
    SweepRun = search_engine().SweepRun
    name = folder.sweep["metric"]["name"]
    return [SweepRun(name=t["run_id"], state=ENGINE_STATE.get(t["state"], t["state"]),
                     config={k: {"value": v} for k, v in t["params"].items()},
                     summaryMetrics={} if t.get("metric") is None else {name: t["metric"]},
                     sampledHistory=folder.history(t["run_id"]) if t["state"] in WITH_HISTORY else [])
            for t in trials]


def _plain(value: Any) -> Any:
    """numpy scalars from the engine to Python values (YAML and command lines need plain ones)."""
    return value.item() if hasattr(value, "item") else value


def suggest(folder: SweepFolder, trials: list[dict]) -> dict | None:
    """The next parameters from W&B's engine, or None when a grid is exhausted."""
    run = search_engine().next_run(folder.sweep, to_sweep_runs(folder, trials), validate=False)
    if run is None:
        return None
    return {k: _plain(spec["value"]) for k, spec in run.config.items()}


def should_stop(folder: SweepFolder, trials: list[dict], run_id: str) -> bool:
    """Whether hyperband (the sweep's `early_terminate`) stops this trial now."""
    if not folder.sweep.get("early_terminate"):
        return False
    runs = to_sweep_runs(folder, trials)
    return any(run.name == run_id for run in search_engine().stop_runs(engine_config(folder.sweep), runs))


def new_run_id(taken: set[str]) -> str:
    """A fresh id in W&B's run-id format: 8 lower-case letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    while True:
        run_id = "".join(secrets.choice(alphabet) for _ in range(8))
        if run_id not in taken:
            return run_id
