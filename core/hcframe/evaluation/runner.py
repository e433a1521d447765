"""Running a recipe's ``[[eval]]`` stages, on a trained model or on a checkpoint.

Results are a flat dict ``{"<protocol>/<test dataset>/<branch>[/split<k>]": {metric: value}}``
(or ``"<label>[/split<k>]"``) plus ``".../mean"`` entries averaging the float metrics over splits
when several are asked for. Accuracies and recalls are fractions in [0, 1].

Under torchrun every process takes part: feature extraction and the test passes are sharded
over the processes and gathered (:mod:`hcframe.evaluation.features`), fine-tuning trains under
DDP; the fits on features (linear probe, multi-view, retrieval) and the metrics are computed on the
main process, which returns the results (the others return ``{}``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from rich.table import Table

from hcframe.config import BuiltRun, EvalDatasetKey, build_run, resolve_device
from hcframe.engine import distributed as hd
from hcframe.engine.checkpoint import compare_state_dicts, load_checkpoint
from hcframe.engine.model import MultiTaskModel
from hcframe.evaluation.features import FeatureRequest, Pooling, encoder_fingerprint, load_or_extract_feature_sets, load_or_extract_features
from hcframe.evaluation.finetune import finetune_metrics
from hcframe.evaluation.linear_probe import linear_probe_metrics
from hcframe.evaluation.multiview import multiview_probe_metrics
from hcframe.evaluation.retrieval import retrieval_metrics
from hcframe.eval_tables import EvalSpec
from hcframe.files import write_json_atomic
from hcframe.metrics import eval_metric_kind, format_metric, metric_order
from hcframe.recipe import Recipe
from hcframe.tables import ComponentSpec
from hcframe.registry import Registry, get_registry

__all__ = ["default_eval_dir", "eval_table", "evaluate_checkpoint", "load_model_weights", "run_evaluations"]

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class _Context:
    """What every evaluation of one call shares: model, device, registry, caches, and the datasets
    :func:`hcframe.config.build_run` built (``datasets``; others are built when needed)."""

    def __init__(self, recipe: Recipe, model: MultiTaskModel, run_dir: Path, device: torch.device, registry: Registry, log: Log,
                 datasets: Mapping[EvalDatasetKey, Any], progress: bool = False) -> None:
        self.recipe, self.model, self.device, self.registry, self.log = recipe, model, device, registry, log
        self.progress = progress  # progress bars (a terminal), else progress lines through log
        self.cache_dir = run_dir / "features"
        self.precision = recipe.train.precision
        self.datasets = datasets
        self._fingerprints: dict[str, str] = {}

    def dataset(self, spec: EvalSpec, split: int | None, role: str) -> Any:
        """The built ``train_data`` (role ``"train"``) or ``test_data`` of ``spec`` for ``split``."""
        built = self.datasets.get((spec.index, split, role))
        if built is None:
            train, test = spec.datasets[split]
            built = (train if role == "train" else test).build(self.registry)
        return built

    def fingerprint(self, branch: str) -> str:
        if branch not in self._fingerprints:
            self._fingerprints[branch] = encoder_fingerprint(self.model, branch)
        return self._fingerprints[branch]

    def transform(self, spec: ComponentSpec | None) -> tuple[torch.nn.Module, dict[str, Any]]:
        chosen = spec or self.recipe.transform
        return chosen.build(self.registry).to(self.device), chosen.to_table()

    def features(self, spec: EvalSpec, dataset: ComponentSpec, split: int | None, role: str):
        transform, table = self.transform(spec.transform)
        built = self.datasets.get((spec.index, split, role))
        targets, identity = (None, None) if spec.options.source == "encoder" else self.targets(spec)
        fs, _, _ = load_or_extract_features(
            self.model, spec.branch, dataset, transform, table, self.device, self.cache_dir,
            fingerprint=None if targets else self.fingerprint(spec.branch), batch_size=spec.batch_size,
            num_workers=spec.num_workers, precision=self.precision, pooling=_pooling(spec),
            targets=targets, targets_identity=identity, registry=self.registry, log=self.log,
            progress=self.progress, dataset=built,
        )
        return fs

    def extract_shared_features(self, specs: list[EvalSpec]) -> None:
        """Extract, in one pass per dataset, the encoder features that several evaluations read
        (other branches or poolings of the same train or test data, transform and batch size), into
        the cache where :meth:`features` then finds them: the quickstart's six evaluations read the
        training videos once instead of four times."""
        groups: dict[str, list[tuple[EvalSpec, ComponentSpec, int | None, str]]] = {}
        for spec in specs:
            if spec.protocol not in FEATURE_PROTOCOLS or spec.options.source != "encoder":
                continue
            transform_table = (spec.transform or self.recipe.transform).to_table()
            for split, pair in spec.datasets.items():
                for role, dataset in zip(("train", "test"), pair):
                    key = json.dumps([dataset.to_table(), transform_table, spec.batch_size], sort_keys=True, default=str)
                    groups.setdefault(key, []).append((spec, dataset, split, role))
        for members in groups.values():
            requests = list(dict.fromkeys(FeatureRequest(s.branch, _pooling(s), self.fingerprint(s.branch)) for s, *_ in members))
            if len(requests) < 2:
                continue  # one evaluation reads it: it extracts them itself
            spec, dataset, split, role = members[0]
            transform, table = self.transform(spec.transform)
            load_or_extract_feature_sets(
                self.model, requests, dataset, transform, table, self.device, self.cache_dir, batch_size=spec.batch_size,
                num_workers=spec.num_workers, precision=self.precision, registry=self.registry, log=self.log,
                progress=self.progress, dataset=self.datasets.get((spec.index, split, role)), load_hits=False,
            )

    def targets(self, spec: EvalSpec) -> tuple[Callable[[Any], Any], Any]:
        """``source = "targets"``: the target store of the task ``spec.branch`` for a dataset, and
        what those targets depend on (the task's recipe table, teacher included)."""
        task = self.model.tasks[spec.branch]
        if "parts" not in task.needs:
            raise ValueError(f"{spec.where}: source = \"targets\" but task {spec.branch!r} trains on no part targets")

        def store(dataset: Any) -> Any:
            found = task.target_store(dataset)
            if found is None:
                raise ValueError(f"{spec.where}: task {spec.branch!r} computes its targets online; source = \"targets\" "
                                 "needs them from a store (a teacher cache, or the synthetic world's ground truth)")
            return found

        return store, self.recipe.tasks[spec.branch].to_table()


def _pooling(spec: EvalSpec) -> Pooling:
    return Pooling(spec.options.pool, tuple(spec.options.grid))


def _train_test_features(ctx: _Context, spec: EvalSpec, split: int | None):
    train, test = spec.datasets[split]
    return ctx.features(spec, train, split, "train"), ctx.features(spec, test, split, "test")


def _with_bad(metrics: dict[str, Any], *feature_sets: Any) -> dict[str, Any]:
    bad = sum(fs.num_bad for fs in feature_sets)
    return {**metrics, "bad_videos": bad} if bad else metrics


def _probe_protocol(metrics_of: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A protocol that fits the linear probe on the train features and scores the test features
    with ``metrics_of`` (:func:`linear_probe_metrics` or :func:`multiview_probe_metrics`)."""

    def protocol(ctx: _Context, spec: EvalSpec, split: int | None, key: str) -> dict[str, Any]:
        tr, te = _train_test_features(ctx, spec, split)
        if not hd.is_main_process():  # the others helped extract the features; the fit is the main's
            return {}
        o = spec.options
        metrics = metrics_of(tr, te, weight_decay=o.weight_decay, max_iter=o.max_iter, tol=o.tol, device=ctx.device,
                             where=f"{spec.where} {key}", log=ctx.log)
        return _with_bad(metrics, tr, te)

    return protocol


_linear_probe = _probe_protocol(linear_probe_metrics)
_multiview = _probe_protocol(multiview_probe_metrics)


def _retrieval(ctx: _Context, spec: EvalSpec, split: int | None, key: str) -> dict[str, Any]:
    tr, te = _train_test_features(ctx, spec, split)
    if not hd.is_main_process():
        return {}
    return _with_bad(retrieval_metrics(tr, te, list(spec.options.ks), log=ctx.log), tr, te)


def _finetune(ctx: _Context, spec: EvalSpec, split: int | None, key: str) -> dict[str, Any]:
    # Without a train_transform: the recipe's transform reduced to the protocol's crop + flip.
    train_transform = ctx.transform(spec.train_transform)[0] if spec.train_transform else ctx.transform(None)[0].finetune_transform()
    test_transform, _ = ctx.transform(spec.transform)
    train_ds, test_ds = ctx.dataset(spec, split, "train"), ctx.dataset(spec, split, "test")
    train_ds.num_views = test_ds.num_views = 1
    return finetune_metrics(
        ctx.model, spec.branch, train_ds, test_ds, spec.options, train_transform, test_transform, ctx.device,
        batch_size=spec.batch_size, num_workers=spec.num_workers, seed=spec.seed, precision=ctx.precision, log=ctx.log,
        progress=ctx.progress,
    )


#: The protocols that fit on frozen features (and share their extraction, see _Context.extract_shared_features).
FEATURE_PROTOCOLS = ("linear_probe", "multiview", "retrieval")
PROTOCOLS: dict[str, Callable[[_Context, EvalSpec, "int | None", str], dict[str, Any]]] = {
    "linear_probe": _linear_probe,
    "multiview": _multiview,
    "retrieval": _retrieval,
    "finetune": _finetune,
}


def _mean_over_splits(per_split: list[dict[str, Any]], splits: list[Any]) -> dict[str, Any]:
    keys = [k for k, v in per_split[0].items() if isinstance(v, float) and all(isinstance(m.get(k), float) for m in per_split)]
    return {**{k: sum(m[k] for m in per_split) / len(per_split) for k in keys}, "splits": list(splits)}


def run_evaluations(
    recipe: Recipe,
    model: MultiTaskModel,
    run_dir: Path,
    *,
    device: torch.device | None = None,
    log: Log = _stderr,
    progress: bool = False,
    registry: Registry | None = None,
    datasets: Mapping[EvalDatasetKey, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every ``[[eval]]`` table of ``recipe`` on ``model`` (left unchanged, its train/eval mode
    restored); features are cached under ``run_dir/features``. Each evaluation runs inside
    :func:`torch.random.fork_rng` seeded with its ``seed``: results do not depend on what ran
    before, and the caller's random state is untouched. Under torchrun every process must call it
    (see the module docstring); the main process returns the results and logs, the others return
    ``{}``. ``progress``: progress bars with the time left (for a terminal); without, loops that
    take a while write progress lines to ``log``.
    ``datasets``: the ``[[eval]]`` datasets already built (:attr:`hcframe.config.BuiltRun.eval_datasets`);
    the others are built from their tables."""
    main = hd.is_main_process()
    if not main:
        log, progress = _quiet, False
    registry = registry or get_registry()
    if device is None:
        device = resolve_device(recipe.train.device)
    ctx = _Context(recipe, model, Path(run_dir), device, registry, log, datasets or {}, progress)
    results: dict[str, dict[str, Any]] = {}
    was_training = model.training
    model.eval()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices):  # a DataLoader with workers draws a seed
            ctx.extract_shared_features(list(recipe.eval_specs))
        for spec in recipe.eval_specs:
            per_split = []
            for split in spec.datasets:
                key = spec.result_key(split)
                started = time.perf_counter()
                log(f"{spec.where}: {key}")
                with torch.random.fork_rng(devices=rng_devices):
                    torch.manual_seed(spec.seed)
                    metrics = PROTOCOLS[spec.protocol](ctx, spec, split, key)
                results[key] = metrics
                per_split.append(metrics)
                shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
                log(f"{spec.where}: {key}: {shown} ({time.perf_counter() - started:.1f} s)")
            mean_key = spec.mean_key()
            if mean_key is not None:
                results[mean_key] = _mean_over_splits(per_split, spec.splits)
    finally:
        model.train(was_training)
    return results if main else {}


def _quiet(message: str) -> None:
    """The log of the non-main processes: the main process reports."""


# --- checkpoints ---------------------------------------------------------------------------------
def load_model_weights(model: MultiTaskModel, checkpoint: Path, recipe: Recipe | None = None, registry: Registry | None = None) -> dict[str, Any]:
    """Load a training checkpoint's ``model`` weights (or a bare model state dict) into ``model``
    (``weights_only=True``). Returns the checkpoint's other fields (``step`` …).

    Given the ``recipe``, ``checkpoint`` may also hold an encoder alone: an encoder export or a
    state dict in a layout the recipe's encoder reads (see :mod:`hcframe.engine.pretrained`). Its
    weights go into the trunk and every branch; the tasks' heads keep their initialisation (no
    evaluation protocol uses them). Returns ``{"weights": <what was loaded>}`` then.

    Raises :class:`~hcframe.engine.pretrained.PretrainedError` (a ``ValueError``) with one line
    when the weights do not fit the recipe's model."""
    from hcframe.engine.pretrained import PretrainedError, encoder_weights_from, encoder_shapes, holds_model_state, load_encoder_into_model

    state = load_checkpoint(Path(checkpoint))
    model_state = holds_model_state(state)
    if model_state is None and recipe is not None:
        encoder = recipe.encoder.build(registry or get_registry())
        encoder_weights = encoder_weights_from(
            state, checkpoint, encoder_shapes(encoder), list(encoder.state_dict_layouts()), encoder_name=recipe.encoder.name
        )
        load_encoder_into_model(model, encoder_weights)
        return {"weights": encoder_weights.describe()}
    weights = model_state if model_state is not None else state
    if not isinstance(weights, dict):
        raise PretrainedError(f"{checkpoint}: holds no model weights (expected a training checkpoint or a state dict)")
    mismatch = compare_state_dicts(model.state_dict(), weights)
    if mismatch:
        raise PretrainedError(f"{checkpoint}: weights do not fit the recipe's model: {mismatch.describe()}; use the recipe the checkpoint was trained with")
    model.load_state_dict(weights)
    info = {k: v for k, v in state.items() if k != "model"} if weights is not state else {}
    return {**info, "weights": f"hcframe model weights {checkpoint}"}


def default_eval_dir(checkpoint: Path) -> Path:
    """The run directory of ``<run>/checkpoints/step_N.pt``, else the checkpoint's folder."""
    checkpoint = Path(checkpoint)
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def evaluate_checkpoint(
    run: Recipe | BuiltRun,
    checkpoint: Path,
    output_dir: Path,
    *,
    device: torch.device | None = None,
    log: Log = _stderr,
    progress: bool = False,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Load ``checkpoint``'s weights into the recipe's model, run the evaluation stages; write
    ``output_dir/eval.json`` (recipe, checkpoint, step, ``eval`` results) and return it. Under
    torchrun every process evaluates a share; the main process writes the file (the others'
    ``eval`` is empty).

    ``run``: what :func:`hcframe.config.build_run` built (``train_data=False`` is enough), or a
    recipe to build so (raising :class:`~hcframe.tables.RecipeError`)."""
    started = time.perf_counter()
    registry = registry or get_registry()
    built = run if isinstance(run, BuiltRun) else build_run(run, registry=registry, train_data=False)
    device = device or built.device
    started_group = not hd.is_distributed() and hd.init_from_environment(device.type)  # under torchrun: a share each
    try:
        return _evaluate_checkpoint(built, checkpoint, output_dir, device, log, progress, registry, started)
    finally:
        if started_group:
            hd.shutdown()


def _evaluate_checkpoint(built: BuiltRun, checkpoint: Path, output_dir: Path, device: torch.device, log: Log, progress: bool,
                         registry: Registry, started: float) -> dict[str, Any]:
    recipe, model = built.recipe, built.model
    info = load_model_weights(model, checkpoint, recipe, registry)
    if hd.is_main_process():
        log(f"weights: {info['weights']}")
    model.to(device)
    output_dir = Path(output_dir)
    results = run_evaluations(recipe, model, output_dir, device=device, log=log, progress=progress, registry=registry,
                              datasets=built.eval_datasets)
    report = {
        "recipe": recipe.source,
        "checkpoint": str(checkpoint),
        "step": info.get("step"),
        "weights": info["weights"],
        "eval": results,
        "wall_time_s": time.perf_counter() - started,
    }
    if hd.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / "eval.json", report)
    return report


# --- display -------------------------------------------------------------------------------------
def eval_table(results: dict[str, dict[str, Any]], title: str = "evaluation") -> Table:
    """A rich table: one row per result key, one column per float metric (accuracies and
    recalls in %), and the number of train/test videos and test views per video."""
    columns = sorted({n for m in results.values() for n, v in m.items() if isinstance(v, float)}, key=metric_order)
    table = Table(title=title, caption="accuracies and recalls in %; videos: train/test; views: per test video")
    table.add_column("evaluation", overflow="fold", min_width=20)
    for name in columns:
        table.add_column(name, justify="right")
    table.add_column("videos", justify="right")
    table.add_column("views", justify="right")
    for key, metrics in results.items():
        cells = [format_metric(metrics[n], eval_metric_kind(n)) if isinstance(metrics.get(n), float) else "-" for n in columns]
        videos = f"{metrics['num_train']}/{metrics['num_test']}" if "num_train" in metrics and "num_test" in metrics else "-"
        table.add_row(key, *cells, videos, str(metrics.get("test_views", "-")))
    return table
