"""Report on a sweep: the trials ranked by the metric, parameter importance and correlation (as W&B's
parameter-importance panel computes them), a parallel-coordinates plot, the metric per trial, the accuracy/FLOPs
Pareto front, and written observations derived from those numbers.

    python -m sweepcnn.sweep.report SWEEP_DIR [--out DIR] [--wandb]
    python -m sweepcnn.sweep.report ENTITY/PROJECT/SWEEP_ID [--out DIR] [--wandb]

SWEEP_DIR is a folder written by `python -m sweepcnn.sweep` (trials.csv, sweep.yaml, runs/<run_id>/); the report goes
to SWEEP_DIR/report/ unless --out says otherwise. A W&B sweep path is read online with `wandb.Api()` (it needs an API
key; its report goes to runs/sweeps/wandb-<SWEEP_ID>/report/). --wandb also logs the figures and tables to a W&B
run (mode: $WANDB_MODE, else online with an API key, else offline); from Python, `log_to_wandb` logs into the active
run if there is one.
"""
from __future__ import annotations

import argparse
import ast
import csv
import math
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.sweep.runner import swept_names
from sweepcnn.tracking import describe_wandb_run

FIXED_COLUMNS = ("trial", "run_id", "state", "epochs_run", "params", "flops", "test_acc", "seconds")
LOG_DISTRIBUTIONS = {"log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values",
                     "log_uniform", "q_log_uniform", "inv_log_uniform"}
WANDB_PATH = re.compile(r"^[\w.-]+/[\w.-]+/\w+$")
DPI = 100
STATE_STYLE = {"finished": ("o", "tab:blue"), "stopped": ("v", "tab:orange"), "running": ("s", "tab:gray"),
               "failed": ("x", "tab:red"), "crashed": ("X", "darkred")}


# ---------------------------------------------------------------------------------------------------- the data
@dataclass
class Trial:
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
    source: str
    metric: str
    maximize: bool
    parameters: list[str]  # the swept parameters, in trials.csv's column order
    specs: dict[str, Any]  # sweep.yaml's `parameters:` entries (distributions)
    trials: list[Trial]

    @property
    def scored(self) -> list[Trial]:
        return [t for t in self.trials if t.metric is not None]

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


def load_sweep_folder(root: str | Path) -> Sweep:
    """Read a `python -m sweepcnn.sweep` folder: its trials.csv, with the metric's name and goal from its sweep.yaml."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"sweep folder not found: {root}")
    config = _read_sweep_yaml(root / "sweep.yaml")
    metric, maximize = config["metric"]["name"], config["metric"].get("goal", "minimize") == "maximize"
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
    metric, maximize = config["metric"]["name"], config["metric"].get("goal", "minimize") == "maximize"
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


# ---------------------------------------------------------------------------------------------------- analysis
def param_kind(values: list[Any]) -> str:
    """"bool", "numeric" or "categorical" (anything else: strings, lists, numbers mixed with strings)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "numeric"
    return "categorical"


def _is_log(sweep: Sweep, name: str, values: list[Any]) -> bool:
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
            log = _is_log(sweep, name, raw)
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


# ---------------------------------------------------------------------------------------------------- observations
def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _gflops(flops: float) -> str:
    return f"{flops / 1e9:.3g} GFLOPs"


def _trial_list(trials: list[Trial], detail: Callable[[Trial], str]) -> str:
    return ", ".join(f"#{t.number} ({detail(t)})" for t in trials)


