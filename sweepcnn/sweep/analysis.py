"""What a sweep's numbers say: each parameter's correlation with the metric and random-forest importance (as
W&B's parameter-importance panel computes them), the trials ranked, and the metric/FLOPs Pareto front."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sweepcnn.sweep.trials import Sweep, Trial

LOG_DISTRIBUTIONS = {"log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values",
                     "log_uniform", "q_log_uniform", "inv_log_uniform"}


def param_kind(values: list[Any]) -> str:
    """"bool", "numeric" or "categorical" (anything else: strings, lists, numbers mixed with strings)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "numeric"
    return "categorical"


def is_log(sweep: Sweep, name: str, values: list[Any]) -> bool:
    """Whether a parameter is drawn from a log distribution (and all its values are positive): shown log10."""
    spec = sweep.specs.get(name)
    present = [v for v in values if v is not None]
    return (isinstance(spec, dict) and spec.get("distribution") in LOG_DISTRIBUTIONS
            and bool(present) and min(present) > 0)


@dataclass
class Feature:
    """One input column of the importance model: a numeric parameter, a boolean, or one level of a categorical."""

    name: str
    parameter: str
    encoding: str  # linear, log10, 0/1, one-hot
    values: np.ndarray  # one per trial with a metric; NaN where unknown


def encode_features(sweep: Sweep) -> list[Feature]:
    """The trials with a metric as model inputs: categoricals one-hot, booleans 0/1, log-distributed values log10."""
    trials = sweep.scored
    features = []
    for name in sweep.parameters:
        raw = [t.params.get(name) for t in trials]
        kind = param_kind([t.params.get(name) for t in sweep.trials])
        if kind == "categorical":
            for level in sorted({str(v) for v in raw if v is not None}):
                column = [np.nan if v is None else float(str(v) == level) for v in raw]
                features.append(Feature(f"{name}={level}", name, "one-hot", np.array(column)))
        elif kind == "bool":
            features.append(Feature(name, name, "0/1", np.array([np.nan if v is None else float(v) for v in raw])))
        else:
            column = np.array([np.nan if v is None else float(v) for v in raw])
            log = is_log(sweep, name, raw)
            features.append(Feature(name, name, "log10" if log else "linear", np.log10(column) if log else column))
    return features


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation over the rows where x is known; None when undefined (fewer than 2 rows, or no variance)."""
    known = ~np.isnan(x)
    x, y = x[known], y[known]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def forest_importance(features: list[Feature], y: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """Random-forest feature importance (impurity decrease, summing to 1); None with fewer than 2 trials or a
    constant metric, where nothing can be explained."""
    if not features or len(y) < 2 or np.ptp(y) == 0:
        return None
    from sklearn.ensemble import RandomForestRegressor  # imported here: a second of start-up the error paths skip

    columns = [np.where(np.isnan(f.values), np.nanmean(f.values) if np.any(~np.isnan(f.values)) else 0.0, f.values)
               for f in features]
    forest = RandomForestRegressor(n_estimators=200, random_state=seed).fit(np.column_stack(columns), y)
    return forest.feature_importances_


@dataclass
class ParamStat:
    feature: str
    parameter: str
    encoding: str
    correlation: float | None
    importance: float | None
    note: str


def parameter_stats(sweep: Sweep) -> list[ParamStat]:
    """Correlation and importance of each feature with the metric, most important first."""
    features = encode_features(sweep)
    y = np.array([t.metric for t in sweep.scored], dtype=float)
    importance = forest_importance(features, y)
    stats = []
    for i, f in enumerate(features):
        known = f.values[~np.isnan(f.values)]
        note = ("known for fewer than 2 trials with a metric" if len(known) < 2 else
                "constant: correlation undefined" if np.ptp(known) == 0 else
                "metric constant: correlation undefined" if np.ptp(y) == 0 else "")
        stats.append(ParamStat(f.name, f.parameter, f.encoding, pearson(f.values, y),
                               None if importance is None else float(importance[i]), note))
    return sorted(stats, key=lambda s: (-(s.importance or 0.0), -abs(s.correlation or 0.0), s.feature))


def importance_by_parameter(stats: list[ParamStat]) -> list[tuple[str, float]]:
    """Importances summed over each parameter's one-hot columns, most important first."""
    totals: dict[str, float] = {}
    for s in stats:
        if s.importance is not None:
            totals[s.parameter] = totals.get(s.parameter, 0.0) + s.importance
    return sorted(totals.items(), key=lambda item: -item[1])


def ranked(sweep: Sweep) -> list[Trial]:
    """Trials with a metric, best first (ties: launch order), then the others in launch order."""
    sign = -1 if sweep.maximize else 1
    return sorted(sweep.scored, key=lambda t: (sign * t.metric, t.number)) + \
        [t for t in sweep.trials if t.metric is None]


def pareto_front(sweep: Sweep) -> list[Trial]:
    """The trials no other trial beats with at most as many FLOPs, cheapest first: the best metric for that cost."""
    sign = -1 if sweep.maximize else 1
    candidates = sorted((t for t in sweep.scored if t.flops is not None and t.flops > 0),
                        key=lambda t: (t.flops, sign * t.metric, t.number))
    front: list[Trial] = []
    for trial in candidates:
        if not front or sweep.better(trial.metric, front[-1].metric):
            front.append(trial)
    return front
