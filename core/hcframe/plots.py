"""PNG charts drawn with Pillow: line charts of training curves and grouped bar charts.

Two functions, explicit arguments, no global state:

* :func:`line_chart` — several :class:`LineSeries` over a numeric x axis (training step), with
  ticks, axis labels, a legend, a title and an optional logarithmic y axis. Points whose y is
  not finite (NaN, inf) are skipped, and so are points with ``y <= 0`` on a log axis; the line
  joins the remaining points.
* :func:`bar_chart` — grouped bars (one group per category, one bar per :class:`BarSeries`)
  with mean ± std error bars and the mean written above each bar.

Both return a :class:`Chart`: the image plus the mapping from data to pixels, so callers (and
tests) can tell where a value was drawn. ``chart.save(path)`` writes the PNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "BarSeries", "Chart", "LineSeries", "bar_chart", "format_tick", "line_chart", "nice_ticks", "log_ticks"]

RGB = tuple[int, int, int]

# Ten well-separated colours (the usual categorical palette of plotting libraries).
PALETTE: tuple[RGB, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
BACKGROUND: RGB = (255, 255, 255)
INK: RGB = (30, 30, 30)
GRID: RGB = (225, 225, 225)
AXIS: RGB = (90, 90, 90)


@dataclass(frozen=True)
class LineSeries:
    """One curve: ``x`` and ``y`` of equal length; ``color`` defaults to the palette's next one."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: RGB | None = None


@dataclass(frozen=True)
class BarSeries:
    """One bar per category: ``means[i]`` (NaN: no bar) and optional ``stds[i]`` (NaN: no error bar)."""

    label: str
    means: Sequence[float]
    stds: Sequence[float] | None = None
    color: RGB | None = None


@dataclass
class Chart:
    """A drawn chart. ``box`` is the plot area (left, top, right, bottom) in pixels; the data
    ranges map linearly (y logarithmically when ``log_y``) onto it. ``bars`` holds each drawn
    bar's rectangle keyed by (series label, category)."""

    image: Image.Image
    box: tuple[int, int, int, int]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    log_y: bool = False
    bars: dict[tuple[str, str], tuple[int, int, int, int]] = field(default_factory=dict)

    def x_to_pixel(self, x: float) -> float:
        left, _, right, _ = self.box
        lo, hi = self.x_range
        return left + (x - lo) / (hi - lo) * (right - left)

    def y_to_pixel(self, y: float) -> float:
        _, top, _, bottom = self.box
        lo, hi = self.y_range
        if self.log_y:
            y, lo, hi = math.log10(y), math.log10(lo), math.log10(hi)
        return bottom - (y - lo) / (hi - lo) * (bottom - top)

    def to_pixel(self, x: float, y: float) -> tuple[int, int]:
        """The pixel (column, row) where the data point ``(x, y)`` is drawn."""
        return round(self.x_to_pixel(x)), round(self.y_to_pixel(y))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.image.save(path, format="PNG")
        return path


# --- ticks ---------------------------------------------------------------------------------------
def _nice_step(span: float, max_ticks: int) -> float:
    raw = span / max(1, max_ticks - 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1.0, 2.0, 2.5, 5.0, 10.0):
        if multiple * magnitude >= raw * (1 - 1e-9):
            return multiple * magnitude
    return 10.0 * magnitude


def nice_ticks(lo: float, hi: float, max_ticks: int = 6, integer: bool = False) -> tuple[list[float], float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering ``[lo, hi]``.

    Returns ``(ticks, step)``; the first tick is <= ``lo`` and the last >= ``hi``, so the ticks
    also give the axis range. A zero-width range is widened around its value. ``integer``: whole
    numbers only (steps of at least 1, never 2.5), for axes such as training steps."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"nice_ticks: need finite lo <= hi, got {lo}, {hi}")
    if hi == lo:
        pad = 1.0 if integer else abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, max_ticks)
    if integer:
        step = max(1.0, step * 2 if step == 2.5 else step)
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    count = int(round((last - first) / step))
    return [first + i * step for i in range(count + 1)], step


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis covering ``[lo, hi]`` (both > 0): the powers of ten, plus 2× and 5×
    when the range spans at most two decades. The first tick is <= ``lo``, the last >= ``hi``."""
    if not (lo > 0 and hi >= lo):
        raise ValueError(f"log_ticks: need 0 < lo <= hi, got {lo}, {hi}")
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if last == first:
        last += 1
    multiples = (1, 2, 5) if last - first <= 2 else (1,)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in multiples]
    ticks = [t for t in ticks if t <= 10.0**last]
    # Trim ticks outside the data, keeping one on each side so the axis still covers it.
    below = [t for t in ticks if t <= lo * (1 + 1e-12)]
    above = [t for t in ticks if t >= hi * (1 - 1e-12)]
    return [t for t in ticks if below[-1] <= t <= above[0]]


def format_tick(value: float, step: float | None = None) -> str:
    """A short label: integers as integers (thousands as ``k``), otherwise as many decimals as the
    tick step needs; very small or large magnitudes in ``g`` notation."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:.2g}"
    if magnitude >= 1e4 and float(value).is_integer() and value % 1000 == 0:
        return f"{value / 1000:g}k"
    if step is None:
        return f"{value:.4g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if not math.isclose(round(step, decimals), step, rel_tol=1e-6, abs_tol=0):
        decimals += 1  # steps such as 0.25
    return f"{value:.{decimals}f}"