def observations(sweep: Sweep, stats: list[ParamStat], front: list[Trial]) -> list[str]:
    """Sentences that state what the numbers show; every one is computed from the sweep."""
    m, scored = sweep.metric, ranked(sweep)[:len(sweep.scored)]
    states = [t.state for t in sweep.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    goal = "higher" if sweep.maximize else "lower"
    lines = [f"{_count(len(states), 'trial')} ({counts or 'none'}); {len(scored)} with a {m} ({goal} is better)."]
    if not scored:
        lines.append(f"No trial has a {m}: there is no ranking, parameter importance, parallel-coordinates plot or "
                     f"Pareto front yet.")
        return lines + _state_sentences(sweep)
    lines.append(_best_sentence(sweep, scored[0]))
    if len(scored) >= 2:
        values = [t.metric for t in scored]
        lines.append(f"{m} ranges from {_fmt(scored[-1].metric)} (#{scored[-1].number}) to "
                     f"{_fmt(scored[0].metric)} (#{scored[0].number}), median {_fmt(statistics.median(values))}.")
    lines += _correlation_sentences(sweep, stats)
    lines.append(_importance_sentence(sweep, stats))
    lines.append(_pareto_sentence(sweep, front))
    return lines + _state_sentences(sweep)


def _best_sentence(sweep: Sweep, best: Trial) -> str:
    extras = [f"test_acc {_fmt(best.test_acc)}" if best.test_acc is not None else "",
              _gflops(best.flops) if best.flops is not None else "",
              f"{best.n_params:,.0f} parameters" if best.n_params is not None else ""]
    extra = "".join(f", {e}" for e in extras if e)
    config = ", ".join(f"{k}={_fmt(best.params.get(k))}" for k in sweep.parameters)
    return (f"Best trial: #{best.number} (run {best.run_id}, {best.state}) with {sweep.metric} "
            f"{_fmt(best.metric)}{extra}; config: {config or 'no swept parameters'}.")


def _correlation_sentences(sweep: Sweep, stats: list[ParamStat]) -> list[str]:
    m = sweep.metric
    defined = [s for s in stats if s.correlation is not None]
    lines = []
    if defined:
        top = max(defined, key=lambda s: abs(s.correlation))
        scale = " (log scale)" if top.encoding == "log10" else ""
        direction = "higher" if top.correlation > 0 else "lower"
        meaning = (f"trials with {top.feature} have {direction} {m}" if top.encoding == "one-hot" else
                   f"{top.parameter}=True goes with {direction} {m}" if top.encoding == "0/1" else
                   f"higher {top.parameter} goes with {direction} {m}")
        lines.append(f"{top.feature}{scale} has the strongest correlation with {m}: {top.correlation:+.2f} "
                     f"({meaning}).")
    elif len(sweep.scored) < 2:
        lines.append(f"Correlation needs at least 2 trials with a {m}; there is {len(sweep.scored)}.")
    else:
        lines.append(f"No parameter has a defined correlation with {m} (no parameter or {m} varies).")
    constant = [p for p in sweep.parameters
                if all(s.note.startswith("constant") for s in stats if s.parameter == p)
                and any(s.parameter == p for s in stats)]
    if constant and len(sweep.scored) >= 2:
        values = ", ".join(f"{p}={_fmt(next(t.params[p] for t in sweep.scored if t.params.get(p) is not None))}"
                           for p in constant)
        lines.append(f"Constant over the {len(sweep.scored)} trials with a {m}, so their correlation is undefined: "
                     f"{values}.")
    return lines


def _importance_sentence(sweep: Sweep, stats: list[ParamStat]) -> str:
    totals = importance_by_parameter(stats)
    if not totals:
        return f"Random-forest importance is undefined: it needs at least 2 trials with different {sweep.metric}."
    ranking = ", ".join(f"{p} {v:.2f}" for p, v in totals)
    return (f"Random-forest importance ({len(sweep.scored)} trials; one-hot columns summed per parameter): "
            f"{ranking}.")


def _pareto_sentence(sweep: Sweep, front: list[Trial]) -> str:
    if not front:
        return f"No trial with a {sweep.metric} has a FLOPs count: no Pareto front."
    unpriced = sum(1 for t in sweep.scored if t.flops is None or t.flops <= 0)
    left_out = f" ({_count(unpriced, 'trial')} without a FLOPs count left out)" if unpriced else ""
    points = _trial_list(front, lambda t: f"{_gflops(t.flops)}, {sweep.metric} {_fmt(t.metric)}")
    return (f"Pareto front ({'best' if sweep.maximize else 'lowest'} {sweep.metric} for at most that many FLOPs), "
            f"cheapest first: {points}{left_out}.")


def _state_sentences(sweep: Sweep) -> list[str]:
    def value(t: Trial) -> str:
        return f"{sweep.metric} {_fmt(t.metric)}" if t.metric is not None else f"no {sweep.metric}"

    groups = [("stopped", "stopped early", value),
              (("failed", "crashed"), "failed or crashed", lambda t: f"{t.state}, {value(t)}"),
              ("running", "still running", lambda t: value(t) + (" so far" if t.metric is not None else ""))]
    lines = []
    for states, what, detail in groups:
        trials = [t for t in sweep.trials if t.state in states]
        if trials:
            lines.append(f"{_count(len(trials), 'trial')} {what}: {_trial_list(trials, detail)}.")
    return lines


# ---------------------------------------------------------------------------------------------------- tables
def trial_table(sweep: Sweep, front: list[Trial]) -> tuple[list[str], list[list[Any]]]:
    """The ranked trials as (columns, rows): plain values (lists and mixed-type parameters as text)."""
    kinds = {p: param_kind([t.params.get(p) for t in sweep.trials]) for p in sweep.parameters}
    on_front = {t.number for t in front}
    columns = ["rank", "trial", "run_id", "state", sweep.metric, "pareto", "test_acc", "flops", "params",
               "epochs_run", "seconds", *sweep.parameters]
    rows = []
    for rank, t in enumerate(ranked(sweep), 1):
        values = [t.params.get(p) if kinds[p] != "categorical" or t.params.get(p) is None else str(t.params[p])
                  for p in sweep.parameters]
        rows.append([rank if t.metric is not None else None, t.number, t.run_id, t.state, t.metric,
                     t.number in on_front, t.test_acc, t.flops, t.n_params, t.epochs_run, t.seconds, *values])
    return columns, rows


def stats_table(stats: list[ParamStat]) -> tuple[list[str], list[list[Any]]]:
    columns = ["feature", "parameter", "encoding", "correlation", "importance", "note"]
    return columns, [[s.feature, s.parameter, s.encoding, s.correlation, s.importance, s.note] for s in stats]


def write_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return _fmt(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]) + "\n"


