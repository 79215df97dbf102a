"""A sweep's figures: the metric per trial, parallel coordinates, parameter importance and correlation, and the
metric/FLOPs Pareto front. matplotlib is imported when a figure is drawn, not with this module."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sweepcnn.report.figures import figure, save_figure
from sweepcnn.report.tables import format_cell
from sweepcnn.sweep.analysis import ParamStat, is_log, param_kind
from sweepcnn.sweep.trials import Sweep, Trial

STATE_STYLE = {"finished": ("o", "tab:blue"), "stopped": ("v", "tab:orange"), "running": ("s", "tab:gray"),
               "failed": ("x", "tab:red"), "crashed": ("X", "darkred"), "interrupted": ("P", "tab:olive")}


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

    fig = figure(8, 5)
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
    save_figure(fig, path)


def _axis_positions(sweep: Sweep, name: str) -> tuple[list[float], list[tuple[float, str]]]:
    """Each trial's position in [0, 1] on a parameter's axis, and the axis's (position, label) ticks."""
    raw = [t.params.get(name) for t in sweep.trials]
    kind = param_kind(raw)
    if kind != "numeric":
        levels = sorted({str(v) for v in raw if v is not None}, key=lambda s: (s not in ("False", "True"), s))
        spot = {level: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, level in enumerate(levels)}
        return [np.nan if v is None else spot[str(v)] for v in raw], [(spot[lv], lv) for lv in levels]
    log = is_log(sweep, name, raw)
    values = [np.nan if v is None else (math.log10(v) if log else float(v)) for v in raw]
    known = [v for v in values if not np.isnan(v)]
    if not known:
        return values, []
    lo, hi = min(known), max(known)
    if hi == lo:
        return [np.nan if np.isnan(v) else 0.5 for v in values], [(0.5, format_cell(10 ** lo if log else lo))]
    ticks = [lo, (lo + hi) / 2, hi]
    return [(v - lo) / (hi - lo) for v in values], [((v - lo) / (hi - lo), format_cell(10 ** v if log else v))
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
                 [((v - lo) / (hi - lo), format_cell(v)) for v in (min(scored_values), max(scored_values))]))
    names = [*sweep.parameters, sweep.metric]
    fig = figure(max(8.0, 1.5 * len(names)), 5.5)
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
    save_figure(fig, path)


def plot_importance(sweep: Sweep, stats: list[ParamStat], path: Path) -> None:
    """Random-forest importance and correlation with the metric, one bar per feature, most important on top."""
    fig = figure(9, max(3.5, 1.2 + 0.3 * len(stats)))
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
    save_figure(fig, path)


def plot_pareto(sweep: Sweep, front: list[Trial], path: Path) -> None:
    """Metric against FLOPs per image (log axis), the Pareto front as a step line through its trials."""
    points = [t for t in sweep.scored if t.flops is not None and t.flops > 0]
    fig = figure(8, 5)
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
    save_figure(fig, path)
