"""A recipe turned into built, checked objects before any work starts: :func:`build_run`.

``hcframe run`` (``--dry-run`` too), ``hcframe info``, ``hcframe eval`` and the plugins' commands
that read a recipe (``cache-teacher``, ``check-videos``) all go through :func:`build_run`, so a
recipe that cannot run is refused with one line and exit code 2 *before* a run directory exists.

Two stages, each raising :class:`~hcframe.tables.RecipeError` (``file: key.path: problem``):

1. :func:`hcframe.recipe.load_recipe` reads the file (a regular UTF-8 file of at most
   :data:`~hcframe.recipe.MAX_RECIPE_BYTES`) and checks every table's keys, types and values
   (non-finite numbers are refused everywhere). Nothing is constructed.
2. :func:`build_run` constructs what the recipe names, in the order training uses it:

   - the device (``train.device = "cuda"`` needs one) and the process count
     (``train.batch_size`` must divide over the ranks torchrun starts);
   - the encoder, the tasks and the model (``model.split``, ``model.init``, ``[combiner]``), seeded
     with ``train.seed`` exactly as training seeds them; a trial optimiser and the schedule;
   - the training dataset (its constructor checks its root, split files, lists and arguments), the
     targets its tasks read, the transform; a task that needs labels gets a labelled dataset with
     no more classes than the task predicts; the dataset holds at least one batch per rank;
   - the ``[[hooks]]``; every ``[[eval]]`` dataset (labelled) and transform.

Errors raised by a constructor become recipe errors naming the key they are about. Components
raise ``ValueError`` (or ``FileNotFoundError``) whose message starts with the argument's name,
optionally after the component's own name: ``"frames: expected an integer >= 1, got 0"`` from
the dataset, or ``"my_task: temperature must be a number > 0, got -0.1"`` from the task
``[tasks.mine]``, become ``data.frames: expected an integer >= 1, got 0`` and
``tasks.mine.temperature: must be a number > 0, got -0.1``. A message that names a path the
table gives (a dataset root) goes under that key; any other under the table (``data: ...``).

``hcframe run --dry-run`` and ``hcframe info`` build with ``check_only=True``: a dataset whose
construction is slow work (the synthetic world is generated on first use) checks its arguments
and files through :meth:`hcframe.VideoDataset.check` instead of being built.

What is built is returned as a :class:`BuiltRun`; the trainer (:class:`hcframe.engine.trainer.Trainer`)
and the evaluation take it instead of building anything themselves.
"""

from __future__ import annotations

import copy
import os
import random
import re
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import attrs
import numpy as np
import torch

from hcframe.components import BatchTransform, Hook
from hcframe.data import DatasetCheck, VideoDataset
from hcframe.engine.combiner import TaskCombiner
from hcframe.engine.model import MultiTaskModel
from hcframe.engine.optim import build_optimizer, build_schedule
from hcframe.engine.sampler import EpochSampler
from hcframe.recipe import Recipe, load_recipe
from hcframe.registry import Registry, get_registry
from hcframe.tables import ComponentSpec, RecipeError, factory_signature

__all__ = ["BuiltRun", "EvalDatasetKey", "build_dataset", "build_model", "build_run", "construct", "constructor_error", "resolve_device", "seed_everything"]

#: ``(eval table index, split or None, "train" | "test")``: where an ``[[eval]]`` dataset is kept.
EvalDatasetKey = tuple[int, "int | None", str]


@attrs.define(eq=False)
class BuiltRun:
    """Everything a recipe names, constructed and checked (see the module docstring).

    ``model``: the encoder split into trunk and branches, the tasks (set up) and the combiner, on
    the CPU, initialised from ``train.seed`` (and ``[model] init``). ``dataset``: the training
    dataset, with ``num_views`` and its tasks' ``target_store`` set (``None`` when built with
    ``train_data=False``, or with ``check_only=True`` for a dataset that checked itself). ``transform``: the training transform, told about the part labels and
    whether the dataset allows flips. ``hooks``: the recipe's ``[[hooks]]``, in order.
    ``eval_datasets``: every ``[[eval]]`` dataset by :data:`EvalDatasetKey` (those built).
    """

    recipe: Recipe
    device: torch.device
    world_size: int
    model: MultiTaskModel
    transform: BatchTransform
    dataset: VideoDataset | None
    hooks: list[Hook]
    eval_datasets: dict[EvalDatasetKey, VideoDataset]

    @property
    def source(self) -> str:
        return self.recipe.source


def build_run(
    recipe: Recipe | str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    registry: Registry | None = None,
    log: Callable[[str], None] | None = None,
    train_data: bool = True,
    check_only: bool = False,
) -> BuiltRun:
    """Load (when given a path, with ``overrides``), construct and check everything a recipe names.

    ``train_data=False`` leaves out the training dataset and its checks (``hcframe eval`` needs
    only the model and the ``[[eval]]`` data). ``check_only=True`` checks, without building them,
    the datasets that can (:meth:`hcframe.VideoDataset.check`: the synthetic world is not
    generated); they are missing from the result (``dataset`` is ``None``). ``hcframe run
    --dry-run`` and ``hcframe info`` build so; a trainer needs a full build. ``log`` receives what
    loading ``[model] init`` reports. Raises :class:`RecipeError`: one line, ``<recipe file>:
    <key path>: <problem>``.
    """
    registry = registry or get_registry()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(Path(recipe), tuple(overrides), registry)
    elif overrides:
        raise TypeError("overrides apply to a recipe file; apply them before parsing a Recipe")
    try:
        return _build(recipe, registry, log, train_data, check_only)
    except RecipeError as exc:
        raise RecipeError(f"{recipe.source}: {exc}") from exc.__cause__


# --- constructing components ---------------------------------------------------------------------
def construct(spec: ComponentSpec, registry: Registry | None = None, **extra: Any) -> Any:
    """Build ``spec`` (its nested component tables first, so an error in one names its own key);
    a constructor's error becomes a :class:`RecipeError` naming the key path (without the file:
    :func:`build_run` adds it). ``extra`` are further constructor arguments."""
    registry = registry or get_registry()
    kwargs = {k: construct(v, registry) if isinstance(v, ComponentSpec) else copy.deepcopy(v) for k, v in spec.args.items()}
    kwargs.update(extra)
    try:
        return registry.create(spec.kind, spec.name, **kwargs)
    except Exception as exc:  # whatever a constructor raises, the recipe cannot run
        arguments = set(spec.args) | set(factory_signature(registry.get(spec.kind, spec.name).factory)[0].parameters)
        raise RecipeError(constructor_error(spec, exc, arguments)) from (None if _expected(exc) else exc)


def _expected(exc: BaseException) -> bool:
    """The errors components raise on purpose for bad arguments (their message is the report)."""
    return isinstance(exc, (ValueError, TypeError, OSError))


# An argument, or a key of the settings table an argument holds (``argument.key: ...``).
_ARGUMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?::\s*|\s+)(.+)", re.DOTALL)


def constructor_error(spec: ComponentSpec, exc: BaseException, arguments: Collection[str] | None = None) -> str:
    """``key.path: problem`` for an error raised while constructing ``spec`` (see the module
    docstring for how the key is found). ``arguments``: the constructor's argument names
    (default: the table's keys)."""
    arguments = set(spec.args) if arguments is None else set(arguments)
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        message = f"{exc.filename}: {exc.strerror}"
    else:
        message = str(exc)
    message = " ".join(message.split()) or type(exc).__name__  # one line
    if not _expected(exc):
        message = f"{type(exc).__name__}: {message}"
    own = f"{spec.name}: "
    if message.startswith(own):
        message = message[len(own):]
    match = _ARGUMENT.fullmatch(message)
    if match and match.group(1).split(".")[0] in arguments:
        return f"{spec.path}.{match.group(1)}: {match.group(2)}"
    # A file error: the message names a path the table gives (as written, or made absolute).
    for key, value in sorted(spec.args.items(), key=lambda kv: -len(str(kv[1]))):
        if isinstance(value, str) and value and any(_names(message, v) for v in {value, os.path.abspath(value)}):
            return f"{spec.path}.{key}: {message}"
    return f"{spec.path}: {message}"


def _names(message: str, value: str) -> bool:
    """Whether ``message`` holds ``value`` as a word of its own (start, quotes, spaces, colon)."""
    return re.search(rf"(?:^|[\s'\"(]){re.escape(value)}(?:$|[\s'\":,;)])", message) is not None


# --- the device and the random state --------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``train.device``: ``"auto"`` is CUDA when available, else the CPU; ``"cuda"`` without a
    CUDA device is a recipe error. Under torchrun, CUDA device ``LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError('train.device: "cuda" but no CUDA device is available here; use "auto" or "cpu"')
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """The same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _world_size() -> int:
    """The processes of this run: torchrun's ``WORLD_SIZE`` (set before the process group is)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


# --- the build --------------------------------------------------------------------------------------
def _build(recipe: Recipe, registry: Registry, log: Callable[[str], None] | None, train_data: bool, check_only: bool) -> BuiltRun:
    t = recipe.train
    device = resolve_device(t.device)
    world = _world_size()
    if t.batch_size % world:
        raise RecipeError(f"train.batch_size: {t.batch_size} does not divide over the {world} processes of this run; use a multiple of {world}")

    seed_everything(t.seed)
    model = _build_model(recipe, registry, log)
    _check_optimisation(recipe, model)
    for name, task in model.tasks.items() if train_data else ():
        if t.batch_size < task.min_batch_size:
            raise RecipeError(
                f"train.batch_size: {t.batch_size} is fewer videos than task {name!r} ({recipe.tasks[name].name}) "
                f"needs in a batch ({task.min_batch_size}); raise train.batch_size"
            )
    transform = construct(recipe.transform, registry)
    dataset = _build_train_data(recipe, model, transform, world, registry, check_only) if train_data else None
    hooks = [construct(spec, registry) for spec in recipe.hooks]
    _check_eval_sources(recipe, model)
    eval_datasets = _build_eval_data(recipe, registry, check_only, world)
    return BuiltRun(
        recipe=recipe, device=device, world_size=world, model=model, transform=transform,
        dataset=dataset, hooks=hooks, eval_datasets=eval_datasets,
    )  # fmt: skip


def build_dataset(recipe: Recipe, registry: Registry | None = None) -> VideoDataset:
    """The recipe's ``[data]`` dataset alone, constructed (its constructor checks its files and
    arguments), without what tasks attach to it; for commands that only read the data
    (``check-videos``, ``cache-teacher``). Raises :class:`RecipeError` naming the file and key."""
    try:
        return construct(recipe.data, registry or get_registry())
    except RecipeError as exc:
        raise RecipeError(f"{recipe.source}: {exc}") from exc.__cause__


def build_model(recipe: Recipe, registry: Registry | None = None, log: Callable[[str], None] | None = None) -> MultiTaskModel:
    """The recipe's model alone: encoder, tasks (set up), ``[model] init``, combiner, split. Its
    initial weights come from the current random state (:func:`build_run` seeds it with
    ``train.seed`` first). Raises :class:`RecipeError` naming the file and key."""
    try:
        return _build_model(recipe, registry or get_registry(), log)
    except RecipeError as exc:
        raise RecipeError(f"{recipe.source}: {exc}") from exc.__cause__


def _build_model(recipe: Recipe, registry: Registry, log: Callable[[str], None] | None) -> MultiTaskModel:
    encoder = construct(recipe.encoder, registry)
    tasks = {name: construct(spec, registry) for name, spec in recipe.tasks.items()}
    c = recipe.combiner
    try:
        if recipe.model.init:  # before the split: trunk, every branch and the tasks' copies start from it
            from hcframe.engine.pretrained import initialise_from_recipe

            initialise_from_recipe(encoder, recipe, log)
        combiner = TaskCombiner(tasks, c.weights, c.weighting, c.shared_grad_scale, c.pcgrad, c.grad_cosine_every)
        model = MultiTaskModel(encoder, tasks, recipe.model.split, combiner)
    except ValueError as exc:  # their messages start with the key path (model.split: ..., tasks.x: ...)
        message = " ".join(str(exc).split())
        if not message.startswith(("model.", "tasks", "combiner")):  # [model] init's file errors
            message = f"model.init: {message}"
        raise RecipeError(message) from None
    return model


def _check_optimisation(recipe: Recipe, model: MultiTaskModel) -> None:
    """What the trainer builds from ``[optim]`` and ``[schedule]``, tried on this model."""
    try:
        build_optimizer(model, recipe.optim, "cpu")
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"optim: {' '.join(str(exc).split())}") from None
    try:
        build_schedule(recipe.schedule, max(recipe.train.steps, 1))
    except (ValueError, TypeError, AssertionError) as exc:
        raise RecipeError(f"schedule: {' '.join(str(exc).split()) or type(exc).__name__}") from None


def _dataset(spec: ComponentSpec, registry: Registry, check_only: bool) -> VideoDataset | DatasetCheck:
    """The dataset of ``spec``; with ``check_only``, what its :meth:`~hcframe.VideoDataset.check`
    says instead, when it can tell without being built."""
    if check_only and not any(isinstance(v, ComponentSpec) for v in spec.args.values()):
        factory = registry.get(spec.kind, spec.name).factory
        try:
            checked = factory.check(**copy.deepcopy(dict(spec.args))) if hasattr(factory, "check") else None
        except Exception as exc:  # what the constructor would have refused
            arguments = set(spec.args) | set(factory_signature(factory)[0].parameters)
            raise RecipeError(constructor_error(spec, exc, arguments)) from (None if _expected(exc) else exc)
        if checked is not None:
            return checked
    return construct(spec, registry)


def _size(data: VideoDataset | DatasetCheck) -> int:
    return data.num_videos if isinstance(data, DatasetCheck) else len(data)


def _build_train_data(
    recipe: Recipe, model: MultiTaskModel, transform: BatchTransform, world: int, registry: Registry, check_only: bool
) -> VideoDataset | None:
    """The training dataset with what its tasks and the transform need from it, checked (``None``
    when ``check_only`` and the dataset checked itself without being built)."""
    t = recipe.train
    data = _dataset(recipe.data, registry, check_only)
    dataset = data if isinstance(data, VideoDataset) else None
    for name, task in model.tasks.items():
        if "parts" in task.needs and dataset is not None:
            try:
                dataset.target_store = task.target_store(dataset)
            except (ValueError, OSError) as exc:
                raise RecipeError(f"tasks.{name}: {' '.join(str(exc).split())}") from None
        if "label" in task.needs:
            _check_labels(f"tasks.{name}", task, data, recipe.data.name)
    per_rank = len(EpochSampler(_size(data), world, 0, seed=t.seed))
    if per_rank // (t.batch_size // world) == 0:
        over = f" shared by {world} processes" if world > 1 else ""
        raise RecipeError(
            f"train.batch_size: {t.batch_size} is more than dataset {recipe.data.name!r} holds ({_size(data)} videos{over}); "
            f"lower train.batch_size or add videos"
        )
    if dataset is None:
        return None
    for name, task in model.tasks.items():
        try:
            task.check_dataset(dataset)
        except ValueError as exc:
            raise RecipeError(f"tasks.{name}: {' '.join(str(exc).split())}") from None
    dataset.num_views = model.num_views
    if dataset.target_store is not None:
        transform.set_part_labels(dataset.target_store.label_names)
    transform.set_flip_allowed(bool(getattr(dataset, "flip_preserves_label", True)))
    return dataset


def _check_labels(where: str, task: Any, dataset: VideoDataset | DatasetCheck, dataset_name: str) -> None:
    classes = len(getattr(dataset, "class_names", ()) or ())
    if classes == 0:
        raise RecipeError(f"{where}: needs labels but dataset {dataset_name!r} has none; use a labelled dataset or remove the task")
    predicted = getattr(task, "num_classes", None)
    if isinstance(predicted, int) and predicted < classes:
        raise RecipeError(f"{where}.num_classes: {predicted}, but dataset {dataset_name!r} has {classes} classes; set num_classes = {classes}")


def _check_eval_sources(recipe: Recipe, model: MultiTaskModel) -> None:
    """``source = "targets"`` reads the part targets of the task named by ``branch``: it must train on some."""
    for spec in recipe.eval_specs:
        if getattr(spec.options, "source", "encoder") == "targets" and "parts" not in model.tasks[spec.branch].needs:
            raise RecipeError(f"{spec.where}.source: \"targets\" but task {spec.branch!r} trains on no part targets; "
                              "name a distillation task in branch, or use source = \"encoder\"")


def _build_eval_data(recipe: Recipe, registry: Registry, check_only: bool, world: int = 1) -> dict[EvalDatasetKey, VideoDataset]:
    built: dict[EvalDatasetKey, VideoDataset] = {}
    for spec in recipe.eval_specs:
        # Under torchrun fine-tuning trains under DDP with batch_size as the global batch.
        if spec.protocol == "finetune" and spec.batch_size % world:
            raise RecipeError(
                f"{spec.where}.batch_size: {spec.batch_size} (fine-tuning's global batch) does not divide over the "
                f"{world} processes of this run; use a multiple of {world}"
            )
        for transform in (spec.transform, spec.train_transform):
            if transform is not None:
                construct(transform, registry)
        for split, (train, test) in spec.datasets.items():
            for role, data in (("train", train), ("test", test)):
                dataset = _dataset(data, registry, check_only)
                if not getattr(dataset, "class_names", ()):
                    raise RecipeError(f"{data.path}: dataset {data.name!r} has no labels; evaluation needs labelled videos")
                if isinstance(dataset, VideoDataset):
                    built[(spec.index, split, role)] = dataset
    return built
