"""Recipes: TOML files turned into checked attrs objects before any work starts.

A recipe has a few engine tables (``[train]``, ``[optim]``, ``[schedule]``, ``[combiner]``,
``[model]``) whose keys are fixed and validated by attrs, and *component tables*: any table with a
``name`` key builds the registered component of that name, passing the table's other keys to its
constructor. Those keys are checked against the constructor's signature (unknown keys, missing
required ones, value types from the annotations). A constructor parameter annotated with a
component base class (e.g. ``teacher: Teacher``) takes a nested component table.

Errors are :class:`RecipeError`: one line naming the file, the key path and what to do.
"""

from __future__ import annotations

import collections.abc
import copy
import difflib
import hashlib
import inspect
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import attrs

from hcframe.components import BatchTransform, Encoder, Head, PretextTask, Teacher
from hcframe.data import VideoDataset
from hcframe.registry import Registry, UnknownComponentError, get_registry

__all__ = [
    "ComponentSpec",
    "Recipe",
    "RecipeError",
    "apply_override",
    "dump_toml",
    "load_recipe",
    "parse_recipe",
]

#: Annotations that mean "a nested component table of this kind".
KIND_OF_BASE: dict[type, str] = {
    VideoDataset: "dataset",
    BatchTransform: "transform",
    Encoder: "encoder",
    Head: "head",
    PretextTask: "task",
    Teacher: "teacher",
}


class RecipeError(ValueError):
    """A recipe that cannot run; the message is one line: ``file: key.path: problem``."""


# --- engine tables -------------------------------------------------------------------------------
def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be > 0, got {value}")


def _non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be >= 0, got {value}")


def _fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name}: must be between 0 and 1, got {value}")


@attrs.frozen
class TrainSpec:
    """``[train]``: how long and how the loop runs."""

    steps: int = attrs.field(default=100, validator=_non_negative)  # 0: evaluate the random initialisation
    batch_size: int = attrs.field(default=8, validator=_positive)  # global, over all ranks
    accumulate: int = attrs.field(default=1, validator=_positive)
    num_workers: int = attrs.field(default=0, validator=_non_negative)
    #: Threads of the training process on CPU; 0 = the cores left over by the data workers (at least
    #: one). Oversubscribed cores make PyTorch's thread pool spin: 10x the CPU time was measured.
    cpu_threads: int = attrs.field(default=0, validator=_non_negative)
    prefetch_factor: int = attrs.field(default=2, validator=_positive)
    clip_grad: float = attrs.field(default=0.0, validator=_non_negative)  # 0 = off
    log_every: int = attrs.field(default=10, validator=_positive)
    checkpoint_every: int = attrs.field(default=100, validator=_positive)
    keep_checkpoints: int = attrs.field(default=2, validator=_positive)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    seed: int = 0
    max_bad_fraction: float = attrs.field(default=0.05, validator=_fraction)
    on_bad_video: Literal["skip", "raise"] = "skip"