# --- drawing helpers -----------------------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, anchor: str, fill: RGB = INK) -> None:
    """``anchor`` as Pillow's two letters (horizontal l/m/r, vertical t/m/b for top/middle/bottom)."""
    draw.text(xy, text, font=font, fill=fill, anchor={"t": anchor[0] + "a", "m": anchor[0] + "m", "b": anchor[0] + "d"}[anchor[1]])


def _vertical_text(image: Image.Image, text: str, font, center: tuple[float, float], fill: RGB = INK) -> None:
    probe = ImageDraw.Draw(image)
    w, h = _text_size(probe, text, font)
    tile = Image.new("RGBA", (w + 6, h + 8), (255, 255, 255, 0))
    ImageDraw.Draw(tile).text((3, (h + 8) / 2), text, font=font, fill=fill + (255,), anchor="lm")
    turned = tile.rotate(90, expand=True)
    image.paste(turned, (round(center[0] - turned.width / 2), round(center[1] - turned.height / 2)), turned)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Split ``text`` at ``/``, ``_`` and spaces into lines no wider than ``width`` (where possible)."""
    pieces: list[str] = []
    current = ""
    for ch in text:
        current += ch
        if ch in "/_ ":
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    lines: list[str] = []
    line = ""
    for piece in pieces:
        if line and _text_size(draw, (line + piece).rstrip(), font)[0] > width:
            lines.append(line.rstrip())
            line = piece
        else:
            line += piece
    if line:
        lines.append(line.rstrip())
    return lines


def _legend_width(draw: ImageDraw.ImageDraw, labels: Sequence[str], font) -> int:
    return max(_text_size(draw, label, font)[0] for label in labels) + 40


def _draw_legend(draw: ImageDraw.ImageDraw, entries: Sequence[tuple[str, RGB]], font, left: int, top: int, swatch: str) -> None:
    row = max(_text_size(draw, "Ag", font)[1] + 8, 16)
    for i, (label, color) in enumerate(entries):
        y = top + i * row + row / 2
        if swatch == "line":
            draw.line([(left, y), (left + 20, y)], fill=color, width=3)
        else:
            draw.rectangle([left + 4, y - 5, left + 16, y + 5], fill=color)
        _draw_text(draw, (left + 26, y), label, font, "lm")


def _colors(requested: Sequence[RGB | None]) -> list[RGB]:
    return [c if c is not None else PALETTE[i % len(PALETTE)] for i, c in enumerate(requested)]


# --- line chart ----------------------------------------------------------------------------------
def line_chart(
    series: Sequence[LineSeries],
    *,
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
    log_y: bool = False,
    size: tuple[int, int] = (900, 520),
    line_width: int = 2,
    markers: bool | None = None,
    integer_x: bool = False,
) -> Chart:
    """Draw ``series`` as lines on shared axes; see the module docstring for skipped points.

    ``markers``: dots at the data points (default: on each series of at most 60 points, so a
    curve with a single point is still visible). ``integer_x``: whole-number x ticks (steps).
    Raises ``ValueError`` when there is nothing to
    draw (no series, or no point with a finite x and a finite, and on a log axis positive, y)."""
    if not series:
        raise ValueError(f"line_chart {title!r}: no series given")
    colors = _colors([s.color for s in series])
    cleaned: list[list[tuple[float, float]]] = []
    for s in series:
        if len(s.x) != len(s.y):
            raise ValueError(f"line_chart {title!r}: series {s.label!r} has {len(s.x)} x values but {len(s.y)} y values")
        points = []
        for x, y in zip(s.x, s.y):
            if x is None or y is None:
                continue
            x, y = float(x), float(y)
            if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y):
                points.append((x, y))
        points.sort(key=lambda p: p[0])
        cleaned.append(points)
    every = [p for points in cleaned for p in points]
    if not every:
        what = "finite, positive" if log_y else "finite"
        raise ValueError(f"line_chart {title!r}: no {what} data points to plot")

    xs = [p[0] for p in every]
    ys = [p[1] for p in every]
    x_ticks, x_step = nice_ticks(min(xs), max(xs), max_ticks=8, integer=integer_x)
    if log_y:
        y_ticks, y_step = log_ticks(min(ys), max(ys)), None
    else:
        y_ticks, y_step = nice_ticks(min(ys), max(ys), max_ticks=7)

    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, title_font = _font(12), _font(15)
    y_labels = [format_tick(t, y_step) for t in y_ticks]
    tick_w = max(_text_size(draw, s, font)[0] for s in y_labels)
    text_h = _text_size(draw, "Ag", font)[1]
    left = 12 + (text_h + 10 if ylabel else 0) + tick_w + 8
    legend_w = _legend_width(draw, [s.label for s in series], font)
    right = width - legend_w - 16
    top = 44
    bottom = height - (text_h * 2 + 30 if xlabel else text_h + 20)
    if right - left < 100 or bottom - top < 80:
        raise ValueError(f"line_chart {title!r}: size {size} is too small for the labels and legend")
    chart = Chart(image, (left, top, right, bottom), (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1]), log_y)

    for t, label in zip(y_ticks, y_labels):
        py = chart.y_to_pixel(t)
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.line([(left - 4, py), (left, py)], fill=AXIS)
        _draw_text(draw, (left - 7, py), label, font, "rm")
    for t in x_ticks:
        px = chart.x_to_pixel(t)
        draw.line([(px, top), (px, bottom)], fill=GRID)
        draw.line([(px, bottom), (px, bottom + 4)], fill=AXIS)
        _draw_text(draw, (px, bottom + 7), format_tick(t, x_step), font, "mt")
    draw.rectangle([left, top, right, bottom], outline=AXIS)

    for points, color in zip(cleaned, colors):
        pixels = [chart.to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=line_width, joint="curve")
        if markers or (markers is None and len(pixels) <= 60):
            for px, py in pixels:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)

    _draw_text(draw, ((left + right) / 2, 14), title, title_font, "mt")
    if xlabel:
        _draw_text(draw, ((left + right) / 2, height - 8), xlabel, font, "mb")
    if ylabel:
        _vertical_text(image, ylabel, font, (12 + text_h / 2, (top + bottom) / 2))
    _draw_legend(draw, [(s.label, c) for s, c in zip(series, colors)], font, right + 14, top, "line")
    return chart


# --- grouped bar chart ---------------------------------------------------------------------------
def bar_chart(
    categories: Sequence[str],
    series: Sequence[BarSeries],
    *,
    title: str,
    ylabel: str = "",
    value_format: str = "{:.1f}",
    size: tuple[int, int] | None = None,
) -> Chart:
    """Grouped bars: for each category, one bar per series (mean), an error bar (mean ± std) and
    the mean written above. The y axis always includes 0. ``size`` defaults to a width that
    grows with the number of bars. NaN means draw no bar; NaN or missing stds draw no error bar.
    Raises ``ValueError`` on empty input or lengths that do not match the categories."""
    if not categories or not series:
        raise ValueError(f"bar_chart {title!r}: need at least one category and one series")
    for s in series:
        if len(s.means) != len(categories) or (s.stds is not None and len(s.stds) != len(categories)):
            raise ValueError(f"bar_chart {title!r}: series {s.label!r} needs one mean (and std) per category ({len(categories)})")
    colors = _colors([s.color for s in series])

    def std_of(s: BarSeries, i: int) -> float:
        v = float(s.stds[i]) if s.stds is not None and s.stds[i] is not None else math.nan
        return v if math.isfinite(v) else 0.0

    lows, highs = [0.0], [0.0]
    drawn = 0
    for s in series:
        for i, m in enumerate(s.means):
            m = float(m) if m is not None else math.nan
            if math.isfinite(m):
                drawn += 1
                lows.append(m - std_of(s, i))
                highs.append(m + std_of(s, i))
    if not drawn:
        raise ValueError(f"bar_chart {title!r}: no finite means to plot")
    y_ticks, y_step = nice_ticks(min(lows), max(highs), max_ticks=7)
    # Head room for the value labels above the tallest bars.
    span = y_ticks[-1] - y_ticks[0]
    if max(highs) > y_ticks[-1] - 0.08 * span:
        y_ticks.append(y_ticks[-1] + y_step)

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font, title_font, small = _font(12), _font(15), _font(10)
    # Bars at least as wide as their value labels, so neighbouring labels do not overlap.
    widest_label = max(_text_size(probe, value_format.format(float(m)), small)[0] for s in series for m in s.means if m is not None and math.isfinite(float(m)))
    bar_w, gap = max(26, widest_label + 4), 30
    group_w = bar_w * len(series)
    legend_w = _legend_width(probe, [s.label for s in series], font)
    y_labels = [format_tick(t, y_step) for t in y_ticks]
    tick_w = max(_text_size(probe, s, font)[0] for s in y_labels)
    text_h = _text_size(probe, "Ag", font)[1]
    left = 12 + (text_h + 10 if ylabel else 0) + tick_w + 8
    slot = max(group_w + gap, 90)
    label_lines = [_wrap(probe, c, font, slot - 6) for c in categories]
    label_h = max(len(lines) for lines in label_lines) * (text_h + 4) + 12
    if size is None:
        size = (max(640, left + slot * len(categories) + legend_w + 30), 470 + label_h)
    width, height = size
    right = width - legend_w - 16
    top, bottom = 44, height - label_h
    if right - left < slot * len(categories) * 0.5 or bottom - top < 80:
        raise ValueError(f"bar_chart {title!r}: size {size} is too small for {len(categories)} groups")
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    chart = Chart(image, (left, top, right, bottom), (0.0, float(len(categories))), (y_ticks[0], y_ticks[-1]))

    for t, label in zip(y_ticks, y_labels):
        py = chart.y_to_pixel(t)
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.line([(left - 4, py), (left, py)], fill=AXIS)
        _draw_text(draw, (left - 7, py), label, font, "rm")
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    zero = chart.y_to_pixel(0.0)
    draw.line([(left, zero), (right, zero)], fill=AXIS)

    slot_px = (right - left) / len(categories)
    this_bar = min(bar_w, (slot_px - 8) / len(series))
    for ci, category in enumerate(categories):
        center = left + (ci + 0.5) * slot_px
        start = center - this_bar * len(series) / 2
        for si, (s, color) in enumerate(zip(series, colors)):
            mean = float(s.means[ci]) if s.means[ci] is not None else math.nan
            if not math.isfinite(mean):
                continue
            x0, x1 = round(start + si * this_bar) + 1, round(start + (si + 1) * this_bar) - 1
            y_mean = chart.y_to_pixel(mean)
            rect = (x0, round(min(y_mean, zero)), x1, round(max(y_mean, zero)))
            draw.rectangle(rect, fill=color)
            chart.bars[(s.label, category)] = rect
            std = std_of(s, ci)
            xm = (x0 + x1) / 2
            if std > 0:
                hi_px, lo_px = chart.y_to_pixel(mean + std), chart.y_to_pixel(mean - std)
                draw.line([(xm, hi_px), (xm, lo_px)], fill=INK, width=1)
                draw.line([(xm - 4, hi_px), (xm + 4, hi_px)], fill=INK, width=1)
                draw.line([(xm - 4, lo_px), (xm + 4, lo_px)], fill=INK, width=1)
            label_y = chart.y_to_pixel(mean + std if mean >= 0 else mean - std)
            _draw_text(draw, (xm, label_y - 3 if mean >= 0 else label_y + 3), value_format.format(mean), small, "mb" if mean >= 0 else "mt")
        for li, line in enumerate(label_lines[ci]):
            _draw_text(draw, (center, bottom + 8 + li * (text_h + 4)), line, font, "mt")

    _draw_text(draw, ((left + right) / 2, 14), title, title_font, "mt")
    if ylabel:
        _vertical_text(image, ylabel, font, (12 + text_h / 2, (top + bottom) / 2))
    _draw_legend(draw, [(s.label, c) for s, c in zip(series, colors)], font, right + 14, top, "box")
    return chart
