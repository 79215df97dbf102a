"""Sentences that state what a sweep's numbers show (observations.md and the CLI's output); each one is computed
from the sweep."""
from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from sweepcnn.report.tables import format_cell
from sweepcnn.sweep.analysis import ParamStat, importance_by_parameter, ranked
from sweepcnn.sweep.trials import Sweep, Trial


def _param(value: Any) -> str:
    """A parameter's value as the trials table shows it (lists in Python's notation, as in trials.csv)."""
    return format_cell(str(value) if isinstance(value, (list, dict)) else value)


def plural(n: int, noun: str) -> str:
    """"1 trial", "2 trials"."""
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
    lines = [f"{plural(len(states), 'trial')} ({counts or 'none'}); {len(scored)} with a {m} ({goal} is better)."]
    if not scored:
        lines.append(f"No trial has a {m}: there is no ranking, parameter importance, parallel-coordinates plot or "
                     f"Pareto front yet.")
        return lines + _state_sentences(sweep)
    lines.append(_best_sentence(sweep, scored[0]))
    if len(scored) >= 2:
        median = statistics.median(t.metric for t in scored)
        lines.append(f"{m} ranges from {format_cell(scored[-1].metric)} (#{scored[-1].number}) to "
                     f"{format_cell(scored[0].metric)} (#{scored[0].number}), median {format_cell(median)}.")
    lines += _correlation_sentences(sweep, stats)
    lines.append(_importance_sentence(sweep, stats))
    lines.append(_pareto_sentence(sweep, front))
    return lines + _state_sentences(sweep)


def _best_sentence(sweep: Sweep, best: Trial) -> str:
    extras = [f"test_acc {format_cell(best.test_acc)}" if best.test_acc is not None else "",
              _gflops(best.flops) if best.flops is not None else "",
              f"{best.n_params:,.0f} parameters" if best.n_params is not None else ""]
    extra = "".join(f", {e}" for e in extras if e)
    config = ", ".join(f"{k}={_param(best.params.get(k))}" for k in sweep.parameters)
    return (f"Best trial: #{best.number} (run {best.run_id}, {best.state}) with {sweep.metric} "
            f"{format_cell(best.metric)}{extra}; config: {config or 'no swept parameters'}.")


def _correlation_sentences(sweep: Sweep, stats: list[ParamStat]) -> list[str]:
    m = sweep.metric
    defined = [s for s in stats if s.correlation is not None]
    lines = []
    if defined:
        tied = _strongest(defined)
        if len(tied) == 1:
            lines.append(f"{_named(tied[0])} has the strongest correlation with {m}: {tied[0].correlation:+.2f} "
                         f"({_meaning(tied[0], m)}).")
        else:
            each = "; ".join(f"{_named(s)} {s.correlation:+.2f} ({_meaning(s, m)})" for s in tied)
            lines.append(f"{len(tied)} parameters tie for the strongest correlation with {m} (size "
                         f"{abs(tied[0].correlation):.2f}): {each}.")
    elif len(sweep.scored) < 2:
        lines.append(f"Correlation needs at least 2 trials with a {m}; there is {len(sweep.scored)}.")
    else:
        lines.append(f"No parameter has a defined correlation with {m} (no parameter or {m} varies).")
    constant = [p for p in sweep.parameters
                if all(s.note.startswith("constant") for s in stats if s.parameter == p)
                and any(s.parameter == p for s in stats)]
    if constant and len(sweep.scored) >= 2:
        values = ", ".join(f"{p}={_param(next(t.params[p] for t in sweep.scored if t.params.get(p) is not None))}"
                           for p in constant)
        lines.append(f"Constant over the {len(sweep.scored)} trials with a {m}, so their correlation is undefined: "
                     f"{values}.")
    return lines


def _strongest(defined: list[ParamStat]) -> list[ParamStat]:
    """The features whose correlation is the largest in size as the report prints it (2 decimals), one per
    parameter: the one-hot columns of a two-valued parameter always tie with each other, which is no tie."""
    size = max(round(abs(s.correlation), 2) for s in defined)
    tied: dict[str, ParamStat] = {}
    for s in sorted(defined, key=lambda s: -abs(s.correlation)):
        if round(abs(s.correlation), 2) == size:
            tied.setdefault(s.parameter, s)
    return list(tied.values())


def _named(stat: ParamStat) -> str:
    return stat.feature + (" (log scale)" if stat.encoding == "log10" else "")


def _meaning(stat: ParamStat, m: str) -> str:
    direction = "higher" if stat.correlation > 0 else "lower"
    return (f"trials with {stat.feature} have {direction} {m}" if stat.encoding == "one-hot" else
            f"{stat.parameter}=True goes with {direction} {m}" if stat.encoding == "0/1" else
            f"higher {stat.parameter} goes with {direction} {m}")


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
    left_out = f" ({plural(unpriced, 'trial')} without a FLOPs count left out)" if unpriced else ""
    points = _trial_list(front, lambda t: f"{_gflops(t.flops)}, {sweep.metric} {format_cell(t.metric)}")
    return (f"Pareto front ({'best' if sweep.maximize else 'lowest'} {sweep.metric} for at most that many FLOPs), "
            f"cheapest first: {points}{left_out}.")


def _state_sentences(sweep: Sweep) -> list[str]:
    def value(t: Trial) -> str:
        return f"{sweep.metric} {format_cell(t.metric)}" if t.metric is not None else f"no {sweep.metric}"

    groups = [("stopped", "stopped early", value),
              (("failed", "crashed"), "failed or crashed", lambda t: f"{t.state}, {value(t)}"),
              ("interrupted", "interrupted (resumed when the sweep runs again)", value),
              ("running", "still running", lambda t: value(t) + (" so far" if t.metric is not None else ""))]
    lines = []
    for states, what, detail in groups:
        trials = [t for t in sweep.trials if t.state in states]
        if trials:
            lines.append(f"{plural(len(trials), 'trial')} {what}: {_trial_list(trials, detail)}.")
    return lines