# ---------------------------------------------------------------------------------------------------- figures
# Figures are built with matplotlib.figure.Figure, whose savefig renders with Agg: no pyplot means no global figure
# registry to leak into (nothing to close) and no backend switch imposed on a program that imports this module.
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _cmap(sweep: Sweep):
    import matplotlib

    return matplotlib.colormaps["viridis" if sweep.maximize else "viridis_r"]  # the best trials are yellow


def _norm(values: list[float]):
    from matplotlib.colors import Normalize

    lo, hi = min(values), max(values)
    pad = 0.0 if hi > lo else max(abs(lo) * 0.05, 0.05)  # one value: a valid, centred colour scale
    return Normalize(lo - pad, hi + pad)


def plot_metric_vs_trial(sweep: Sweep, path: Path) -> None:
    """The metric of each trial in launch order, the running best as a step line; trials without a metric are
    marked along the bottom edge."""
    from matplotlib.transforms import blended_transform_factory

    fig = _figure(8, 5)
    ax = fig.add_subplot()
    for state in dict.fromkeys([*STATE_STYLE, *(t.state for t in sweep.trials)]):
        marker, color = STATE_STYLE.get(state, ("d", "tab:purple"))
        scored = [t for t in sweep.trials if t.state == state and t.metric is not None]
        unscored = [t for t in sweep.trials if t.state == state and t.metric is None]
        if scored:
            ax.scatter([t.number for t in scored], [t.metric for t in scored], marker=marker, color=color, s=40,
                       label=f"{state} ({len(scored)})", zorder=3)
        if unscored:  # no value to plot: a dotted line through the whole height, the marker on the bottom edge
            ax.scatter([t.number for t in unscored], [0.0] * len(unscored), marker=marker, color=color, s=60,
                       transform=blended_transform_factory(ax.transData, ax.transAxes), clip_on=False,
                       label=f"{state}, no {sweep.metric} ({len(unscored)})", zorder=3)
            for t in unscored:
                ax.axvline(t.number, color=color, ls=":", lw=1)
    best, xs, ys = None, [], []
    for t in sorted(sweep.scored, key=lambda t: t.number):
        best = t.metric if best is None or sweep.better(t.metric, best) else best
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step(xs + [max(t.number for t in sweep.trials)], ys + ys[-1:], where="post", color="black", lw=1.5,
                label="best so far")
    ax.set(xlabel="trial (launch order)", ylabel=sweep.metric, title=f"{sweep.metric} per trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path)


def _axis_positions(sweep: Sweep, name: str) -> tuple[list[float], list[tuple[float, str]]]:
    """Each trial's position in [0, 1] on a parameter's axis, and the axis's (position, label) ticks."""
    raw = [t.params.get(name) for t in sweep.trials]
    kind = param_kind(raw)
    if kind != "numeric":
        levels = sorted({str(v) for v in raw if v is not None}, key=lambda s: (s not in ("False", "True"), s))
        spot = {level: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, level in enumerate(levels)}
        return [np.nan if v is None else spot[str(v)] for v in raw], [(spot[lv], lv) for lv in levels]
    log = _is_log(sweep, name, raw)
    values = [np.nan if v is None else (math.log10(v) if log else float(v)) for v in raw]
    known = [v for v in values if not np.isnan(v)]
    if not known:
        return values, []
    lo, hi = min(known), max(known)
    if hi == lo:
        return [np.nan if np.isnan(v) else 0.5 for v in values], [(0.5, _fmt(10 ** lo if log else lo))]
    ticks = [lo, (lo + hi) / 2, hi]
    return [(v - lo) / (hi - lo) for v in values], [((v - lo) / (hi - lo), _fmt(10 ** v if log else v))
                                                    for v in ticks]


def plot_parallel_coordinates(sweep: Sweep, path: Path) -> None:
    """One vertical axis per swept parameter and one for the metric; one line per trial, coloured by the metric
    (trials without one in light grey)."""
    from matplotlib.cm import ScalarMappable

    axes = [_axis_positions(sweep, name) for name in sweep.parameters]
    scored_values = [t.metric for t in sweep.scored]
    norm, cmap = _norm(scored_values), _cmap(sweep)
    lo, hi = norm.vmin, norm.vmax
    axes.append(([np.nan if t.metric is None else (t.metric - lo) / (hi - lo) for t in sweep.trials],
                 [((v - lo) / (hi - lo), _fmt(v)) for v in (min(scored_values), max(scored_values))]))
    names = [*sweep.parameters, sweep.metric]
    fig = _figure(max(8.0, 1.5 * len(names)), 5.5)
    ax = fig.add_subplot()
    xs = list(range(len(names)))
    sign = 1 if sweep.maximize else -1
    order = sorted(range(len(sweep.trials)), key=lambda i: (sweep.trials[i].metric is not None,
                                                            sign * (sweep.trials[i].metric or 0.0)))
    for i in order:  # unscored first, the best last so that it is drawn on top
        metric = sweep.trials[i].metric
        color = (0.75, 0.75, 0.75, 0.6) if metric is None else cmap(norm(metric))
        ax.plot(xs, [positions[i] for positions, _ in axes], color=color, lw=1.4, alpha=0.9)
    for x, (_, ticks) in zip(xs, axes):
        ax.axvline(x, color="black", lw=0.8)
        for pos, label in ticks:
            ax.text(x, pos, label, fontsize=7, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xticks(xs, names, rotation=25, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.3, len(names) - 0.7)
    ax.set_ylim(-0.06, 1.06)
    ax.set_title(f"parallel coordinates, coloured by {sweep.metric}")
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=sweep.metric)
    fig.savefig(path)


def plot_importance(sweep: Sweep, stats: list[ParamStat], path: Path) -> None:
    """Random-forest importance and correlation with the metric, one bar per feature, most important on top."""
    fig = _figure(9, max(3.5, 1.2 + 0.3 * len(stats)))
    left, right = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(stats)))[::-1]
    left.barh(ys, [s.importance or 0.0 for s in stats], color="tab:green")
    left.set(yticks=ys, xlabel="random-forest importance", title="importance")
    left.set_yticklabels([s.feature + (" (log)" if s.encoding == "log10" else "") for s in stats], fontsize=8)
    right.barh(ys, [s.correlation or 0.0 for s in stats],
               color=["tab:blue" if (s.correlation or 0) >= 0 else "tab:red" for s in stats])
    for y, s in zip(ys, stats):
        if s.correlation is None:
            right.text(0, y, " undefined", va="center", fontsize=7, color="gray")
    right.axvline(0, color="black", lw=0.8)
    right.set(xlim=(-1, 1), xlabel=f"Pearson correlation with {sweep.metric}", title="correlation")
    fig.savefig(path)


