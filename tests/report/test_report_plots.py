"""The Pillow charts: sizes, where data is drawn, skipped points, ticks, bars, errors."""

from __future__ import annotations

import math

import pytest

from hcframe.plots import BACKGROUND, INK, BarSeries, LineSeries, bar_chart, format_tick, line_chart, log_ticks, nice_ticks

RED = (200, 0, 0)
BLUE = (0, 0, 220)


def colored(image, color, box=None) -> set[tuple[int, int]]:
    """Every pixel of ``image`` (inside ``box`` = left, top, right, bottom when given) with exactly ``color``."""
    width, height = image.size
    left, top, right, bottom = box or (0, 0, width - 1, height - 1)
    data = image.load()
    return {(x, y) for x in range(left, right + 1) for y in range(top, bottom + 1) if data[x, y] == color}


def test_line_chart_has_the_requested_size_and_draws_points_where_the_data_says(tmp_path):
    xs, ys = [0, 10, 20, 30, 40], [0.5, 2.0, 1.0, 3.5, 3.0]
    chart = line_chart([LineSeries("a", xs, ys, RED)], title="t", ylabel="value", size=(640, 400))
    assert chart.image.size == (640, 400)
    pixels = colored(chart.image, RED, chart.box)
    for x, y in zip(xs, ys):
        assert chart.to_pixel(x, y) in pixels
    # The segment between the first two points passes through its midpoint.
    mx, my = chart.to_pixel(5, 1.25)
    assert any((mx + dx, my + dy) in pixels for dx in (-1, 0, 1) for dy in (-1, 0, 1))
    # Outside the plot area (plus the markers' radius) red appears only in the legend, right of it.
    left, top, right, bottom = chart.box
    near = colored(chart.image, RED, (left - 3, top - 3, right + 3, bottom + 3))
    assert all(px > right + 3 for px, _ in colored(chart.image, RED) - near)
    # Inside, every red pixel lies within the data's y band.
    y_hi, y_lo = chart.y_to_pixel(3.5), chart.y_to_pixel(0.5)
    assert all(y_hi - 3 <= py <= y_lo + 3 for _, py in pixels)
    # The axis covers the data with round ticks.
    assert chart.x_range == (0, 40) and chart.y_range[0] <= 0.5 and chart.y_range[1] >= 3.5
    path = chart.save(tmp_path / "sub" / "line.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_inf_and_missing_points_are_skipped():
    xs = [0, 1, 2, 3, 4, 5]
    ys = [1.0, math.nan, 1.0, math.inf, None, 1.0]
    chart = line_chart([LineSeries("flat", xs, ys, RED)], title="t", size=(500, 300), markers=False)
    pixels = colored(chart.image, RED, chart.box)
    row = chart.y_to_pixel(1.0)
    # Only the finite points exist: one flat line at y = 1 from x = 0 to x = 5, nothing elsewhere.
    assert pixels and all(abs(py - row) <= 1.5 for _, py in pixels)
    assert min(px for px, _ in pixels) == chart.to_pixel(0, 1)[0]
    assert max(px for px, _ in pixels) == chart.to_pixel(5, 1)[0]


def test_log_axis_skips_non_positive_values_and_uses_decade_ticks():
    chart = line_chart([LineSeries("loss", [0, 1, 2, 3], [10.0, 0.0, -1.0, 0.1], BLUE)], title="t", log_y=True, size=(500, 300))
    assert chart.log_y and chart.y_range == (0.1, 10.0)
    pixels = colored(chart.image, BLUE, chart.box)
    assert chart.to_pixel(0, 10.0) in pixels and chart.to_pixel(3, 0.1) in pixels
    # On a log axis 1.0 sits half-way between 0.1 and 10.
    assert chart.y_to_pixel(1.0) == pytest.approx((chart.y_to_pixel(0.1) + chart.y_to_pixel(10.0)) / 2)


def test_a_single_point_series_is_still_visible_next_to_a_long_one():
    long = LineSeries("long", list(range(100)), [float(i) for i in range(100)], BLUE)
    single = LineSeries("one", [50], [20.0], RED)
    chart = line_chart([long, single], title="t", size=(600, 360))
    px, py = chart.to_pixel(50, 20.0)
    assert len(colored(chart.image, RED) & {(px + dx, py + dy) for dx in range(-2, 3) for dy in range(-2, 3)}) >= 9


def test_default_colors_differ_between_series():
    chart = line_chart([LineSeries("a", [0, 1], [0, 1]), LineSeries("b", [0, 1], [1, 0])], title="t", size=(500, 300))
    a, b = chart.to_pixel(0, 0), chart.to_pixel(0, 1)
    assert chart.image.getpixel(a) != chart.image.getpixel(b)
    assert BACKGROUND not in (chart.image.getpixel(a), chart.image.getpixel(b))


@pytest.mark.parametrize(
    "series, message",
    [
        ([], "no series given"),
        ([LineSeries("a", [], [])], "no finite data points"),
        ([LineSeries("a", [1, 2], [math.nan, math.inf])], "no finite data points"),
        ([LineSeries("a", [1, 2], [1.0])], "has 2 x values but 1 y values"),
    ],
)
def test_line_chart_rejects_empty_input_with_a_clear_message(series, message):
    with pytest.raises(ValueError, match=message):
        line_chart(series, title="losses")


def test_log_chart_without_positive_values_is_an_error():
    with pytest.raises(ValueError, match="no finite, positive data points"):
        line_chart([LineSeries("a", [0, 1], [0.0, -2.0])], title="t", log_y=True)


def test_nice_and_log_ticks():
    ticks, step = nice_ticks(0.0, 0.93, max_ticks=6)
    assert step == pytest.approx(0.2) and ticks[0] == 0.0 and ticks[-1] == pytest.approx(1.0)
    ticks, step = nice_ticks(3, 1997, max_ticks=8)
    assert step == 500 and ticks == [0, 500, 1000, 1500, 2000]
    ticks, step = nice_ticks(-0.47, 0.12)
    assert ticks[0] <= -0.47 and ticks[-1] >= 0.12 and all(b - a == pytest.approx(step) for a, b in zip(ticks, ticks[1:]))
    assert nice_ticks(5.0, 5.0)[0][0] < 5.0 < nice_ticks(5.0, 5.0)[0][-1]
    assert nice_ticks(2, 4, max_ticks=8, integer=True) == ([2, 3, 4], 1.0)
    assert nice_ticks(0, 9, max_ticks=5, integer=True)[1] == 5.0  # 2.5 is not a whole step
    assert nice_ticks(7, 7, integer=True)[0] == [6, 7, 8]
    assert log_ticks(0.3, 7.0) == pytest.approx([0.2, 0.5, 1.0, 2.0, 5.0, 10.0])
    assert log_ticks(0.01, 1000.0) == pytest.approx([0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
    assert [format_tick(v, 0.25) for v in (0.0, 0.25, 1.5)] == ["0", "0.25", "1.50"]
    assert format_tick(20000, 5000) == "20k" and format_tick(3e-5) == "3e-05"


def test_bar_chart_bars_error_bars_and_missing_values():
    categories = ["top1", "R@1"]
    series = [BarSeries("random", [10.0, 20.0], [2.0, math.nan], RED), BarSeries("both", [30.0, math.nan], [5.0, 1.0], BLUE)]
    chart = bar_chart(categories, series, title="ablation", ylabel="%")
    image = chart.image
    assert image.size[0] >= 640
    assert set(chart.bars) == {("random", "top1"), ("random", "R@1"), ("both", "top1")}  # NaN mean: no bar
    for (label, category), (x0, y0, x1, y1) in chart.bars.items():
        mean = next(s for s in series if s.label == label).means[categories.index(category)]
        assert y0 == round(chart.y_to_pixel(mean)) and y1 == round(chart.y_to_pixel(0.0))
        color = RED if label == "random" else BLUE
        assert image.getpixel(((x0 + x1) // 2 + 2, (y0 + y1) // 2)) == color
    # Error bar of "both"/top1: the cap at mean + std is drawn above the bar in ink.
    x0, y0, x1, _ = chart.bars[("both", "top1")]
    cap = round(chart.y_to_pixel(35.0))
    assert any(image.getpixel(((x0 + x1) // 2 + dx, cap)) == INK for dx in (-1, 0, 1))
    # No error bar for a NaN std: above "random"/R@1 the column right above the bar is clear.
    x0, y0, x1, _ = chart.bars[("random", "R@1")]
    assert image.getpixel(((x0 + x1) // 2 + 3, y0 - 2)) == BACKGROUND
    # The y axis includes 0 and the highest mean + std.
    assert chart.y_range[0] <= 0 and chart.y_range[1] >= 35.0


def test_bar_chart_with_negative_means_draws_below_zero():
    chart = bar_chart(["cos"], [BarSeries("a", [-0.4], None, RED)], title="t", value_format="{:.2f}")
    x0, y0, x1, y1 = chart.bars[("a", "cos")]
    assert y0 == round(chart.y_to_pixel(0.0)) and y1 == round(chart.y_to_pixel(-0.4))
    assert chart.y_range[0] <= -0.4


@pytest.mark.parametrize(
    "categories, series, message",
    [
        ([], [BarSeries("a", [])], "at least one category"),
        (["x"], [], "at least one category"),
        (["x", "y"], [BarSeries("a", [1.0])], "one mean"),
        (["x"], [BarSeries("a", [math.nan])], "no finite means"),
    ],
)
def test_bar_chart_rejects_bad_input(categories, series, message):
    with pytest.raises(ValueError, match=message):
        bar_chart(categories, series, title="t")
