"""``hcframe ablation``: run several recipes for several seeds and compare them (mean ± std).

Each recipe file is one arm of the ablation, named by its file stem. Every (recipe, seed) runs
sequentially with :func:`hcframe.run.run_recipe` in ``OUTPUT/<name>/seed<seed>``, the recipe
loaded with ``train.seed=<seed>`` followed by the caller's overrides. Resumable: a run whose
``summary.json`` says ``"completed"`` is not run again, a run with checkpoints continues from
the newest one, and a failed run is reported and the others still run.

Results per run are the float metrics of ``summary.json["eval"]``, named
``<result name>/<metric>`` (e.g. ``linear_probe/moving_squares/concat/top1``); a run without
evaluation results contributes its last training metrics instead, named ``final/<key>``.
Per recipe and metric, :func:`mean_std` gives the mean and the **sample** standard deviation
(denominator n - 1; undefined, NaN, for a single run) over the runs that have the metric.

Outputs in ``OUTPUT``: ``ablation.json`` (every run's metrics and the aggregates),
``ablation.md`` (the table) and ``ablation.png`` (grouped bars with ± std error bars).
"""

from __future__ import annotations

import fnmatch
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from hcframe.metrics import eval_metric_kind, format_metric, is_percent, read_metric_schema

__all__ = [
    "AblationError",
    "AblationResult",
    "AblationRun",
    "Stat",
    "ablation_chart",
    "ablation_markdown",
    "aggregate",
    "ablation_table",
    "mean_std",
    "parse_seeds",
    "plan_runs",
    "run_ablation",
    "run_metrics",
    "select_metrics",
    "write_ablation_outputs",
]

# Training-log keys that say nothing about the representation (left out of the final_metrics fallback).
FALLBACK_EXCLUDED = frozenset({"step", "epoch", "lr", "clips_per_s", "time"})
STD_NOTE = "sample standard deviation over seeds (denominator n - 1); n/a for a single run"


class AblationError(ValueError):
    """Bad ablation input (seeds, recipe names, metric selection); one line."""


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1; NaN when ``n < 2``) of ``n`` values."""

    mean: float
    std: float
    n: int

    def as_json(self) -> dict[str, Any]:
        return {"mean": _json_number(self.mean), "std": _json_number(self.std), "n": self.n}


@dataclass
class AblationRun:
    """One (recipe, seed): where it runs and, after :func:`run_ablation`, how it went."""

    name: str
    recipe_path: Path
    seed: int
    run_dir: Path
    status: str = "pending"  # "completed" | "skipped" (completed earlier) | "failed" | "not run" (collect only)
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": self.seed, "run_dir": str(self.run_dir), "status": self.status}
        if self.error:
            out["error"] = self.error
        out["metrics"] = {k: _json_number(v) for k, v in self.metrics.items()}
        return out


@dataclass
class AblationResult:
    """Every run, the selected metrics and the per-recipe aggregates (``stats[name][metric]``)."""

    names: list[str]
    seeds: list[int]
    runs: list[AblationRun]
    metrics: list[str]
    stats: dict[str, dict[str, Stat]]
    #: Kind of each ``final/<key>`` metric, from the runs' metric schemas (evaluation results:
    #: :func:`hcframe.metrics.eval_metric_kind`).
    kinds: dict[str, str] = field(default_factory=dict)

    def kind(self, metric: str) -> str:
        return self.kinds.get(metric) or eval_metric_kind(metric)

    @property
    def failed(self) -> list[AblationRun]:
        return [r for r in self.runs if r.status == "failed"]

    def as_json(self) -> dict[str, Any]:
        recipes = {}
        for name in self.names:
            runs = [r for r in self.runs if r.name == name]
            recipes[name] = {
                "recipe": str(runs[0].recipe_path) if runs else None,
                "runs": [r.as_json() for r in runs],
                "aggregate": {m: s.as_json() for m, s in self.stats.get(name, {}).items()},
            }
        return {"seeds": self.seeds, "std": STD_NOTE, "metrics": self.metrics, "recipes": recipes}


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --- pure helpers --------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; raises :class:`AblationError` on anything else or repeats."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AblationError(f"--seeds {text!r}: expected comma-separated integers such as 0,1,2") from None
    if not seeds:
        raise AblationError(f"--seeds {text!r}: give at least one seed, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise AblationError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def mean_std(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation (denominator ``n - 1``) of ``values``; the std is NaN
    for one value, and both are NaN for none."""
    n = len(values)
    if n == 0:
        return Stat(math.nan, math.nan, 0)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Stat(mean, std, n)


def run_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """A run's comparable numbers: ``<result>/<metric>`` for every float of ``summary["eval"]``,
    or, when the run has no evaluation results, ``final/<key>`` for the floats of its
    ``final_metrics`` (less step, epoch, lr, throughput and time)."""
    results = summary.get("eval") or {}
    out: dict[str, float] = {}
    if isinstance(results, Mapping) and results:
        for result, metrics in results.items():
            if not isinstance(metrics, Mapping):
                continue
            for metric, value in metrics.items():
                if isinstance(value, float):
                    out[f"{result}/{metric}"] = value
        return out
    for key, value in (summary.get("final_metrics") or {}).items():
        if isinstance(value, float) and key not in FALLBACK_EXCLUDED:
            out[f"final/{key}"] = value
    return out