@attrs.frozen
class OptimSpec:
    """``[optim]``: SGD or AdamW; weight decay is not applied to biases and norm parameters."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = attrs.field(default=0.1, validator=_positive)
    momentum: float = attrs.field(default=0.9, validator=_fraction)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = attrs.field(default=1e-4, validator=_non_negative)
    #: Learning-rate multiplier per task for the task's branch and head, e.g. ``{parsing = 2.0}``.
    lr_scale: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen
class ScheduleSpec:
    """``[schedule]``: linear warmup then cosine, step or constant (fvcore param schedulers)."""

    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = attrs.field(default=0, validator=_non_negative)
    warmup_start_factor: float = attrs.field(default=0.01, validator=_fraction)
    final_factor: float = attrs.field(default=0.0, validator=_fraction)  # cosine end, x lr
    milestones: list[int] = attrs.field(factory=list)  # step schedule, in steps
    gamma: float = attrs.field(default=0.1, validator=_fraction)


@attrs.frozen
class CombinerSpec:
    """``[combiner]``: how task losses meet. ``weights`` maps task names to fixed weights (1 by
    default); ``weighting = "uncertainty"`` learns them (Kendall et al. 2018); ``grad_cosine_every``
    logs the cosine between tasks' gradients on the shared trunk; ``pcgrad`` projects conflicting
    gradients (Yu et al. 2020)."""

    weighting: Literal["fixed", "uncertainty"] = "fixed"
    weights: dict[str, float] = attrs.field(factory=dict)
    grad_cosine_every: int = attrs.field(default=0, validator=_non_negative)
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


# --- component specs -----------------------------------------------------------------------------
@attrs.frozen
class ComponentSpec:
    """A checked component table: build it with :meth:`build`."""

    kind: str
    name: str
    args: Mapping[str, Any]  # nested components are ComponentSpecs
    path: str  # key path in the recipe, for messages

    def build(self, registry: Registry | None = None, **extra: Any) -> Any:
        registry = registry or get_registry()
        kwargs = {k: v.build(registry) if isinstance(v, ComponentSpec) else copy.deepcopy(v) for k, v in self.args.items()}
        kwargs.update(extra)
        return registry.create(self.kind, self.name, **kwargs)

    def to_table(self) -> dict[str, Any]:
        table: dict[str, Any] = {"name": self.name}
        for k, v in self.args.items():
            table[k] = v.to_table() if isinstance(v, ComponentSpec) else _plain(v)
        return table


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
    evaluations: list[dict[str, Any]]
    raw: dict[str, Any]

    def to_toml(self) -> str:
        return dump_toml(self.raw)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_toml().encode()).hexdigest()

    def build_dataset(self, registry: Registry | None = None) -> VideoDataset:
        return self.data.build(registry)


ENGINE_TABLES: dict[str, type] = {
    "train": TrainSpec,
    "optim": OptimSpec,
    "schedule": ScheduleSpec,
    "combiner": CombinerSpec,
}
TOP_LEVEL_KEYS = ("data", "transform", "model", "tasks", "eval", *ENGINE_TABLES)


# --- value checking ------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` (from TOML) against a type annotation; return it, converted where lossless
    (int -> float, list -> tuple). Unknown annotation kinds are accepted as they are."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise RecipeError(f"{where}: {value!r} is not allowed; use one of {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, where)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(f"{where}: expected {_type_name(annotation)}, got {type(value).__name__} {value!r}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise RecipeError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
            return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        vtype = args[1] if len(args) == 2 else Any
        return {k: _check_value(v, vtype, f"{where}.{k}") for k, v in value.items()}
    return value


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"allowed keys: {', '.join(options)}" if options else "this table takes no keys"


def _build_engine_table(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in attrs.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            raise RecipeError(f"{where}.{key}: unknown key; {_suggest(key, names)}")
        kwargs[key] = _check_value(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # attrs validators name the field: "steps: must be > 0, got -1"
        raise RecipeError(f"{where}.{exc}") from None


def _factory_signature(factory: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any]]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    signature = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    return signature, hints


def _component_base(annotation: Any) -> str | None:
    candidates = [annotation, *typing.get_args(annotation)]
    for c in candidates:
        if isinstance(c, type):
            for base, kind in KIND_OF_BASE.items():
                if issubclass(c, base):
                    return kind
    return None


def _build_component(kind: str, table: Any, where: str, registry: Registry) -> ComponentSpec:
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: expected a table with name = \"<{kind}>\"")
    if "name" not in table:
        raise RecipeError(f"{where}: missing key 'name'; set name to one of the installed {kind}s: {', '.join(registry.names(kind))}")
    name = table["name"]
    if not isinstance(name, str):
        raise RecipeError(f"{where}.name: expected a string, got {name!r}")
    try:
        record = registry.get(kind, name)
    except UnknownComponentError as exc:
        raise RecipeError(f"{where}.name: {exc}") from None
    signature, hints = _factory_signature(record.factory)
    params = {n: p for n, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    args: dict[str, Any] = {}
    for key, value in table.items():
        if key == "name":
            continue
        path = f"{where}.{key}"
        if key not in params:
            if takes_any:
                args[key] = value
                continue
            raise RecipeError(f"{path}: unknown key for {kind} {name!r}; {_suggest(key, list(params))}")
        annotation = hints.get(key, params[key].annotation)
        nested_kind = _component_base(annotation)
        if nested_kind is not None and isinstance(value, dict):
            args[key] = _build_component(nested_kind, value, path, registry)
        else:
            args[key] = _check_value(value, annotation, path)
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in args]
    if missing:
        raise RecipeError(f"{where}: {kind} {name!r} needs {', '.join(repr(m) for m in missing)}; add it to the table")
    # Fill in the constructor's defaults so the saved recipe says everything the run used.
    for n, p in params.items():
        if n not in args and p.default is not inspect.Parameter.empty and _is_toml_value(p.default):
            args[n] = list(p.default) if isinstance(p.default, tuple) else p.default
    return ComponentSpec(kind=kind, name=name, args=args, path=where)


def _is_toml_value(value: Any) -> bool:
    if isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_toml_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_toml_value(v) for k, v in value.items())
    return False


# --- overrides -----------------------------------------------------------------------------------
def _parse_override_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set data.name=ucf101


def apply_override(table: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value in TOML syntax, or a bare string) to a raw recipe table."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {assignment}: expected KEY.PATH=VALUE")
    parts = [p.strip() for p in key.strip().split(".")]
    node = table
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {assignment}: {'.'.join(parts[: i + 1])} is a value, not a table")
        node = child
    node[parts[-1]] = _parse_override_value(text.strip())


# --- loading -------------------------------------------------------------------------------------
def parse_recipe(raw: dict[str, Any], source: str = "<recipe>", registry: Registry | None = None) -> Recipe:
    """Validate a raw recipe table; errors are :class:`RecipeError` prefixed with ``source``."""
    try:
        return _parse(copy.deepcopy(raw), registry or get_registry(), source)
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None


def _parse(raw: dict[str, Any], registry: Registry, source: str) -> Recipe:
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise RecipeError(f"{key}: unknown top-level key; {_suggest(key, list(TOP_LEVEL_KEYS))}")
    for required in ("data", "transform", "model", "tasks"):
        if required not in raw:
            raise RecipeError(f"{required}: missing table [{required}]")
    data = _build_component("dataset", raw["data"], "data", registry)
    transform = _build_component("transform", raw["transform"], "transform", registry)
    model_table = raw["model"]
    if not isinstance(model_table, dict) or "encoder" not in model_table:
        raise RecipeError("model.encoder: missing table [model.encoder] with the encoder's name")
    encoder = _build_component("encoder", model_table["encoder"], "model.encoder", registry)
    model = _build_engine_table(ModelSpec, {k: v for k, v in model_table.items() if k != "encoder"}, "model")
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
        tasks[task_name] = _build_component("task", table, f"tasks.{task_name}", registry)
    engine = {key: _build_engine_table(cls, raw.get(key, {}), key) for key, cls in ENGINE_TABLES.items()}
    combiner: CombinerSpec = engine["combiner"]
    for table_name, mapping in (
        ("combiner.weights", combiner.weights),
        ("combiner.shared_grad_scale", combiner.shared_grad_scale),
        ("optim.lr_scale", engine["optim"].lr_scale),
    ):
        for task_name in mapping:
            if task_name not in tasks:
                raise RecipeError(f"{table_name}.{task_name}: no such task; {_suggest(task_name, list(tasks))}")
    if combiner.pcgrad and combiner.weighting != "fixed":
        raise RecipeError("combiner.pcgrad: PCGrad projects the gradients of fixed-weight losses; set weighting = \"fixed\"")
    if model.split != "none":
        # The stage names are only known once the encoder exists; checked again when it is built.
        pass
    from hcframe.evaluation.spec import parse_eval_tables  # lazy: the evaluation package imports this module

    evaluations = parse_eval_tables(raw.get("eval", []), registry, list(tasks))

    resolved: dict[str, Any] = {
        "data": data.to_table(),
        "transform": transform.to_table(),
        "model": {**attrs.asdict(model), "encoder": encoder.to_table()},
        "tasks": {n: t.to_table() for n, t in tasks.items()},
    }
    for key, spec in engine.items():
        resolved[key] = _plain(attrs.asdict(spec))
    if evaluations:
        resolved["eval"] = evaluations
    return Recipe(
        source=source,
        data=data,
        transform=transform,
        encoder=encoder,
        tasks=tasks,
        model=model,
        evaluations=evaluations,
        raw=resolved,
        **engine,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), registry: Registry | None = None) -> Recipe:
    """Read, override and validate a recipe file. Raises :class:`RecipeError` (one line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
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
