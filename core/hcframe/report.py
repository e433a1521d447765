"""``hcframe report RUN_DIR``: PNG plots of a run's training curves and its evaluation as Markdown.

Reads the run directory the trainer writes (see :class:`hcframe.engine.trainer.Trainer`):

* ``metrics.jsonl`` — one JSON object per logged step (``step``, ``epoch``, ``lr``, ``loss``,
  ``<task>/<term>``, ``<task>/loss``, ``weight/<task>``, ``grad_cos/<a>~<b>``, ``clips_per_s``,
  ``time``); lines written between logged steps hold only ``step`` and ``grad_cos/...``.
  A resumed run replays the steps after its last checkpoint, so when a step appears twice for a
  key the later line wins. A truncated last line (a run killed mid-write) is ignored.
* ``summary.json`` — ``status``, ``steps``, ``wall_time_s``, ``final_metrics`` and ``eval``
  (result name -> metric -> number), and ``eval.json`` when ``hcframe eval`` wrote one there.

and writes ``<run>/report/`` (or ``--out``): one PNG per group of keys that has data
(:data:`GROUPS`) and ``eval.md``.

Which ``<task>/<term>`` keys are loss terms cannot be read from ``metrics.jsonl`` (losses and
metrics are logged alike), so the terms in :data:`METRIC_TERMS` (and any term ending in ``acc``
or starting with ``top``) are taken as metrics and every other term as a loss term.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from hcframe.plots import LineSeries, line_chart

__all__ = [
    "GROUPS",
    "METRIC_TERMS",
    "PlotGroup",
    "ReportError",
    "classify_key",
    "eval_markdown",
    "format_metric",
    "is_fraction_metric",
    "numeric_metrics",
    "read_metrics",
    "write_plots",
    "write_report",
]

# Task terms that are measurements, not losses (core, hcframe-contrastive, hcframe-parsing).
METRIC_TERMS = frozenset({"acc", "miou", "pixel_acc", "pos_sim", "neg_sim", "queue_fill", "momentum", "valid_fraction"})
# Bookkeeping keys of a metrics line, never plotted as a task curve.
BOOKKEEPING = frozenset({"step", "epoch", "time"})


class ReportError(ValueError):
    """Bad input for a report (missing run directory, no or unreadable metrics file); one line."""


@dataclass(frozen=True)
class PlotGroup:
    """One PNG: the keys :func:`classify_key` puts in group ``name``."""

    name: str  # also the file stem
    title: str
    ylabel: str
    log_y: str  # "never" | "auto" (when every value is > 0 and they span a factor of 20 or more)


GROUPS: tuple[PlotGroup, ...] = (
    PlotGroup("losses", "Losses (total, per task, and loss terms)", "loss", "auto"),
    PlotGroup("learning_rate", "Learning rate", "learning rate", "never"),
    PlotGroup("contrastive_accuracy", "Accuracy (*/acc)", "accuracy", "never"),
    PlotGroup("parsing_quality", "Parsing quality (mIoU, pixel accuracy)", "fraction", "never"),
    PlotGroup("gradient_cosine", "Cosine between task gradients on the shared trunk", "cosine", "never"),
    PlotGroup("loss_weights", "Loss weights", "weight", "auto"),
    PlotGroup("task_metrics", "Other task metrics", "value", "never"),
    PlotGroup("throughput", "Throughput", "clips / s", "never"),
)


def _is_metric_term(term: str) -> bool:
    return term in METRIC_TERMS or term.endswith("acc") or term.startswith("top")


def classify_key(key: str) -> str | None:
    """The :data:`GROUPS` name a ``metrics.jsonl`` key is plotted in (None: not plotted)."""
    if key in BOOKKEEPING:
        return None
    if key == "loss":
        return "losses"
    if key == "lr":
        return "learning_rate"
    if key == "clips_per_s":
        return "throughput"
    head, _, term = key.partition("/")
    if not term:
        return "task_metrics"
    if head == "grad_cos":
        return "gradient_cosine"
    if head == "weight":
        return "loss_weights"
    if term == "loss" or not _is_metric_term(term):
        return "losses"
    if term.endswith("acc") and term != "pixel_acc":
        return "contrastive_accuracy"
    if term in ("miou", "pixel_acc"):
        return "parsing_quality"
    return "task_metrics"


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
def is_fraction_metric(name: str) -> bool:
    """Metrics stored as fractions and shown in %: top-k accuracies, recalls, ``*acc``, mIoU."""
    last = name.rsplit("/", 1)[-1]
    return last.startswith(("top", "clip_top", "train_top", "R@")) or last.endswith("acc") or last == "miou"


def format_metric(name: str, value: float) -> str:
    """``value`` as shown in reports: fractions (see :func:`is_fraction_metric`) in % with two
    decimals, integers as integers, anything else with four significant digits."""
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a" if math.isnan(value) else str(value)
    if is_fraction_metric(name):
        return f"{100 * value:.2f}"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _metric_order(name: str) -> tuple[int, float, str]:
    def number(s: str) -> float:
        return float(s) if s.isdigit() else math.inf

    if name.startswith("top"):
        return (0, number(name[3:]), name)
    if name.startswith("clip_top"):
        return (1, number(name[8:]), name)
    if name.startswith("R@"):
        return (2, number(name[2:]), name)
    if name.startswith("train_"):
        return (3, 0, name)
    if name.startswith("num_") or name.endswith("_views"):
        return (5, 0, name)
    return (4, 0, name)


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
    """A Markdown table: one row per result name, one column per numeric metric (fractions in %,
    see :func:`format_metric`; ``-`` where a result lacks the metric). Non-numeric entries (split
    lists, bad-video lists) are left out. Raises ``ValueError`` when ``results`` is not a
    mapping of names to mappings."""
    if not isinstance(results, Mapping) or not all(isinstance(m, Mapping) for m in results.values()):
        raise ValueError("eval results must map result names to {metric: number} tables")
    numeric = {name: numeric_metrics(m) for name, m in results.items()}
    columns = sorted({k for m in numeric.values() for k in m}, key=_metric_order)
    header = ["evaluation"] + [f"{c} (%)" if is_fraction_metric(c) else c for c in columns]
    rows = [[name] + [format_metric(c, m[c]) if c in m else "-" for c in columns] for name, m in numeric.items()]
    return _markdown_table(header, rows)


# --- the report ----------------------------------------------------------------------------------
def _log_scale(values: list[float], policy: str) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    if policy != "auto" or not finite or min(finite) <= 0:
        return False
    return max(finite) / min(finite) >= 20


def write_plots(series: Mapping[str, tuple[list[int], list[float]]], out_dir: Path, size: tuple[int, int] = (900, 520)) -> list[Path]:
    """One PNG per :data:`GROUPS` entry whose keys have at least one finite value."""
    written = []
    for group in GROUPS:
        keys = [k for k in series if classify_key(k) == group.name]
        keys = [k for k in keys if any(math.isfinite(v) for v in series[k][1])]
        if not keys:
            continue
        lines = [LineSeries(k, series[k][0], series[k][1]) for k in keys]
        log_y = _log_scale([v for k in keys for v in series[k][1]], group.log_y)
        chart = line_chart(lines, title=group.title, xlabel="step", ylabel=group.ylabel + (" (log scale)" if log_y else ""), log_y=log_y, size=size, integer_x=True)
        written.append(chart.save(out_dir / f"{group.name}.png"))
    return written


def _report_markdown(run_dir: Path, summary: dict[str, Any] | None, eval_file: dict[str, Any] | None, plots: list[Path]) -> str:
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
        parts += [_markdown_table(["metric", "value"], [[k, format_metric(k, v) + (" %" if is_fraction_metric(k) else "")] for k, v in final.items()]), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(parts)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *, size: tuple[int, int] = (900, 520)) -> list[Path]:
    """Write the PNG plots and ``eval.md`` of ``run_dir`` into ``out_dir`` (default
    ``run_dir/report``); returns the written paths. Raises :class:`ReportError` (one line) when
    the run directory or its ``metrics.jsonl`` is missing or unreadable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: run directory not found")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise ReportError(f"{metrics_path}: no metrics.jsonl in the run directory (is {run_dir} a run directory of `hcframe run`?)")
    series = read_metrics(metrics_path)
    summary = _read_json(run_dir / "summary.json")
    eval_file = _read_json(run_dir / "eval.json")
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(series, out, size)
    markdown = out / "eval.md"
    markdown.write_text(_report_markdown(run_dir, summary, eval_file, plots))
    return plots + [markdown]
