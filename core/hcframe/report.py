"""``hcframe report RUN_DIR``: figures of a run's training curves (matplotlib, PNG and SVG) and its
evaluation as Markdown.

Reads the run directory the trainer writes (see :class:`hcframe.engine.trainer.Trainer`):

* ``metrics.jsonl`` — one JSON object per logged step (``step``, ``epoch``, ``lr``, ``loss``,
  ``<task>/<term>``, ``<task>/loss``, ``weight/<task>``, ``grad_cos/<a>~<b>``, ``clips_per_s``,
  ``time``, and what hooks add); lines written between logged steps hold only ``step`` and a
  step's own values (gradient cosines). A resumed run replays the steps after its last
  checkpoint, so when a step appears twice for a key the later line wins. A truncated last line
  (a run killed mid-write) is ignored.
* ``metrics_schema.json`` — what every key is (:class:`hcframe.metrics.MetricInfo`: kind and
  plot), as the tasks, the combiner, the trainer and the hooks declared it. Keys it does not name
  (or every key, in a folder without the file) are plotted with the "other task metrics".
* ``summary.json`` — ``status``, ``steps``, ``wall_time_s``, ``final_metrics`` and ``eval``
  (result name -> metric -> number), and ``eval.json`` when ``hcframe eval`` wrote one there.

and writes ``<run>/report/`` (or ``--out``): one figure per plot that has data (the core's
:data:`GROUPS` first, then the plots declarations name, in the order they first appear), as
``<plot>.png`` and ``<plot>.svg``, and ``eval.md``. A figure has one panel per task (the part of
a key before its first ``/``; keys without one, such as the total ``loss``, in a panel of their
own), and draws each curve raw and smoothed (``smoothing``, TensorBoard's debiased exponential
moving average; not the learning rate and the loss weights). Drawing needs matplotlib
(``pip install 'hcframe[report]'``); without it the report is refused before anything is read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from hcframe.figures import Curve, MatplotlibMissing, Panel, curves_figure, require_matplotlib, save_figure
from hcframe.metrics import (
    KIND_PLOTS,
    MetricInfo,
    eval_metric_kind,
    format_metric,
    is_percent,
    metric_order,
    read_metric_schema,
)

__all__ = [
    "GROUPS",
    "PlotGroup",
    "ReportError",
    "classify_key",
    "eval_markdown",
    "numeric_metrics",
    "plot_groups",
    "read_metrics",
    "build_figures",
    "write_plots",
    "write_report",
]

# Bookkeeping keys of a metrics line, never plotted.
BOOKKEEPING = frozenset({"step", "epoch", "time"})
OTHER_PLOT = KIND_PLOTS["other"]


class ReportError(ValueError):
    """Bad input for a report (missing run directory, no or unreadable metrics file); one line."""


@dataclass(frozen=True)
class PlotGroup:
    """One figure: the keys :func:`classify_key` puts in plot ``name``."""

    name: str  # also the file stem
    title: str
    ylabel: str
    log_y: str  # "never" | "auto" (when every value is > 0 and they span a factor of 20 or more)
    smooth: bool = True  # draw smoothed curves over the raw ones when smoothing is on
    percent: bool = False  # values in [0, 1], drawn in %


#: The plots of the keys the core itself logs and of the metric kinds, in this order.
GROUPS: tuple[PlotGroup, ...] = (
    PlotGroup("losses", "Losses (total, per task, and loss terms)", "loss", "auto"),
    PlotGroup("learning_rate", "Learning rate", "learning rate", "never", smooth=False),
    PlotGroup("accuracy", "Accuracies", "accuracy", "never", percent=True),
    PlotGroup("fractions", "Fractions", "fraction", "never", percent=True),
    PlotGroup("gradient_cosine", "Cosine between task gradients on the shared trunk", "cosine", "never"),
    PlotGroup("loss_weights", "Loss weights", "weight", "auto", smooth=False),
    PlotGroup(OTHER_PLOT, "Other task metrics", "value", "never"),
    PlotGroup("throughput", "Throughput", "clips / s", "never"),
    PlotGroup("data_wait", "Time each step waited for its batch (decoding and transform)", "seconds", "never"),
)
_KIND_YLABELS = {"loss": "loss", "accuracy": "accuracy", "fraction": "fraction", "other": "value"}


def classify_key(key: str, schema: Mapping[str, MetricInfo]) -> str | None:
    """The plot a ``metrics.jsonl`` key is drawn in (None: not plotted): its declaration's, else
    the plot of other task metrics."""
    if key in BOOKKEEPING:
        return None
    info = schema.get(key)
    return info.plot_name if info is not None else OTHER_PLOT


def plot_groups(keys: Iterable[str], schema: Mapping[str, MetricInfo]) -> list[PlotGroup]:
    """The plots ``keys`` are drawn in: the core's :data:`GROUPS` (in their order), then plots named
    by declarations (in the order their keys come), titled after their name (``"my_plot"``: "My plot"), labelled by their keys' kind, on a log axis when they are all losses."""
    core = {g.name: g for g in GROUPS}
    members: dict[str, list[str]] = {}
    for key in keys:
        name = classify_key(key, schema)
        if name is not None:
            members.setdefault(name, []).append(key)
    groups = [g for g in GROUPS if g.name in members]
    for name, group_keys in members.items():
        if name in core:
            continue
        kinds = {schema[k].kind for k in group_keys if k in schema}
        percent = bool(kinds) and all(is_percent(k) for k in kinds)  # e.g. mIoU beside pixel accuracy
        kind = next(iter(kinds)) if len(kinds) == 1 else "other"
        groups.append(PlotGroup(name, name.replace("_", " ").capitalize(), _KIND_YLABELS[kind], "auto" if kind == "loss" else "never", percent=percent))
    return groups


