"""Figures of training curves and ablations, drawn with matplotlib (the extra ``hcframe[report]``).

matplotlib is imported when a figure is drawn, never when hcframe is imported;
:func:`require_matplotlib` tells, in one line, how to install it. Figures are
:class:`matplotlib.figure.Figure` objects made without pyplot (no global state, no display), saved
as PNG and SVG by :func:`save_figure`.

* :func:`curves_figure`: one figure of curves over training steps, in panels (one per task, say),
  each curve raw (faint) and smoothed (:func:`smooth`, TensorBoard's debiased exponential moving
  average) when ``smoothing > 0``; a logarithmic y axis where a panel asks for it.
* :func:`bars_figure`: grouped bars (one group per category, one bar per series) with mean ± std
  error bars and the mean written above each bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "FORMATS",
    "Curve",
    "MatplotlibMissing",
    "Panel",
    "bars_figure",
    "curves_figure",
    "require_matplotlib",
    "save_figure",
    "smooth",
]

#: The files each figure is saved as.
FORMATS = ("png", "svg")
DPI = 100


class MatplotlibMissing(RuntimeError):
    """matplotlib is not installed (one line, with the install command)."""


def require_matplotlib(what: str = "hcframe report") -> None:
    """Raise :class:`MatplotlibMissing` when matplotlib cannot be imported."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MatplotlibMissing(f"{what} draws its figures with matplotlib, which is not installed; install it with: pip install 'hcframe[report]'")


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average with weight ``weight`` in [0, 1),
    divided by ``1 - weight**n`` after ``n`` finite values, so the first values are not pulled
    towards 0. Values that are not finite are kept as they are and do not enter the average."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, last, n = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1.0 - weight) * v
        n += 1
        out.append(last / (1.0 - weight**n) if weight > 0 else last)
    return out


@dataclass(frozen=True)
class Curve:
    """One line: ``steps`` and ``values`` of equal length (NaN: no point)."""

    label: str
    steps: Sequence[int]
    values: Sequence[float]


@dataclass(frozen=True)
class Panel:
    """One set of axes: its title, curves, y label and whether its y axis is logarithmic."""

    title: str
    curves: Sequence[Curve]
    ylabel: str = ""
    log_y: bool = False
    percent: bool = False  # values in [0, 1] shown in %


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def curves_figure(title: str, panels: Sequence[Panel], smoothing: float = 0.0, columns: int = 3) -> Any:
    """A figure of ``panels`` (up to ``columns`` side by side) over training steps. With
    ``smoothing > 0`` every curve is drawn twice in its colour: raw and faint, then smoothed."""
    if not panels:
        raise ValueError("no panels to draw")
    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _new_figure(9.0 if cols == 1 else 4.2 * cols, 5.2 if rows == 1 else 3.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.suptitle(title)
    for ax, panel in zip(axes.flat, panels):
        scale = 100.0 if panel.percent else 1.0
        for i, curve in enumerate(panel.curves):
            if len(curve.steps) != len(curve.values):
                raise ValueError(f"curve {curve.label!r} has {len(curve.steps)} steps but {len(curve.values)} values")
            colour = f"C{i % 10}"
            values = [scale * v for v in curve.values]
            if smoothing > 0:
                ax.plot(curve.steps, values, color=colour, alpha=0.25, linewidth=1.0, gid=f"raw:{curve.label}")
                ax.plot(curve.steps, smooth(values, smoothing), color=colour, linewidth=1.6, label=curve.label, gid=f"smoothed:{curve.label}")
            else:
                marker = "o" if len(values) < 30 else None
                ax.plot(curve.steps, values, color=colour, linewidth=1.4, marker=marker, markersize=3, label=curve.label, gid=f"raw:{curve.label}")
        if panel.log_y:
            ax.set_yscale("log")
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel + (" (%)" if panel.percent else ""))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return fig


def bars_figure(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], Sequence[float] | None]],
    title: str,
    ylabel: str = "",
    value_format: str = "{:.1f}",
) -> Any:
    """Grouped bars: for each ``(label, means, stds)`` of ``series`` one bar per category, with a
    ± std error bar (NaN std: none) and the mean above it. A NaN mean draws no bar."""
    if not categories or not series:
        raise ValueError("a bar chart needs at least one category and one series")
    for label, means, stds in series:
        if len(means) != len(categories) or (stds is not None and len(stds) != len(categories)):
            raise ValueError(f"series {label!r}: give one mean (and std) per category ({len(categories)})")
    if not any(math.isfinite(m) for _, means, _ in series for m in means):
        raise ValueError("no finite means to draw")
    fig = _new_figure(min(14.0, max(6.4, 2.5 + 0.25 * len(categories) * len(series))), 5.2)
    ax = fig.subplots()
    width = 0.8 / len(series)
    for s, (label, means, stds) in enumerate(series):
        xs = [c + (s - (len(series) - 1) / 2) * width for c in range(len(categories))]
        errors = [e if (stds is not None and math.isfinite(e)) else 0.0 for e in (stds or [math.nan] * len(means))]
        drawn = [(x, m, e) for x, m, e in zip(xs, means, errors) if math.isfinite(m)]
        if not drawn:
            continue
        bars = ax.bar([x for x, _, _ in drawn], [m for _, m, _ in drawn], width * 0.95, yerr=[e for _, _, e in drawn],
                      capsize=3, color=f"C{s % 10}", label=label, gid=f"bars:{label}")  # fmt: skip
        ax.bar_label(bars, labels=[value_format.format(m) for _, m, _ in drawn], padding=2, fontsize="x-small")
    ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 3 else 0, ha="right" if len(categories) > 3 else "center")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    return fig


def save_figure(fig: Any, out_dir: str | Path, stem: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``<out_dir>/<stem>.<format>`` for each format; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths
