"""``[[eval]]`` tables: validated into :class:`EvalSpec` objects before any work starts.

Every table names a ``protocol`` and its own dataset component tables::

    [[eval]]
    protocol = "linear_probe"      # "linear_probe" | "multiview" | "retrieval" | "finetune"
    branch = "concat"              # a task name, or "concat" (see MultiTaskModel.encode)
    train_data = { name = "ucf101", root = "...", subset = "train", clips = { mode = "test", num_clips = 1, num_crops = 1 } }
    test_data  = { name = "ucf101", root = "...", subset = "test",  clips = { mode = "test", num_clips = 10, num_crops = 3 } }
    splits = [1, 2, 3]             # optional: sets the datasets' ``split`` argument, runs each, adds the mean

Keys common to every protocol (:class:`EvalSpec`): ``protocol``, ``branch``, ``train_data``,
``test_data``, ``transform`` (evaluation transform, run with ``train=False``; default: the recipe's
own ``[transform]``, so pixels are normalised as in pre-training), ``splits``, ``batch_size``
(videos per forward pass while extracting features or testing), ``num_workers``, ``seed``, and
``label`` (names the result; default ``<protocol>/<test dataset>/<branch>``).

Protocol options are the fields of :class:`LinearProbeOptions`, :class:`MultiviewOptions`,
:class:`RetrievalOptions` and :class:`FinetuneOptions`.

Errors are :class:`hcframe.tables.RecipeError` with one line naming ``eval[i].key``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Mapping

import attrs

from hcframe.tables import (
    ComponentSpec,
    RecipeError,
    build_component,
    build_engine_table,
    check_value,
    closest,
    factory_signature,
    fraction,
    increasing_positive,
    non_negative,
    positive,
    suggest,
)
from hcframe.registry import Registry

__all__ = [
    "COMMON_KEYS",
    "PROTOCOL_OPTIONS",
    "EvalSpec",
    "FeatureOptions",
    "FinetuneOptions",
    "LinearProbeOptions",
    "MultiviewOptions",
    "RetrievalOptions",
    "build_eval_specs",
    "parse_eval_tables",
]


def _positive_list(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not value or any(v <= 0 for v in value):
        raise ValueError(f"{attribute.name}: must be a non-empty list of positive integers, got {list(value)}")


def _grid(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if len(value) != 3 or any(v <= 0 for v in value):
        raise ValueError(f"{attribute.name}: expected three positive cell counts [t, h, w], got {list(value)}")


# --- protocol options ----------------------------------------------------------------------------
@attrs.frozen
class FeatureOptions:
    """Where the frozen features of the linear probe, multi-view test and retrieval come from.

    ``pool``: ``"global"`` (the encoder's spatio-temporal average) or ``"grid"``: the average over
    each cell of a ``grid = [t, h, w]`` partition of the feature map, concatenated (``t*h*w`` times
    as many features; the probe also sees where something is, e.g. the arms above the head).
    ``source``: ``"encoder"``, or ``"targets"``: instead of the encoder's features, the part
    targets that the distillation task named by ``branch`` trains on (its teacher cache, or the
    synthetic world's ground truth), pooled the same way: the probe's ceiling for what that
    teacher's output says about the action. Non-default choices are added to the result name:
    ``<protocol>/<test data>/<branch>[/targets][/grid<t>x<h>x<w>]``.
    """

    pool: Literal["global", "grid"] = "global"
    grid: list[int] = attrs.field(factory=lambda: [1, 2, 2], validator=_grid)
    source: Literal["encoder", "targets"] = "encoder"

    def pooling_name(self) -> str:
        """``"global"`` or ``"grid<t>x<h>x<w>"``, as :meth:`hcframe.evaluation.features.Pooling.name`."""
        return "global" if self.pool == "global" else "grid" + "x".join(str(int(g)) for g in self.grid)


@attrs.frozen
class LinearProbeOptions(FeatureOptions):
    """Linear probe on frozen features.

    Features are extracted once per video (the mean over the views the dataset returns: for the
    video datasets, ``clips = { mode = "test", num_clips = 1, num_crops = 1 }`` gives a centre clip
    of each training video, more views a smoother feature) and standardised with the training
    set's mean and standard deviation. A linear classifier (:class:`hcframe.heads.LinearHead`, zero-initialised) is fitted
    full-batch with L-BFGS (strong-Wolfe line search, float64) on the mean cross-entropy plus
    ``weight_decay / 2 * ||W||^2`` (scikit-learn's ``LogisticRegression`` with
    ``C = 1 / (weight_decay * N)``): a convex problem, so the result does not depend on a learning
    rate or on random initialisation. It iterates until the largest absolute component of the
    gradient is at most ``tol`` (scikit-learn's criterion; its default 1e-4 still moved test
    predictions on the quickstart's features, hence 1e-5); ``max_iter`` bounds the iterations, and
    a probe stopped by it (short of the optimum, so its accuracies depend on the limit) is
    reported with a one-line warning naming the evaluation. Reported on the test set at video
    level (test features averaged over each video's views): ``top1``, ``top5``; and
    ``probe_iterations``.
    """

    max_iter: int = attrs.field(default=2000, validator=positive)
    weight_decay: float = attrs.field(default=1e-4, validator=non_negative)
    tol: float = attrs.field(default=1e-5, validator=positive)


@attrs.frozen
class MultiviewOptions(FeatureOptions):
    """Multi-view testing of the linear probe: the same classifier as :class:`LinearProbeOptions`
    (trained on the training videos' view-averaged features), applied to every test view alone.
    Reports ``clip_top1`` (each view scored alone), and ``top1`` / ``top5`` of the video-level
    scores: the softmax probabilities averaged over the video's views (the clips x crops of the
    test dataset's test mode). ``max_iter``, ``weight_decay`` and ``tol`` as for the linear
    probe."""

    max_iter: int = attrs.field(default=2000, validator=positive)
    weight_decay: float = attrs.field(default=1e-4, validator=non_negative)
    tol: float = attrs.field(default=1e-5, validator=positive)


@attrs.frozen
class RetrievalOptions(FeatureOptions):
    """Nearest-neighbour video retrieval (the protocol of Xu et al., CVPR 2019, used by most video
    self-supervised papers): each test video (features averaged over its views) queries the
    training videos by cosine similarity; ``R@k`` is the fraction of queries whose ``k`` nearest
    training videos include one of the query's class. Values of ``ks`` larger than the number of
    training videos are not reported."""

    ks: list[int] = attrs.field(factory=lambda: [1, 5, 10, 20, 50], validator=_positive_list)


@attrs.frozen
class FinetuneOptions:
    """Fine-tuning: a copy of the encoder path (shared trunk + the chosen branch, or every branch
    for ``"concat"``) plus dropout and a linear classifier, trained end to end on ``train_data``;
    the pre-trained model itself is never modified.

    Defaults are the usual UCF101/HMDB51 fine-tuning protocol of the video self-supervised
    literature: SGD with momentum 0.9, learning rate 0.01 per 16 clips, weight
    decay 5e-4 (weights only, not biases or norm scales), dropout 0.5 before the classifier,
    cosine decay over ``epochs`` after ``warmup_epochs`` of linear warm-up, random resized crop +
    horizontal flip for training, 10 clips x 3 crops for testing. Papers train for 100-200
    epochs; set ``epochs`` accordingly.

    ``lr`` is the rate **for a batch of 16 clips**: the rate used is ``lr * batch_size / 16``
    (the linear scaling rule; ``batch_size`` 8 trains at 0.005, 64 at 0.04), logged at the start.

    ``train_transform``: the batch transform for training clips, run with ``train=True``;
    default: the recipe's ``[transform]`` reduced to the protocol's crop and flip (its
    ``finetune_transform()``: ``video_augment`` without colour jitter, grayscale and blur). Clips
    are never mirrored when the training dataset declares ``flip_preserves_label = False``.
    ``schedule = "step"`` divides the rate by ``1/gamma`` at each epoch in ``milestones``.

    Testing is multi-view on ``test_data``: ``clip_top1`` (each view alone) and ``top1`` / ``top5``
    of the softmax scores averaged over each video's views. A ``test_data`` table gets the
    arguments its dataset declares for 10 clips x 3 crops
    (:meth:`hcframe.VideoDataset.multiview_arguments`) where it does not set them, recorded in
    the resolved recipe.
    """

    epochs: int = attrs.field(default=100, validator=positive)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = attrs.field(default=0.01, validator=positive)
    momentum: float = attrs.field(default=0.9, validator=fraction)
    weight_decay: float = attrs.field(default=5e-4, validator=non_negative)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = attrs.field(default=0, validator=non_negative)
    milestones: list[int] = attrs.field(factory=list, validator=increasing_positive)
    gamma: float = attrs.field(default=0.1, validator=fraction)
    dropout: float = attrs.field(default=0.5, validator=fraction)
    label_smoothing: float = attrs.field(default=0.0, validator=fraction)


#: The fine-tuning protocol's test views (clips, crops), filled into ``test_data`` tables that do not
#: set them, as the dataset asks for them (:meth:`hcframe.VideoDataset.multiview_arguments`).
FINETUNE_TEST_VIEWS: tuple[int, int] = (10, 3)

PROTOCOL_OPTIONS: dict[str, type] = {
    "linear_probe": LinearProbeOptions,
    "multiview": MultiviewOptions,
    "retrieval": RetrievalOptions,
    "finetune": FinetuneOptions,
}

#: Keys every [[eval]] table may have, with their types (``train_transform`` only for finetune).
COMMON_KEYS: dict[str, Any] = {
    "protocol": str,
    "branch": str,
    "train_data": dict,
    "test_data": dict,
    "transform": dict,
    "splits": list[int],
    "batch_size": int,
    "num_workers": int,
    "seed": int,
    "label": str,
}
COMMON_DEFAULTS: dict[str, Any] = {"branch": "concat", "batch_size": 8, "num_workers": 0, "seed": 0, "label": ""}


@attrs.frozen
class EvalSpec:
    """One validated ``[[eval]]`` table.

    ``datasets`` maps each split to its (train, test) dataset specs: the keys are the ``splits``
    asked for, or ``None`` alone when the table has no ``splits``. ``transform`` is ``None`` for
    "the recipe's transform". ``train_transform`` likewise (fine-tuning only).
    """

    index: int
    protocol: str
    branch: str
    datasets: Mapping[int | None, tuple[ComponentSpec, ComponentSpec]]
    transform: ComponentSpec | None
    train_transform: ComponentSpec | None
    options: Any
    batch_size: int
    num_workers: int
    seed: int
    label: str

    @property
    def where(self) -> str:
        return f"eval[{self.index}]"

    @property
    def splits(self) -> list[int | None]:
        return list(self.datasets)

    def result_prefix(self) -> str:
        """``label``, or ``<protocol>/<test dataset name>/<branch>`` (+ ``/targets``, ``/grid<t>x<h>x<w>``
        for those feature options)."""
        if self.label:
            return self.label
        test = next(iter(self.datasets.values()))[1]
        prefix = f"{self.protocol}/{test.name}/{self.branch}"
        if getattr(self.options, "source", "encoder") != "encoder":
            prefix += f"/{self.options.source}"
        if getattr(self.options, "pool", "global") != "global":
            prefix += f"/{self.options.pooling_name()}"
        return prefix

    def result_key(self, split: int | None) -> str:
        """The key of this evaluation's results for ``split`` in ``summary.json["eval"]``."""
        prefix = self.result_prefix()
        if split is not None:
            return f"{prefix}/split{split}"
        test = self.datasets[None][1]
        own = test.args.get("split")
        if isinstance(own, int) and not isinstance(own, bool):
            return f"{prefix}/split{own}"
        return prefix

    def mean_key(self) -> str | None:
        """Key of the mean over splits, when more than one split is asked for."""
        return f"{self.result_prefix()}/mean" if len(self.datasets) > 1 else None


# --- parsing -------------------------------------------------------------------------------------
def _dataset_specs(
    table: dict[str, Any], key: str, where: str, splits: list[int] | None, registry: Registry
) -> dict[int | None, ComponentSpec]:
    if not isinstance(table, dict):
        raise RecipeError(f"{where}.{key}: expected a dataset table like {{ name = \"ucf101\", ... }}")
    if splits is None:
        return {None: build_component("dataset", table, f"{where}.{key}", registry)}
    if "split" in table:
        raise RecipeError(f"{where}.{key}.split: the table also has splits = {splits}; remove one of them")
    base = build_component("dataset", table, f"{where}.{key}", registry)
    signature, _ = factory_signature(registry.get("dataset", base.name).factory)
    if "split" not in signature.parameters:
        raise RecipeError(f"{where}.splits: dataset {base.name!r} has no 'split' argument; remove splits")
    return {split: build_component("dataset", {**table, "split": split}, f"{where}.{key}", registry) for split in splits}


def _parse_one(index: int, table: Any, registry: Registry, branches: list[str]) -> tuple[EvalSpec, dict[str, Any]]:
    where = f"eval[{index}]"
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: expected an [[eval]] table")
    protocol = table.get("protocol")
    if protocol is None:
        raise RecipeError(f"{where}.protocol: missing; set it to one of {', '.join(PROTOCOL_OPTIONS)}")
    if protocol not in PROTOCOL_OPTIONS:
        close = closest(str(protocol), list(PROTOCOL_OPTIONS))
        hint = f"did you mean {close!r}?" if close else f"use one of {', '.join(PROTOCOL_OPTIONS)}"
        raise RecipeError(f"{where}.protocol: unknown protocol {protocol!r}; {hint}")
    options_cls = PROTOCOL_OPTIONS[protocol]
    option_names = [f.name for f in attrs.fields(options_cls)]
    allowed = list(COMMON_KEYS) + option_names + (["train_transform"] if protocol == "finetune" else [])
    for key in table:
        if key not in allowed:
            raise RecipeError(f"{where}.{key}: unknown key for protocol {protocol!r}; {suggest(key, allowed)}")
    common = {**COMMON_DEFAULTS}
    for key, annotation in COMMON_KEYS.items():
        if key in table and annotation is not dict:
            common[key] = check_value(table[key], annotation, f"{where}.{key}")
    for key in ("batch_size",):
        if common[key] <= 0:
            raise RecipeError(f"{where}.{key}: must be > 0, got {common[key]}")
    if common["num_workers"] < 0:
        raise RecipeError(f"{where}.num_workers: must be >= 0, got {common['num_workers']}")
    branch = common["branch"]
    if branch != "concat" and branch not in branches:
        raise RecipeError(f"{where}.branch: no task {branch!r}; {suggest(branch, ['concat', *branches])}")
    splits = common.get("splits")
    if splits is not None:
        if not splits or len(set(splits)) != len(splits):
            raise RecipeError(f"{where}.splits: expected a non-empty list of distinct split numbers, got {splits}")
    for key in ("train_data", "test_data"):
        if key not in table:
            raise RecipeError(f"{where}.{key}: missing dataset table, e.g. {key} = {{ name = \"ucf101\", ... }}")
    train = _dataset_specs(table["train_data"], "train_data", where, splits, registry)
    test_table = _with_test_views(table["test_data"], registry) if protocol == "finetune" else table["test_data"]
    test = _dataset_specs(test_table, "test_data", where, splits, registry)
    transform = build_component("transform", table["transform"], f"{where}.transform", registry) if "transform" in table else None
    train_transform = (
        build_component("transform", table["train_transform"], f"{where}.train_transform", registry)
        if "train_transform" in table
        else None
    )
    options = build_engine_table(options_cls, {k: v for k, v in table.items() if k in option_names}, where)
    if getattr(options, "source", "encoder") == "targets" and branch == "concat":
        raise RecipeError(f"{where}.branch: source = \"targets\" reads the part targets of one task; set branch to that task's name")
    spec = EvalSpec(
        index=index,
        protocol=protocol,
        branch=branch,
        datasets={s: (train[s], test[s]) for s in train},
        transform=transform,
        train_transform=train_transform,
        options=options,
        batch_size=common["batch_size"],
        num_workers=common["num_workers"],
        seed=common["seed"],
        label=common["label"],
    )
    # The resolved table (defaults filled in) is what the run's recipe.toml records; it parses
    # back to the same spec.
    first_train, first_test = next(iter(spec.datasets.values()))
    resolved: dict[str, Any] = {"protocol": protocol, **{k: v for k, v in common.items() if k not in ("protocol",)}}
    resolved["train_data"] = _without_split(first_train, splits)
    resolved["test_data"] = _without_split(first_test, splits)
    if transform is not None:
        resolved["transform"] = transform.to_table()
    if train_transform is not None:
        resolved["train_transform"] = train_transform.to_table()
    for name, value in attrs.asdict(options).items():
        resolved[name] = list(value) if isinstance(value, tuple) else value
    if splits is None:
        resolved.pop("splits", None)
    return spec, resolved


def _with_test_views(table: Any, registry: Registry) -> Any:
    """``table`` with the arguments its dataset declares for :data:`FINETUNE_TEST_VIEWS` where it
    does not set them (a table that is not a dataset table is returned as is, for the usual error)."""
    if not isinstance(table, dict) or not isinstance(table.get("name"), str) or table["name"] not in registry.names("dataset"):
        return table
    factory = registry.get("dataset", table["name"]).factory
    declared = factory.multiview_arguments(*FINETUNE_TEST_VIEWS) if hasattr(factory, "multiview_arguments") else {}
    return _fill_unset(table, declared)


def _fill_unset(table: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``table`` with the keys of ``defaults`` it does not set, nested tables key by key."""
    filled = dict(table)
    for key, value in defaults.items():
        if key not in filled:
            filled[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(filled[key], dict):
            filled[key] = _fill_unset(filled[key], value)
    return filled


def _without_split(spec: ComponentSpec, splits: list[int] | None) -> dict[str, Any]:
    table = spec.to_table()
    if splits is not None:
        table.pop("split", None)
    return table


def _parse_all(tables: Any, registry: Registry, branches: list[str]) -> list[tuple[EvalSpec, dict[str, Any]]]:
    if not isinstance(tables, list):
        raise RecipeError("eval: expected [[eval]] tables (an array of tables)")
    parsed = [_parse_one(i, t, registry, branches) for i, t in enumerate(tables)]
    seen: dict[str, int] = {}
    for spec, _ in parsed:
        for split in spec.splits:
            key = spec.result_key(split)
            if key in seen:
                raise RecipeError(
                    f"{spec.where}: its results would be stored under {key!r} like those of eval[{seen[key]}]; "
                    f"set label = \"...\" to tell them apart"
                )
            seen[key] = spec.index
    return parsed


def parse_eval_tables(tables: Any, registry: Registry, branches: list[str]) -> tuple[list[EvalSpec], list[dict[str, Any]]]:
    """Validate the recipe's ``[[eval]]`` tables, once: the :class:`EvalSpec` objects and the
    tables resolved (defaults filled in, as the run's ``recipe.toml`` records them).

    ``branches`` are the recipe's task names. Called by :func:`hcframe.recipe.parse_recipe`, which
    keeps both (``Recipe.eval_specs``, ``Recipe.evaluations``).
    Raises :class:`RecipeError` with one line naming ``eval[i].key``.
    """
    parsed = _parse_all(tables, registry, branches)
    return [spec for spec, _ in parsed], [copy.deepcopy(resolved) for _, resolved in parsed]


def build_eval_specs(tables: list[dict[str, Any]], registry: Registry, branches: list[str]) -> list[EvalSpec]:
    """The :class:`EvalSpec` objects of (resolved or raw) ``[[eval]]`` tables outside a recipe (a
    recipe already holds its own in ``Recipe.eval_specs``)."""
    return [spec for spec, _ in _parse_all(tables, registry, branches)]
