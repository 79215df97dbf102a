"""The one way figures are made and saved.

matplotlib.figure.Figure renders with Agg on savefig: no pyplot figure registry to leak into (nothing to close)
and no backend switch imposed on a program that imports this module.
"""
from __future__ import annotations

from pathlib import Path

DPI = 100


def figure(width: float, height: float, constrained: bool = True):
    """A new Figure of width x height inches at DPI."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path
