"""Recipes: TOML files turned into checked attrs objects before any work starts.

A recipe has a few engine tables (``[train]``, ``[optim]``, ``[schedule]``, ``[combiner]``,
``[model]``) whose keys are fixed and validated by attrs, ``[[eval]]`` tables
(:mod:`hcframe.eval_tables`), ``[[hooks]]`` tables (hooks run around the training steps, see
:class:`hcframe.Hook`), ``[[loggers]]`` tables (where logged numbers go besides ``metrics.jsonl``,
see :class:`hcframe.Logger`), and *component tables*: any table with a
``name`` key builds the registered component of that name, passing the table's other keys to its
constructor. Those keys are checked against the constructor's signature (unknown keys, missing
required ones, value types from the annotations). A constructor parameter annotated with a
component base class (e.g. ``teacher: Teacher``) takes a nested component table.

Errors are :class:`RecipeError`: one line naming the file, the key path and what to do.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import attrs

from hcframe.data import VideoDataset
from hcframe.engine.combiner import TaskCombiner
from hcframe.eval_tables import EvalSpec, parse_eval_tables
from hcframe.registry import Registry, get_registry
from hcframe.tables import (
    ComponentSpec,
    RecipeError,
    build_component,
    build_engine_table,
    fraction,
    increasing_positive,
    non_negative,
    plain,
    positive,
    suggest,
)

__all__ = [
    "MAX_RECIPE_BYTES",
    "ComponentSpec",
    "Recipe",
    "RecipeError",
    "apply_override",
    "dump_toml",
    "load_recipe",
    "parse_recipe",
    "read_recipe_file",
]

#: Recipes are small text files; anything larger is not one (and is not read into memory).
MAX_RECIPE_BYTES = 1 << 20


# --- engine tables -------------------------------------------------------------------------------
@attrs.frozen
class TrainSpec:
    """``[train]``: how long and how the loop runs."""

    steps: int = attrs.field(default=100, validator=non_negative)  # 0: evaluate the random initialisation
    batch_size: int = attrs.field(default=8, validator=positive)  # global, over all ranks
    accumulate: int = attrs.field(default=1, validator=positive)
    num_workers: int = attrs.field(default=0, validator=non_negative)
    #: Threads of the training process on CPU; 0 = the cores left over by the data workers (at least
    #: one). Oversubscribed cores make PyTorch's thread pool spin: 10x the CPU time was measured.
    cpu_threads: int = attrs.field(default=0, validator=non_negative)
    prefetch_factor: int = attrs.field(default=2, validator=positive)
    clip_grad: float = attrs.field(default=0.0, validator=non_negative)  # 0 = off
    log_every: int = attrs.field(default=10, validator=positive)
    checkpoint_every: int = attrs.field(default=100, validator=positive)
    keep_checkpoints: int = attrs.field(default=2, validator=positive)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    seed: int = 0
    max_bad_fraction: float = attrs.field(default=0.05, validator=fraction)
    on_bad_video: Literal["skip", "raise"] = "skip"


def _betas(instance: Any, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    if not all(0.0 <= b < 1.0 for b in value):
        raise ValueError(f"{attribute.name}: each must be in [0, 1) (AdamW's running averages, e.g. [0.9, 0.999]), got {list(value)}")


def _scales(instance: Any, attribute: attrs.Attribute, value: dict[str, float]) -> None:
    for task, scale in value.items():
        if scale < 0:
            raise ValueError(f"{attribute.name}.{task}: must be >= 0 (a multiplier of optim.lr; 0 freezes the task's branch and head), got {scale}")


@attrs.frozen
class OptimSpec:
    """``[optim]``: SGD or AdamW; weight decay is not applied to biases and norm parameters."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = attrs.field(default=0.1, validator=positive)
    momentum: float = attrs.field(default=0.9, validator=fraction)
    nesterov: bool = False
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=_betas)
    weight_decay: float = attrs.field(default=1e-4, validator=non_negative)
    #: Learning-rate multiplier per task for the task's branch and head, e.g. ``{parsing = 2.0}``.
    lr_scale: dict[str, float] = attrs.field(factory=dict, validator=_scales)


@attrs.frozen
class ScheduleSpec:
    """``[schedule]``: linear warmup then cosine, step or constant (fvcore param schedulers)."""

    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    warmup_start_factor: float = attrs.field(default=0.01, validator=fraction)
    final_factor: float = attrs.field(default=0.0, validator=fraction)  # cosine end, x lr
    milestones: list[int] = attrs.field(factory=list, validator=increasing_positive)  # step schedule, in steps
    gamma: float = attrs.field(default=0.1, validator=fraction)