def select_metrics(available: Iterable[str], selectors: Sequence[str]) -> list[str]:
    """The ``available`` names that a selector picks, in ``available``'s order; no selectors:
    all. A selector is a full name, a glob on the full name (``linear_probe/*/top1``) or a bare
    metric name (``top1`` picks every ``.../top1``). Raises :class:`AblationError` when a
    selector picks nothing."""
    available = list(dict.fromkeys(available))
    if not selectors:
        return available
    chosen: set[str] = set()
    for selector in selectors:
        picked = {name for name in available if fnmatch.fnmatchcase(name, selector) or name.rsplit("/", 1)[-1] == selector}
        if not picked:
            shown = ", ".join(available[:8]) + (" …" if len(available) > 8 else "")
            raise AblationError(f"--metric {selector!r} matches no result; available: {shown or 'none (no run has results)'}")
        chosen |= picked
    return [name for name in available if name in chosen]


def aggregate(per_recipe: Mapping[str, Sequence[Mapping[str, float]]], metrics: Sequence[str]) -> dict[str, dict[str, Stat]]:
    """``{recipe: {metric: Stat}}`` over each recipe's runs (a run lacking a metric, or holding
    a non-finite value for it, is left out of that metric's n)."""
    out: dict[str, dict[str, Stat]] = {}
    for name, runs in per_recipe.items():
        out[name] = {}
        for metric in metrics:
            values = [float(r[metric]) for r in runs if metric in r and math.isfinite(float(r[metric]))]
            out[name][metric] = mean_std(values)
    return out


# --- display -------------------------------------------------------------------------------------
def _cell(kind: str, stat: Stat | None, seeds: int) -> str:
    if stat is None or stat.n == 0:
        return "-"
    text = format_metric(stat.mean, kind)
    text += " ± " + (format_metric(stat.std, kind) if math.isfinite(stat.std) else "n/a")
    if stat.n < seeds:
        text += f" (n={stat.n})"
    return text


def _rows(result: AblationResult) -> list[list[str]]:
    rows = []
    for metric in result.metrics:
        kind = result.kind(metric)
        label = metric + (" (%)" if is_percent(kind) else "")
        rows.append([label] + [_cell(kind, result.stats.get(name, {}).get(metric), len(result.seeds)) for name in result.names])
    return rows


def ablation_markdown(result: AblationResult) -> str:
    """The table as Markdown: one row per metric, one column per recipe, ``mean ± std``."""
    header = ["metric"] + result.names
    lines = [
        f"# Ablation: {len(result.names)} recipes × {len(result.seeds)} seeds ({', '.join(map(str, result.seeds))})",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(result.names),
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in _rows(result)]
    lines += ["", f"Mean ± {STD_NOTE}; accuracies and recalls in %; (n=k): only k runs had the metric.", ""]
    if result.failed:
        lines += ["Failed runs:", ""] + [f"- {r.name} seed {r.seed}: {r.error}" for r in result.failed] + [""]
    missing = [r for r in result.runs if r.status == "not run"]
    if missing:
        lines += [f"Not run ({len(missing)} of {len(result.runs)}; left out of the aggregates):", ""]
        lines += [f"- {r.name} seed {r.seed}" for r in missing] + [""]
    return "\n".join(lines)


def ablation_table(result: AblationResult):
    """The table as a :class:`rich.table.Table`."""
    from rich.table import Table

    table = Table(title=f"ablation: mean ± std over seeds {', '.join(map(str, result.seeds))}", caption=f"{STD_NOTE}; accuracies and recalls in %")
    table.add_column("metric", overflow="fold")
    for name in result.names:
        table.add_column(name, justify="right")
    for row in _rows(result):
        table.add_row(*row)
    return table


def ablation_chart(result: AblationResult):
    """A matplotlib figure of grouped bars: one group per metric, one bar per recipe, the mean with
    a ± std error bar (fractions in %). Needs matplotlib (``hcframe[report]``)."""
    from hcframe.figures import bars_figure, require_matplotlib

    require_matplotlib("hcframe ablation")
    series = []
    for name in result.names:
        stats = [result.stats.get(name, {}).get(m, Stat(math.nan, math.nan, 0)) for m in result.metrics]
        scale = [100.0 if is_percent(result.kind(m)) else 1.0 for m in result.metrics]
        series.append((name, [s.mean * k for s, k in zip(stats, scale)], [s.std * k for s, k in zip(stats, scale)]))
    fractions = [is_percent(result.kind(m)) for m in result.metrics]
    ylabel = "%" if all(fractions) else ("value (accuracies and recalls in %)" if any(fractions) else "value")
    return bars_figure(result.metrics, series, title=f"Ablation: mean ± std over {len(result.seeds)} seeds", ylabel=ylabel)


