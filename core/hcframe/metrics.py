"""What a logged number is, and how it is shown.

Every key the trainer writes to ``metrics.jsonl`` is described by a :class:`MetricInfo`: its name,
its kind (``loss``, ``accuracy``, ``fraction`` or ``other``), whether the progress display shows
it, and which plot it is drawn in. Tasks declare their own terms
(:meth:`hcframe.PretextTask.metric_info`), the combiner its loss weights and gradient cosines, the
trainer its own keys; the trainer writes them all to ``<run>/metrics_schema.json`` when training
starts, and ``hcframe report`` reads that file back. So the core needs no list of what plugins log.

Evaluation results (``top1``, ``R@5`` ...) are the core's own protocols' numbers;
:func:`eval_metric_kind` knows them. :func:`format_metric` is the one formatter for both: accuracies
and fractions in % with two decimals, integers as integers, anything else with four significant
digits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Literal

import attrs

from hcframe.files import write_json_atomic

__all__ = [
    "KIND_PLOTS",
    "METRIC_KINDS",
    "SCHEMA_FILE",
    "MetricInfo",
    "eval_metric_kind",
    "format_metric",
    "is_percent",
    "metric_order",
    "read_metric_schema",
    "write_metric_schema",
]

MetricKind = Literal["loss", "accuracy", "fraction", "other"]
METRIC_KINDS: tuple[str, ...] = ("loss", "accuracy", "fraction", "other")
#: The plot a metric is drawn in when its declaration names none.
KIND_PLOTS: dict[str, str] = {"loss": "losses", "accuracy": "accuracy", "fraction": "fractions", "other": "task_metrics"}
SCHEMA_FILE = "metrics_schema.json"
SCHEMA_FORMAT = 1


@attrs.frozen
class MetricInfo:
    """One logged number.

    ``name``: the key (a task declares its terms, ``"acc"``; the trainer logs it as
    ``"<task>/acc"``). ``kind``: ``"loss"`` (a term summed into a loss; lower is better),
    ``"accuracy"`` and ``"fraction"`` (numbers in [0, 1], shown in %), or ``"other"``.
    ``progress``: shown on the progress line while training. ``plot``: the name of the PNG
    ``hcframe report`` draws it in (metrics naming the same plot share it); empty: the plot of its
    kind (:data:`KIND_PLOTS`).
    """

    name: str = attrs.field(validator=attrs.validators.matches_re(r"[^\s]+"))
    kind: MetricKind = attrs.field(default="other", validator=attrs.validators.in_(METRIC_KINDS))
    progress: bool = False
    plot: str = attrs.field(default="", validator=attrs.validators.matches_re(r"[A-Za-z0-9_\-]*"))

    @property
    def plot_name(self) -> str:
        """The plot it is drawn in."""
        return self.plot or KIND_PLOTS[self.kind]

    def under(self, prefix: str) -> "MetricInfo":
        """The same declaration for the key ``<prefix>/<name>``."""
        return attrs.evolve(self, name=f"{prefix}/{self.name}")

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def write_metric_schema(run_dir: str | Path, infos: Iterable[MetricInfo]) -> Path:
    """Write ``metrics_schema.json`` (one entry per key, the first declaration of a key wins)."""
    unique: dict[str, MetricInfo] = {}
    for info in infos:
        unique.setdefault(info.name, info)
    path = Path(run_dir) / SCHEMA_FILE
    write_json_atomic(path, {"format": SCHEMA_FORMAT, "metrics": [i.as_json() for i in unique.values()]})
    return path


def read_metric_schema(run_dir: str | Path) -> dict[str, MetricInfo]:
    """The declarations of a run directory by key; empty when it has no schema file (a run from
    before schemas, or a hand-written folder). Raises ``ValueError`` (one line) on a broken file."""
    path = Path(run_dir) / SCHEMA_FILE
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
        infos = [MetricInfo(**entry) for entry in payload["metrics"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a metrics schema ({type(exc).__name__}: {exc}); delete it to fall back to plain plots") from None
    return {i.name: i for i in infos}


# --- evaluation results --------------------------------------------------------------------------
_EVAL_ACCURACY_PREFIXES = ("top", "clip_top", "train_top", "R@")


def eval_metric_kind(name: str) -> str:
    """The kind of an evaluation result (the last part of ``name``): top-k accuracies, clip-level
    and training accuracies and recalls are ``"accuracy"``; the rest (losses, counts) ``"other"``."""
    return "accuracy" if name.rsplit("/", 1)[-1].startswith(_EVAL_ACCURACY_PREFIXES) else "other"


def metric_order(name: str) -> tuple[int, float, str]:
    """Sort key of evaluation columns: top-k, clip-level top-k, recalls by k, training figures,
    anything else, then counts (``num_*``, ``*_views``)."""

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


# --- showing numbers -----------------------------------------------------------------------------
def is_percent(kind: str) -> bool:
    """Whether numbers of ``kind`` are shown in %."""
    return kind in ("accuracy", "fraction")


def format_metric(value: float, kind: str = "other") -> str:
    """``value`` as reports and tables show it: accuracies and fractions in % with two decimals,
    integers as integers, anything else with four significant digits; NaN as ``n/a``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a" if math.isnan(value) else str(value)
    if is_percent(kind):
        return f"{100 * value:.2f}"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"