@attrs.frozen
class CombinerSpec:
    """``[combiner]``: how the tasks' gradients meet; all of it is
    :class:`hcframe.engine.combiner.TaskCombiner`'s (its docstring explains each key).
    ``weights`` maps task names to fixed weights (1 by default); ``weighting = "uncertainty"``
    learns them (Kendall et al. 2018); ``grad_cosine_every`` logs the cosine between tasks'
    gradients on the shared trunk; ``pcgrad`` projects conflicting gradients (Yu et al. 2020)."""

    weighting: Literal["fixed", "uncertainty"] = "fixed"
    weights: dict[str, float] = attrs.field(factory=dict)
    grad_cosine_every: int = attrs.field(default=0, validator=non_negative)
    pcgrad: bool = False
    #: Per task, the multiplier of its gradient into the shared trunk (default 1; 0 keeps the task
    #: from shaping the trunk: it learns only its branch and head).
    shared_grad_scale: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen
class ModelSpec:
    """``[model]``: ``split`` names the first encoder stage each task gets its own copy of;
    ``"none"`` shares every stage (one representation for all tasks). ``init`` initialises the
    encoder (trunk and every branch) from a file before training: an hcframe checkpoint, an
    encoder export, or a state dict in a layout the encoder reads (torchvision's for the backbones
    plugin); ``init_branch`` names the checkpoint branch that forms the encoder when it has several.
    See :mod:`hcframe.engine.pretrained`."""

    split: str = "none"
    init: str = ""
    init_branch: str = ""


@attrs.frozen
class Recipe:
    """A validated recipe. ``raw`` is the resolved TOML table (defaults filled in)."""

    source: str
    data: ComponentSpec
    transform: ComponentSpec
    encoder: ComponentSpec
    tasks: dict[str, ComponentSpec]
    model: ModelSpec
    train: TrainSpec
    optim: OptimSpec
    schedule: ScheduleSpec
    combiner: CombinerSpec
    evaluations: list[dict[str, Any]]  # the [[eval]] tables, resolved (as recipe.toml records them)
    raw: dict[str, Any]
    hooks: list[ComponentSpec] = attrs.field(factory=list)  # [[hooks]], in order
    loggers: list[ComponentSpec] = attrs.field(factory=list)  # [[loggers]], in order
    eval_specs: list[EvalSpec] = attrs.field(factory=list)  # the same [[eval]] tables, checked

    def to_toml(self) -> str:
        return dump_toml(self.raw)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_toml().encode()).hexdigest()

    def build_dataset(self, registry: Registry | None = None) -> VideoDataset:
        """The ``[data]`` dataset, built as it is (:func:`hcframe.config.build_dataset` also turns
        the constructor's errors into recipe errors naming the key)."""
        return self.data.build(registry)


ENGINE_TABLES: dict[str, type] = {
    "train": TrainSpec,
    "optim": OptimSpec,
    "schedule": ScheduleSpec,
    "combiner": CombinerSpec,
}
TOP_LEVEL_KEYS = ("data", "transform", "model", "tasks", "eval", "hooks", "loggers", *ENGINE_TABLES)


# --- overrides -----------------------------------------------------------------------------------
def _parse_override_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set data.name=ucf101


def _shown_path(parts: list[str | int]) -> str:
    """``["eval", 0, "lr"]`` as the messages write it: ``eval[0].lr``."""
    shown = ""
    for part in parts:
        shown += f"[{part}]" if isinstance(part, int) else (f".{part}" if shown else part)
    return shown


def _override_path(key: str) -> list[str | int]:
    """``eval.0.lr`` or ``eval[0].lr`` -> ``["eval", 0, "lr"]`` (numbers index arrays)."""
    parts = [p.strip() for p in key.replace("[", ".").replace("]", "").split(".")]
    return [int(p) if p.isdigit() else p for p in parts]


