"""Checked recipe tables: the building blocks every table parser shares.

A *component table* (any table with a ``name`` key) becomes a :class:`ComponentSpec` after its keys
are checked against the registered factory's signature (unknown keys, missing required ones, value
types from the annotations; a parameter annotated with a component base, e.g. ``teacher:
Teacher``, takes a nested component table). An *engine table* (``[train]``, an ``[[eval]]`` table's
options, ...) is an attrs class whose fields are checked by :func:`build_engine_table`. Both the
recipe (:mod:`hcframe.recipe`) and the ``[[eval]]`` tables (:mod:`hcframe.eval_tables`) are
parsed with these, so they sit below both.

Errors are :class:`RecipeError`: one line naming the key path and what to do.
"""

from __future__ import annotations

import collections.abc
import copy
import difflib
import inspect
import math
import types
import typing
from typing import Any, Callable, Literal, Mapping

import attrs

from hcframe.components import BatchTransform, Encoder, Head, Hook, Logger, PretextTask, Teacher
from hcframe.data import VideoDataset
from hcframe.registry import Registry, UnknownComponentError, get_registry

__all__ = [
    "KIND_OF_BASE",
    "ComponentSpec",
    "RecipeError",
    "build_component",
    "build_engine_table",
    "check_value",
    "closest",
    "factory_signature",
    "fraction",
    "increasing_positive",
    "non_negative",
    "plain",
    "positive",
    "suggest",
]

#: Annotations that mean "a nested component table of this kind".
KIND_OF_BASE: dict[type, str] = {
    VideoDataset: "dataset",
    BatchTransform: "transform",
    Encoder: "encoder",
    Head: "head",
    PretextTask: "task",
    Teacher: "teacher",
    Hook: "hook",
    Logger: "logger",
}


class RecipeError(ValueError):
    """A recipe that cannot run; the message is one line: ``file: key.path: problem``."""


# --- attrs validators of engine-table fields -------------------------------------------------
def positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be > 0, got {value}")


def non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be >= 0, got {value}")


def fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name}: must be between 0 and 1, got {value}")


def increasing_positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Milestones: increasing numbers > 0 (steps, or epochs)."""
    if any(m <= 0 for m in value) or any(b <= a for a, b in zip(value, value[1:])):
        raise ValueError(f"{attribute.name}: expected increasing numbers > 0, got {list(value)}")


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
            table[k] = v.to_table() if isinstance(v, ComponentSpec) else plain(v)
        return table


# --- value checking ------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def check_value(value: Any, annotation: Any, where: str) -> Any:
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
                return check_value(value, option, where)
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
            return tuple(check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        vtype = args[1] if len(args) == 2 else Any
        return {k: check_value(v, vtype, f"{where}.{k}") for k, v in value.items()}
    return value


def _edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours turning ``a`` into ``b``
    (optimal string alignment distance)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[-1]


def closest(key: str, options: list[str]) -> str | None:
    """The option ``key`` was most likely meant to be, or ``None``.

    Ranked by edit distance first (``lrate`` is 3 edits from ``lr`` and 4 from ``lr_scale``;
    difflib's similarity ratio alone prefers the longer ``lr_scale``), then by difflib's ratio. An
    option qualifies within ceil(len(key) / 2) edits, or with a ratio of at least 0.6 (difflib's
    default cut-off, for keys missing a long part: ``weight`` -> ``weight_decay``)."""
    folded = key.lower()
    best: tuple[int, float, str] | None = None
    for option in options:
        distance = _edit_distance(folded, option.lower())
        ratio = difflib.SequenceMatcher(None, folded, option.lower()).ratio()
        if distance > max(1, (len(key) + 1) // 2) and ratio < 0.6:
            continue
        rank = (distance, -ratio, option)
        if best is None or rank < best:
            best = rank
    return best[2] if best is not None else None


def suggest(key: str, options: list[str]) -> str:
    match = closest(key, options)
    if match is not None:
        return f"did you mean {match!r}?"
    return f"allowed keys: {', '.join(options)}" if options else "this table takes no keys"


def build_engine_table(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in attrs.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            raise RecipeError(f"{where}.{key}: unknown key; {suggest(key, names)}")
        kwargs[key] = check_value(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # attrs validators name the field: "steps: must be > 0, got -1"
        raise RecipeError(f"{where}.{exc}") from None


def factory_signature(factory: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any]]:
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


def build_component(kind: str, table: Any, where: str, registry: Registry) -> ComponentSpec:
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
    signature, hints = factory_signature(record.factory)
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
            raise RecipeError(f"{path}: unknown key for {kind} {name!r}; {suggest(key, list(params))}")
        annotation = hints.get(key, params[key].annotation)
        nested_kind = _component_base(annotation)
        if nested_kind is not None and isinstance(value, dict):
            args[key] = build_component(nested_kind, value, path, registry)
        else:
            args[key] = check_value(value, annotation, path)
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


def plain(value: Any) -> Any:
    """``value`` with tuples turned into lists, recursively (as TOML and JSON write them)."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