def write_ablation_outputs(result: AblationResult, output: Path, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> list[Path]:
    """Write ``ablation.json``, ``ablation.md`` and (when there is a number to draw)
    ``ablation.png`` and ``ablation.svg``."""
    from hcframe.figures import save_figure

    output.mkdir(parents=True, exist_ok=True)
    paths = [output / "ablation.json", output / "ablation.md"]
    paths[0].write_text(json.dumps(result.as_json(), indent=2) + "\n")
    paths[1].write_text(ablation_markdown(result))
    has_numbers = any(s.n for stats in result.stats.values() for s in stats.values())
    if result.metrics and has_numbers:
        paths.extend(save_figure(ablation_chart(result), output, "ablation"))
    else:
        log("no results to draw; ablation.png not written")
    return paths


# --- running -------------------------------------------------------------------------------------
def plan_runs(recipe_paths: Sequence[str | Path], seeds: Sequence[int], output: str | Path) -> list[AblationRun]:
    """One :class:`AblationRun` per (recipe, seed), recipe-major; raises :class:`AblationError`
    when two recipe files share a stem (their runs would share a folder)."""
    names: dict[str, Path] = {}
    for path in map(Path, recipe_paths):
        if path.stem in names:
            raise AblationError(f"{path}: named {path.stem!r} like {names[path.stem]}; rename one (each arm is named by its file stem)")
        names[path.stem] = path
    output = Path(output)
    return [AblationRun(name, path, seed, output / name / f"seed{seed}") for name, path in names.items() for seed in seeds]


def _completed_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == "completed" else None


def run_ablation(
    recipe_paths: Sequence[str | Path],
    seeds: Sequence[int],
    output: str | Path,
    *,
    overrides: Sequence[str] = (),
    metrics: Sequence[str] = (),
    collect_only: bool = False,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> AblationResult:
    """Run (or skip, when completed earlier) every (recipe, seed) and aggregate the results.

    All recipes are loaded and validated before the first run starts (a bad one raises
    :class:`hcframe.recipe.RecipeError`). ``metrics`` selects the compared numbers (see
    :func:`select_metrics`; default: all). A failed run is logged, marked ``failed`` and left out
    of the aggregates; the remaining runs still run. ``collect_only``: run nothing, aggregate the
    runs that completed earlier (the others are marked ``not run`` and left out), for results
    gathered from runs started one by one or on several machines."""
    from hcframe.recipe import load_recipe
    from hcframe.run import run_recipe

    for assignment in overrides:
        if assignment.split("=", 1)[0].strip() == "train.seed":
            raise AblationError("--set train.seed: the seeds come from --seeds; drop this override")
    runs = plan_runs(recipe_paths, list(seeds), output)
    recipes = {(r.name, r.seed): load_recipe(r.recipe_path, [f"train.seed={r.seed}", *overrides]) for r in runs}

    for i, run in enumerate(runs, 1):
        where = f"[{i}/{len(runs)}] {run.name} seed {run.seed}"
        summary = _completed_summary(run.run_dir)
        if summary is not None:
            run.status, run.metrics = "skipped", run_metrics(summary)
            log(f"{where}: completed earlier, skipped ({run.run_dir})")
            continue
        if collect_only:
            run.status = "not run"
            log(f"{where}: not completed, left out ({run.run_dir})")
            continue
        checkpoints = run.run_dir / "checkpoints"
        resume = checkpoints.is_dir() and any(checkpoints.glob("*.pt"))
        if not resume and (run.run_dir / "metrics.jsonl").exists():
            # A run killed before its first checkpoint: start it again from a clean log.
            (run.run_dir / "metrics.jsonl").unlink()
        log(f"{where}: {'resuming' if resume else 'running'} in {run.run_dir}")
        try:
            summary = run_recipe(recipes[(run.name, run.seed)], run.run_dir, resume=resume, progress=False, log=log)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one arm failing must not stop the others
            run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"
            log(f"{where}: failed: {run.error}")
            continue
        run.status, run.metrics = "completed", run_metrics(summary)

    available = [m for run in runs for m in run.metrics]
    chosen = select_metrics(available, metrics) if available else []
    names = list(dict.fromkeys(r.name for r in runs))
    per_recipe = {name: [r.metrics for r in runs if r.name == name and r.status in ("completed", "skipped")] for name in names}
    return AblationResult(names, list(seeds), runs, chosen, aggregate(per_recipe, chosen), _final_metric_kinds(runs))


def _final_metric_kinds(runs: Sequence[AblationRun]) -> dict[str, str]:
    """``{"final/<key>": kind}`` from the metric schemas of the runs that fell back to their
    training metrics (a schema that cannot be read is skipped: its numbers show as plain values)."""
    kinds: dict[str, str] = {}
    for run in runs:
        if not any(m.startswith("final/") for m in run.metrics):
            continue
        try:
            schema = read_metric_schema(run.run_dir)
        except ValueError:
            continue
        kinds.update({f"final/{key}": info.kind for key, info in schema.items()})
    return kinds