def apply_override(table: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value in TOML syntax, or a bare string) to a raw recipe table.

    A number indexes an array: ``eval.0.epochs=5`` (or ``eval[0].epochs=5``) sets ``epochs`` in
    the first ``[[eval]]`` table, ``model.encoder.blocks.0=2`` the first item of a list."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {assignment}: expected KEY.PATH=VALUE")
    parts = _override_path(key.strip())
    if any(p == "" for p in parts):
        raise RecipeError(f"--set {assignment}: empty key in {key.strip()!r}")
    value = _parse_override_value(text.strip())
    node: Any = table
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = _shown_path(parts[: i + 1])
        if isinstance(node, list):
            parent = _shown_path(parts[:i])
            if not isinstance(part, int):
                raise RecipeError(f"--set {assignment}: {parent} is an array; index it with a number, e.g. {parent}.0.{part}")
            if part >= len(node):
                count = f"{len(node)} entr{'y' if len(node) == 1 else 'ies'}"
                raise RecipeError(f"--set {assignment}: {parent} has {count}, so there is no {here} (indices count from 0)")
        elif isinstance(part, int):
            if str(part) in node:  # a table key that is a number, e.g. a task named "1"
                parts[i] = part = str(part)
            else:
                raise RecipeError(f"--set {assignment}: {_shown_path(parts[:i]) or 'the recipe'} is not an array; {here} does not exist")
        if isinstance(node, dict) and not last:
            if part not in node and isinstance(parts[i + 1], int):
                raise RecipeError(f"--set {assignment}: the recipe has no {here} array to index")
            node.setdefault(part, {})
        if last:
            node[part] = value
            return
        child = node[part]
        if not isinstance(child, (dict, list)):
            raise RecipeError(f"--set {assignment}: {here} is a value, not a table")
        node = child


# --- loading -------------------------------------------------------------------------------------
def parse_recipe(raw: dict[str, Any], source: str = "<recipe>", registry: Registry | None = None) -> Recipe:
    """Validate a raw recipe table; errors are :class:`RecipeError` prefixed with ``source``."""
    try:
        return _parse(copy.deepcopy(raw), registry or get_registry(), source)
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None


def _refuse_non_finite(node: Any, where: str) -> None:
    """TOML allows ``nan`` and ``inf``; no recipe value means them (a learning rate of ``inf``
    trains one step into non-finite weights, a ``clip_grad`` of ``nan`` turns clipping off)."""
    if isinstance(node, float) and not math.isfinite(node):
        raise RecipeError(f"{where}: {node} is not a finite number; give a finite value")
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_non_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_non_finite(value, f"{where}[{i}]")


def _parse(raw: dict[str, Any], registry: Registry, source: str) -> Recipe:
    _refuse_non_finite(raw, "")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise RecipeError(f"{key}: unknown top-level key; {suggest(key, list(TOP_LEVEL_KEYS))}")
    for required in ("data", "transform", "model", "tasks"):
        if required not in raw:
            raise RecipeError(f"{required}: missing table [{required}]")
    data = build_component("dataset", raw["data"], "data", registry)
    transform = build_component("transform", raw["transform"], "transform", registry)
    model_table = raw["model"]
    if not isinstance(model_table, dict) or "encoder" not in model_table:
        raise RecipeError("model.encoder: missing table [model.encoder] with the encoder's name")
    encoder = build_component("encoder", model_table["encoder"], "model.encoder", registry)
    model = build_engine_table(ModelSpec, {k: v for k, v in model_table.items() if k != "encoder"}, "model")
    if model.init_branch and not model.init:
        raise RecipeError("model.init_branch: names a branch of the model.init checkpoint; set model.init too")
    if model.init:  # read strictly now, so a file that does not fit is refused before any work
        from hcframe.engine.pretrained import PretrainedError, check_init  # lazy: it imports the engine

        try:
            check_init(model.init, model.init_branch, encoder, registry)
        except PretrainedError as exc:
            raise RecipeError(f"model.init: {exc}") from None
    tasks_table = raw["tasks"]
    if not isinstance(tasks_table, dict) or not tasks_table:
        raise RecipeError("tasks: define at least one [tasks.<your name>] table with the task's name")
    tasks = {}
    for task_name, table in tasks_table.items():
        tasks[task_name] = build_component("task", table, f"tasks.{task_name}", registry)
    engine = {key: build_engine_table(cls, raw.get(key, {}), key) for key, cls in ENGINE_TABLES.items()}
    for task_name in engine["optim"].lr_scale:
        if task_name not in tasks:
            raise RecipeError(f"optim.lr_scale.{task_name}: no such task; {suggest(task_name, list(tasks))}")
    try:  # the combiner owns the rules of its table (task names, PCGrad with fixed weights)
        TaskCombiner(list(tasks), **attrs.asdict(engine["combiner"]))
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    eval_specs, evaluations = parse_eval_tables(raw.get("eval", []), registry, list(tasks))
    hooks = _parse_hooks(raw.get("hooks", []), registry)
    loggers = _parse_loggers(raw.get("loggers", []), registry)

    resolved: dict[str, Any] = {
        "data": data.to_table(),
        "transform": transform.to_table(),
        "model": {**attrs.asdict(model), "encoder": encoder.to_table()},
        "tasks": {n: t.to_table() for n, t in tasks.items()},
    }
    for key, spec in engine.items():
        resolved[key] = plain(attrs.asdict(spec))
    if evaluations:
        resolved["eval"] = evaluations
    if hooks:
        resolved["hooks"] = [h.to_table() for h in hooks]
    if loggers:
        resolved["loggers"] = [lg.to_table() for lg in loggers]
    return Recipe(
        source=source,
        data=data,
        transform=transform,
        encoder=encoder,
        tasks=tasks,
        model=model,
        evaluations=evaluations,
        raw=resolved,
        hooks=hooks,
        loggers=loggers,
        eval_specs=eval_specs,
        **engine,
    )