def plot_pareto(sweep: Sweep, front: list[Trial], path: Path) -> None:
    """Metric against FLOPs per image (log axis), the Pareto front as a step line through its trials."""
    points = [t for t in sweep.scored if t.flops is not None and t.flops > 0]
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    others = [t for t in points if t not in front]
    ax.scatter([t.flops for t in others], [t.metric for t in others], color="tab:gray", s=30,
               label=f"trials ({len(others)})")
    ax.scatter([t.flops for t in front], [t.metric for t in front], color="tab:red", s=50, zorder=3,
               label=f"Pareto front ({len(front)})")
    far = max(t.flops for t in points)
    ax.step([t.flops for t in front] + [far], [t.metric for t in front] + [front[-1].metric], where="post",
            color="tab:red", lw=1.2)
    for t in front:
        ax.annotate(f"#{t.number}", (t.flops, t.metric), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="FLOPs per image (log scale)", ylabel=sweep.metric,
           title=f"{sweep.metric} vs FLOPs: {'best' if sweep.maximize else 'lowest'} for at most that many FLOPs")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------------- the report
@dataclass
class Report:
    out_dir: Path
    sweep: Sweep
    observations: list[str]
    files: dict[str, Path] = field(default_factory=dict)  # name -> file written
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)
    wandb_run: Any = None  # the W&B run it was logged to, if any

    @property
    def images(self) -> dict[str, Path]:
        return {name: path for name, path in self.files.items() if path.suffix == ".png"}