# --- reading -------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if value is None:
        return math.nan  # json has no NaN in strict mode; a null is a missing measurement
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def read_metrics(path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every numeric key of ``metrics.jsonl`` as ``(steps, values)`` sorted by step (later lines
    win for a repeated step; NaN kept, plotting skips it). Raises :class:`ReportError`."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ReportError(f"{path}: metrics file not found (the run has not logged a step yet?)") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror}") from None
    by_key: dict[str, dict[int, float]] = {}
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last:
                break  # a line cut short by a killed run
            raise ReportError(f"{path}:{i + 1}: not valid JSON ({exc.msg}); fix or delete that line") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or isinstance(record.get("step"), bool):
            raise ReportError(f"{path}:{i + 1}: expected a JSON object with an integer \"step\"")
        step = record["step"]
        for key, value in record.items():
            number = _number(value)
            if key == "step" or number is None:
                continue
            by_key.setdefault(key, {})[step] = number
    return {key: (sorted(values), [values[s] for s in sorted(values)]) for key, values in by_key.items()}


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(payload, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return payload


# --- formatting ----------------------------------------------------------------------------------
def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """The int and float (not bool) entries of one result."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _markdown_table(header: list[str], rows: Iterable[list[str]], align_right_from: int = 1) -> str:
    def escape(cell: str) -> str:
        return cell.replace("|", "\\|")

    out = ["| " + " | ".join(escape(h) for h in header) + " |"]
    out.append("|" + "|".join("---" if i < align_right_from else "---:" for i in range(len(header))) + "|")
    out.extend("| " + " | ".join(escape(c) for c in row) + " |" for row in rows)
    return "\n".join(out)


def eval_markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per result name, one column per numeric metric (accuracies and
    recalls in %, see :func:`hcframe.metrics.format_metric`; ``-`` where a result lacks the metric). Non-numeric entries (split
    lists, bad-video lists) are left out. Raises ``ValueError`` when ``results`` is not a
    mapping of names to mappings."""
    if not isinstance(results, Mapping) or not all(isinstance(m, Mapping) for m in results.values()):
        raise ValueError("eval results must map result names to {metric: number} tables")
    numeric = {name: numeric_metrics(m) for name, m in results.items()}
    columns = sorted({k for m in numeric.values() for k in m}, key=metric_order)
    kinds = {c: eval_metric_kind(c) for c in columns}
    header = ["evaluation"] + [f"{c} (%)" if is_percent(kinds[c]) else c for c in columns]
    rows = [[name] + [format_metric(m[c], kinds[c]) if c in m else "-" for c in columns] for name, m in numeric.items()]
    return _markdown_table(header, rows)


# --- the report ----------------------------------------------------------------------------------
def _log_scale(values: list[float], policy: str) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    if policy != "auto" or not finite or min(finite) <= 0:
        return False
    return max(finite) / min(finite) >= 20


def _panels(group: PlotGroup, keys: list[str], series: Mapping[str, tuple[list[int], list[float]]]) -> list[Panel]:
    """One panel per task (the part of a key before its first "/"), in the order keys come;
    keys without a "/" (the total loss, ``lr``) share a first panel."""
    by_prefix: dict[str, list[str]] = {"": []}
    for key in keys:
        by_prefix.setdefault(key.split("/", 1)[0] if "/" in key else "", []).append(key)
    panels = []
    for prefix, members in by_prefix.items():
        if not members:
            continue
        log_y = _log_scale([v for k in members for v in series[k][1]], group.log_y)
        title = prefix or ("total" if group.name == "losses" else group.title)
        curves = [Curve(k, series[k][0], series[k][1]) for k in members]
        panels.append(Panel(title, curves, ylabel=group.ylabel + (" (log scale)" if log_y else ""), log_y=log_y, percent=group.percent))
    return panels


def build_figures(
    series: Mapping[str, tuple[list[int], list[float]]],
    schema: Mapping[str, MetricInfo] | None = None,
    smoothing: float = 0.6,
) -> dict[str, Any]:
    """One matplotlib figure per plot (:func:`plot_groups`) whose keys have a finite value, by
    plot name. Raises :class:`~hcframe.figures.MatplotlibMissing` without matplotlib."""
    require_matplotlib()
    schema = schema or {}
    drawn = [k for k in series if any(math.isfinite(v) for v in series[k][1])]
    figures = {}
    for group in plot_groups(drawn, schema):
        keys = [k for k in drawn if classify_key(k, schema) == group.name]
        panels = _panels(group, keys, series)
        figures[group.name] = curves_figure(group.title, panels, smoothing=smoothing if group.smooth else 0.0)
    return figures


def write_plots(
    series: Mapping[str, tuple[list[int], list[float]]],
    out_dir: Path,
    schema: Mapping[str, MetricInfo] | None = None,
    smoothing: float = 0.6,
) -> list[Path]:
    """Each figure of :func:`build_figures` as ``<plot>.png`` and ``<plot>.svg`` in ``out_dir``."""
    written = []
    for name, figure in build_figures(series, schema, smoothing).items():
        written.extend(save_figure(figure, out_dir, name))
    return written


def _report_markdown(
    run_dir: Path, summary: dict[str, Any] | None, eval_file: dict[str, Any] | None, plots: list[Path], schema: Mapping[str, MetricInfo]
) -> str:
    parts = [f"# Run report: {run_dir.name}", ""]
    if summary is None:
        parts += ["No `summary.json` in the run directory (the run is still going, or was killed).", ""]
    else:
        facts = [f"status **{summary.get('status', '?')}**", f"{summary.get('steps', '?')} steps"]
        if isinstance(summary.get("wall_time_s"), (int, float)):
            facts.append(f"wall time {summary['wall_time_s']:.1f} s")
        if summary.get("recipe"):
            facts.append(f"recipe `{summary['recipe']}`")
        bad = summary.get("bad_videos", {}).get("count", 0) if isinstance(summary.get("bad_videos"), dict) else 0
        if bad:
            facts.append(f"{bad} unreadable videos skipped")
        parts += [", ".join(facts) + ".", ""]
        if summary.get("error"):
            parts += [f"Error: `{summary['error']}`", ""]
    parts += ["## Evaluation", ""]
    results = (summary or {}).get("eval") or {}
    if results:
        parts += [eval_markdown(results), "", "Accuracies, recalls and mIoU in %.", ""]
    else:
        parts += ["No evaluation results in `summary.json`.", ""]
    if eval_file and eval_file.get("eval"):
        where = f"checkpoint `{eval_file.get('checkpoint', '?')}`" + (f" (step {eval_file['step']})" if eval_file.get("step") is not None else "")
        parts += [f"## Evaluation of {where} (`eval.json`)", "", eval_markdown(eval_file["eval"]), ""]
    final = numeric_metrics((summary or {}).get("final_metrics") or {})
    final = {k: v for k, v in final.items() if k not in BOOKKEEPING}
    if final:
        parts += ["## Training metrics at the last logged step", ""]
        kinds = {k: schema[k].kind if k in schema else "other" for k in final}
        rows = [[k, format_metric(v, kinds[k]) + (" %" if is_percent(kinds[k]) else "")] for k, v in final.items()]
        parts += [_markdown_table(["metric", "value"], rows), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots if p.suffix == ".png"] + [""]
    return "\n".join(parts)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *, smoothing: float = 0.6) -> list[Path]:
    """Write the figures (PNG and SVG) and ``eval.md`` of ``run_dir`` into ``out_dir`` (default
    ``run_dir/report``); returns the written paths. Raises :class:`ReportError` (one line) when
    matplotlib is missing, the smoothing is outside [0, 1), or the run directory or its
    ``metrics.jsonl`` is missing or unreadable."""
    try:
        require_matplotlib()
    except MatplotlibMissing as exc:
        raise ReportError(str(exc)) from None
    if not 0.0 <= smoothing < 1.0:
        raise ReportError(f"smoothing must be in [0, 1) (0: off), got {smoothing}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: run directory not found")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise ReportError(f"{metrics_path}: no metrics.jsonl in the run directory (is {run_dir} a run directory of `hcframe run`?)")
    series = read_metrics(metrics_path)
    try:
        schema = read_metric_schema(run_dir)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    summary = _read_json(run_dir / "summary.json")
    eval_file = _read_json(run_dir / "eval.json")
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(series, out, schema, smoothing)
    markdown = out / "eval.md"
    markdown.write_text(_report_markdown(run_dir, summary, eval_file, plots, schema))
    return plots + [markdown]