def _parse_hooks(tables: Any, registry: Registry) -> list[ComponentSpec]:
    """``[[hooks]]``: component tables of kind ``hook``, run after the trainer's own hooks."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise RecipeError("hooks: expected [[hooks]] tables, each with name = \"<hook>\" and the hook's arguments")
    return [build_component("hook", table, f"hooks[{i}]", registry) for i, table in enumerate(tables)]


def _parse_loggers(tables: Any, registry: Registry) -> list[ComponentSpec]:
    """``[[loggers]]``: component tables of kind ``logger``. A logger whose optional dependency is
    not installed is refused here, before any work, with the extra that installs it."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise RecipeError("loggers: expected [[loggers]] tables, each with name = \"<logger>\" and the logger's arguments")
    specs = [build_component("logger", table, f"loggers[{i}]", registry) for i, table in enumerate(tables)]
    for i, spec in enumerate(specs):
        check = getattr(registry.get("logger", spec.name).factory, "missing_dependency", None)
        missing = check() if check is not None else None
        if missing:
            raise RecipeError(f"loggers[{i}].name: logger {spec.name!r} {missing}")
    return specs


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The TOML table of a recipe file. Refused with one line (:class:`RecipeError`): a path that
    is not a regular file (a folder, a FIFO, a device such as ``/dev/zero``: never read, so
    nothing hangs), a file over :data:`MAX_RECIPE_BYTES`, text that is not UTF-8, TOML syntax
    errors (with their line and column)."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a folder; give the recipe's .toml file") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise RecipeError(f"{path}: is a folder; give the recipe's .toml file")
        raise RecipeError(f"{path}: not a regular file (a pipe, device or socket); give the recipe's .toml file")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(MAX_RECIPE_BYTES + 1)
        except OSError as exc:
            raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES // 1024} KiB, too large to be a recipe; give the recipe's .toml file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecipeError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); save the recipe as UTF-8"
        ) from None
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))  # a byte-order mark some editors write
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), registry: Registry | None = None) -> Recipe:
    """Read, override and validate a recipe file. Raises :class:`RecipeError` (one line).

    This checks keys, types and values; :func:`hcframe.config.build_run` also constructs every
    component and checks the data (what ``hcframe run`` does before any work)."""
    path = Path(path)
    raw = read_recipe_file(path)
    for assignment in overrides:
        try:
            apply_override(raw, assignment)
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}") from None
    return parse_recipe(raw, source=str(path), registry=registry)


# --- writing TOML (for the resolved recipe saved with every run) --------------------------------
def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_scalar(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def dump_toml(table: Mapping[str, Any]) -> str:
    """Write a table of tables, arrays of tables and plain values as TOML (round-trips with tomllib)."""
    lines: list[str] = []

    def emit(node: Mapping[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in node.items() if not _is_table(v) and not _is_table_array(v)}
        tables = {k: v for k, v in node.items() if _is_table(v)}
        arrays = {k: v for k, v in node.items() if _is_table_array(v)}
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_scalar(v)}")
        for k, v in tables.items():
            name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
            lines.append("")
            lines.append(f"[{name}]")
            emit(v, name)
        for k, v in arrays.items():
            name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
            for item in v:
                lines.append("")
                lines.append(f"[[{name}]]")
                emit(item, name)

    emit(table, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