def write_report(sweep: Sweep, out_dir: str | Path) -> Report:
    """Write every output the data allows into out_dir (with no trial with a metric: the trials table, the
    per-trial plot and the observations)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = parameter_stats(sweep) if sweep.scored else []
    front = pareto_front(sweep)
    report = Report(out_dir, sweep, observations(sweep, stats, front))
    report.tables["trials"] = trial_table(sweep, front)
    write_csv(_add(report, "trials_csv", "trials_sorted.csv"), *report.tables["trials"])
    _add(report, "trials_md", "trials_sorted.md").write_text(
        f"# Trials of {sweep.source}, best {sweep.metric} first\n\n" + markdown_table(*report.tables["trials"]))
    if sweep.trials:
        plot_metric_vs_trial(sweep, _add(report, "metric_vs_trial", "metric_vs_trial.png"))
    if stats:
        report.tables["importance"] = stats_table(stats)
        write_csv(_add(report, "importance_csv", "importance.csv"), *report.tables["importance"])
        if any(s.importance is not None or s.correlation is not None for s in stats):
            plot_importance(sweep, stats, _add(report, "importance", "importance.png"))
    if sweep.scored:
        plot_parallel_coordinates(sweep, _add(report, "parallel_coordinates", "parallel_coordinates.png"))
    if front:
        plot_pareto(sweep, front, _add(report, "pareto", "pareto.png"))
    _add(report, "observations", "observations.md").write_text(_observations_markdown(report))
    return report


def _add(report: Report, name: str, filename: str) -> Path:
    report.files[name] = report.out_dir / filename
    return report.files[name]


def _observations_markdown(report: Report) -> str:
    sweep, table = report.sweep, report.files["trials_md"].name
    figures = "".join(f"\n![{name}]({path.name})\n" for name, path in report.images.items())
    bullets = "".join(f"- {line}\n" for line in report.observations)
    goal = "maximize" if sweep.maximize else "minimize"
    return (f"# Sweep report: {sweep.source}\n\nMetric: {sweep.metric} ({goal}).\n\n{bullets}\n"
            f"The ranked trials: [{table}]({table})\n{figures}")


def log_to_wandb(report: Report, mode: str | None = None, wandb_dir: str | Path | None = None) -> Any:
    """Log the report's images and tables: into the active W&B run if there is one, else into a new run (mode
    from `mode`, else $WANDB_MODE, else online with an API key, else offline), which is then finished."""
    import wandb

    from sweepcnn.tracking import resolve_mode

    run, own = wandb.run, wandb.run is None
    if own:
        run = wandb.init(job_type="sweep-report", mode=resolve_mode(mode), dir=str(wandb_dir or report.out_dir),
                         config={"sweep": report.sweep.source, "metric": report.sweep.metric})
    payload: dict[str, Any] = {f"sweep_report/{name}": wandb.Image(str(path)) for name, path in report.images.items()}
    for name, (columns, rows) in report.tables.items():
        data = [[_plain(v) for v in row] for row in rows]
        payload[f"sweep_report/{name}_table"] = wandb.Table(columns=columns, data=data)
    run.log(payload)
    if own:
        run.finish()
    return run


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


# ---------------------------------------------------------------------------------------------------- CLI
def load(source: str) -> tuple[Sweep, Path]:
    """A sweep folder or, when no such folder exists, a W&B sweep path; and the default report folder."""
    path = Path(source)
    if not path.exists() and WANDB_PATH.match(source):
        from sweepcnn.tracking import has_api_key

        if not has_api_key():
            raise UserError(f"{source}: no such sweep folder, and reading it as the W&B sweep ENTITY/PROJECT/SWEEP_ID "
                            f"needs a W&B API key (wandb login)")
        return load_wandb_sweep(source), Path("runs") / "sweeps" / f"wandb-{source.rsplit('/', 1)[1]}" / "report"
    return load_sweep_folder(path), path / "report"


def report(source: str, out_dir: str | Path | None = None, log_wandb: bool = False) -> Report:
    """Read a sweep (folder or W&B path), write its report, and log it to W&B when asked or when this process
    already has an active W&B run."""
    sweep, default_out = load(source)
    result = write_report(sweep, out_dir or default_out)
    wandb = sys.modules.get("wandb")  # an active run implies wandb was imported: no import otherwise
    if log_wandb or (wandb is not None and wandb.run is not None):
        result.wandb_run = log_to_wandb(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m sweepcnn.sweep.report", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a sweep folder of `python -m sweepcnn.sweep`, or a W&B sweep ENTITY/PROJECT/ID")
    parser.add_argument("--out", default=None, help="report folder (default: SWEEP_DIR/report)")
    parser.add_argument("--wandb", action="store_true", help="also log the figures and tables to a W&B run")
    args = parser.parse_args(argv)
    result = report(args.sweep, args.out, args.wandb)
    sweep = result.sweep
    print(f"sweep {sweep.source}: {sweep.metric} ({'maximize' if sweep.maximize else 'minimize'})")
    for line in result.observations:
        print(f"- {line}")
    print(f"report: {result.out_dir}/ ({', '.join(p.name for p in result.files.values())})")
    if result.wandb_run is not None:
        print(describe_wandb_run(result.wandb_run))
    if not sweep.scored:
        trials = _count(len(sweep.trials), "trial")
        written = ", ".join(p.name for p in result.files.values())
        raise UserError(f"no trial of {sweep.source} has a {sweep.metric} ({trials}): wrote only {written}")
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
