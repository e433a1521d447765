"""Encoder weights from files: hcframe checkpoints, encoder exports, other libraries' layouts.

Three kinds of file are told apart by their content:

- an hcframe **training checkpoint** (``checkpoints/step_N.pt``, whose ``"model"`` holds the
  multi-task model's state: ``trunk.stages.…``, ``branches.<task>.stages.…``, ``tasks.…``), or such
  a model state dict on its own. Its encoder is the shared trunk followed by one task's branch;
  the tasks' heads and the loss combiner are not part of it;
- an hcframe **encoder export** (``hcframe export-encoder``): a dict with ``"format":
  "hcframe-encoder"``, the encoder's registered name and arguments, and its ``"encoder"`` state
  dict in the encoder's own keys (``stages.<stage>.…``);
- a state dict in a **layout another library uses** that the recipe's encoder declares
  (:meth:`hcframe.Encoder.state_dict_layouts`; e.g. torchvision's video models, read by the
  backbones plugin). Keys the layout :meth:`~hcframe.StateDictLayout.drops` (the other model's
  classifier) are accepted and not loaded.

Loading is strict: a key the encoder has no weight for, a weight missing from the file, or a shape
that differs is refused with one :class:`PretrainedError` line naming the file and the key as the
file spells it. The one tolerance is torch's own: a file that has no BatchNorm
``num_batches_tracked`` counters at all (written before torch 0.4.1) gets them set to 0, and the
description says so. Files are read with ``torch.load(..., weights_only=True)``.

Initialising a model sets the encoder's weights before the trunk is split into branches, so the
trunk, every branch copy and anything a task copies in its ``setup`` (momentum encoders) start from
the same pretrained weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs
import torch
from torch import Tensor

from hcframe.components import Encoder, StateDictLayout
from hcframe.files import save_torch_atomic

__all__ = [
    "EXPORT_FORMAT",
    "EncoderWeights",
    "PretrainedError",
    "encoder_shapes",
    "encoder_weights_from",
    "export_encoder_file",
    "check_init",
    "export_encoder",
    "holds_model_state",
    "initialise_encoder",
    "initialise_from_recipe",
    "load_encoder_into_model",
    "read_encoder_weights",
    "read_weights_file",
]

#: The ``"format"`` marker of an encoder export; ``"format_version"`` is :data:`EXPORT_VERSION`.
EXPORT_FORMAT = "hcframe-encoder"
EXPORT_VERSION = 1
_MODEL_PREFIXES = ("trunk.", "branches.")
_COUNTER = ".num_batches_tracked"


class PretrainedError(ValueError):
    """A weights file that cannot initialise the encoder; the message is one line naming it."""


@attrs.frozen
class EncoderWeights:
    """An encoder's weights read from a file, in the encoder's own keys (``stages.…``).

    ``origin`` says what the file was; ``dropped`` lists the file's keys deliberately not loaded
    (another model's classifier); ``notes`` anything else a user should know.
    """

    state: dict[str, Tensor]
    origin: str
    dropped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{len(self.state)} tensors from {self.origin}"
        if self.dropped:
            shown = ", ".join(self.dropped[:4]) + (f" and {len(self.dropped) - 4} more" if len(self.dropped) > 4 else "")
            text += f"; dropped (no counterpart in the encoder): {shown}"
        return "; ".join([text, *self.notes])


# --- the layouts hcframe reads itself ------------------------------------------------------------
class _ExportLayout(StateDictLayout):
    """An encoder export: the encoder's own keys."""

    name = "hcframe"

    def to_encoder_key(self, key: str) -> str | None:
        return key if key.startswith("stages.") else None

    def from_encoder_key(self, key: str) -> str:
        return key


def _stage_of(key: str, prefix: str) -> str:
    return key[len(prefix):].split(".", 1)[0]


class _ModelLayout(StateDictLayout):
    """A multi-task model's state dict: the encoder is the trunk followed by the branch ``branch``.

    The tasks' modules, the combiner and the other branches are dropped (they are not the encoder).
    """

    name = "hcframe checkpoint"

    def __init__(self, keys: Sequence[str], branch: str, path: Path) -> None:
        self.trunk_stages = {_stage_of(k, "trunk.stages.") for k in keys if k.startswith("trunk.stages.")}
        branches: dict[str, set[str]] = {}
        for k in keys:
            if k.startswith("branches."):
                name, _, rest = k[len("branches."):].partition(".")
                branches.setdefault(name, set())
                if rest.startswith("stages."):
                    branches[name].add(_stage_of(rest, "stages."))
        with_stages = [b for b, stages in branches.items() if stages]
        if branch == "concat":
            raise PretrainedError(f"{path}: 'concat' is every branch side by side, not one encoder; name one branch ({', '.join(with_stages) or 'none has weights'})")
        if branch:
            if branch not in branches:
                raise PretrainedError(f"{path}: no branch {branch!r}; the checkpoint's branches are {', '.join(branches) or 'none'}")
        elif len(with_stages) > 1:
            raise PretrainedError(
                f"{path}: holds {len(with_stages)} branches ({', '.join(with_stages)}); name the one that forms the encoder "
                "(model.init_branch in a recipe, --branch for export-encoder)"
            )
        self.branch = branch or (with_stages[0] if with_stages else "")
        self.origin = f"hcframe checkpoint {path}, trunk" + (f" + branch {self.branch!r}" if self.branch and branches[self.branch] else "")

    def _own_branch_prefix(self) -> str:
        return f"branches.{self.branch}."

    def to_encoder_key(self, key: str) -> str | None:
        if key.startswith("trunk."):
            return key[len("trunk."):]
        if self.branch and key.startswith(self._own_branch_prefix()):
            return key[len(self._own_branch_prefix()):]
        return None

    def from_encoder_key(self, key: str) -> str:
        if _stage_of(key, "stages.") in self.trunk_stages or not self.branch:
            return "trunk." + key
        return self._own_branch_prefix() + key

    def drops(self, key: str) -> bool:
        return not key.startswith("trunk.") and not (self.branch and key.startswith(self._own_branch_prefix()))


# --- reading -------------------------------------------------------------------------------------
def read_weights_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, failing with one line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors carry multi-line advice: keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PretrainedError(f"{path}: cannot read weights ({type(exc).__name__}: {first})") from None


def holds_model_state(obj: Any) -> Mapping[str, Any] | None:
    """The multi-task model state dict inside ``obj`` (a training checkpoint's ``"model"``, or
    ``obj`` itself), or ``None`` when ``obj`` is not one."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if isinstance(obj, Mapping) and any(isinstance(k, str) and k.startswith(_MODEL_PREFIXES) for k in obj):
        return obj
    return None


def encoder_shapes(encoder: Encoder) -> dict[str, torch.Size]:
    """The encoder's own keys (``stages.…``: the stages are what the model splits and copies)
    and their shapes."""
    return {f"stages.{k}": v.shape for k, v in encoder.stages.state_dict().items()}


def _keys_text(keys: Sequence[str]) -> str:
    return repr(keys[0]) + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")


def _fit(
    file_state: Mapping[str, Any], layout: StateDictLayout, expected: Mapping[str, torch.Size], path: Path, what: str
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """``file_state`` in the encoder's keys, strictly: returns (state, dropped keys, notes)."""
    state: dict[str, Tensor] = {}
    dropped: list[str] = []
    unexpected: list[str] = []
    not_tensors: list[str] = []
    source_key: dict[str, str] = {}
    for key, value in file_state.items():
        if not isinstance(key, str):
            unexpected.append(repr(key))
            continue
        if layout.drops(key):
            dropped.append(key)
            continue
        own = layout.to_encoder_key(key)
        if own is None or own not in expected or own in state:
            unexpected.append(key)
        elif not isinstance(value, Tensor):
            not_tensors.append(key)
        else:
            state[own] = value
            source_key[own] = key
    missing = [k for k in expected if k not in state]
    notes: list[str] = []
    # torch's own rule (BatchNorm._load_from_state_dict): files from before torch 0.4.1 have no
    # num_batches_tracked counters. Only a file with none of them at all is such a file.
    if missing and all(k.endswith(_COUNTER) for k in missing) and not any(k.endswith(_COUNTER) for k in state):
        for k in missing:
            state[k] = torch.zeros(expected[k], dtype=torch.long)
        notes.append(f"the file has no BatchNorm num_batches_tracked counters (written before torch 0.4.1): {len(missing)} set to 0")
        missing = []
    reshaped = [k for k, v in state.items() if k in source_key and tuple(v.shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing key {_keys_text([layout.from_encoder_key(k) for k in missing])}")
    if unexpected:
        problems.append(f"unexpected key {_keys_text(unexpected)}")
    if not_tensors:
        problems.append(f"key {not_tensors[0]!r} holds a {type(file_state[not_tensors[0]]).__name__}, not a tensor")
    if reshaped:
        k = reshaped[0]
        more = f" (and {len(reshaped) - 1} more keys of another shape)" if len(reshaped) > 1 else ""
        problems.append(f"key {source_key[k]!r} has shape {tuple(state[k].shape)}, the encoder's is {tuple(expected[k])}{more}")
    if problems:
        raise PretrainedError(f"{path}: does not fit {what}: {'; '.join(problems)}")
    return state, dropped, notes


def encoder_weights_from(
    obj: Any,
    path: str | os.PathLike[str],
    expected: Mapping[str, torch.Size],
    layouts: Sequence[StateDictLayout],
    *,
    encoder_name: str,
    branch: str = "",
) -> EncoderWeights:
    """The encoder's weights from a loaded file ``obj`` (see the module docstring), strictly
    checked against ``expected`` (:func:`encoder_shapes`). ``branch`` picks the branch of a
    multi-branch hcframe checkpoint; ``encoder_name`` is the recipe's encoder (for messages and
    to refuse an export of another encoder)."""
    path = Path(path)
    if not isinstance(obj, Mapping):
        raise PretrainedError(f"{path}: holds a {type(obj).__name__}, not a checkpoint or a state dict")
    if obj.get("format") == EXPORT_FORMAT:
        if obj.get("format_version") != EXPORT_VERSION or not isinstance(obj.get("encoder"), Mapping):
            raise PretrainedError(f"{path}: an encoder export of format version {obj.get('format_version')!r}; this hcframe reads version {EXPORT_VERSION}")
        if obj.get("encoder_name") != encoder_name:
            raise PretrainedError(f"{path}: exports encoder {obj.get('encoder_name')!r}, the recipe's encoder is {encoder_name!r}")
        state, dropped, notes = _fit(obj["encoder"], _ExportLayout(), expected, path, f"encoder {encoder_name!r}")
        return EncoderWeights(state, f"hcframe encoder export {path}", tuple(dropped), tuple(notes))
    model_state = holds_model_state(obj)
    if model_state is not None:
        layout = _ModelLayout([k for k in model_state if isinstance(k, str)], branch, path)
        state, dropped, notes = _fit(model_state, layout, expected, path, f"encoder {encoder_name!r}")
        # The other tasks' heads and branches are not the encoder: leaving them out is the point.
        return EncoderWeights(state, layout.origin, (), tuple(notes))
    if branch:
        raise PretrainedError(f"{path}: a branch ({branch!r}) is chosen, but the file is not an hcframe checkpoint with branches")
    keys = [k for k in obj if isinstance(k, str)]
    for layout in layouts:
        if layout.recognizes(keys):
            state, dropped, notes = _fit(obj, layout, expected, path, f"the {layout.name} layout of encoder {encoder_name!r}")
            return EncoderWeights(state, f"{layout.name} state dict {path}", tuple(dropped), tuple(notes))
    known = ", ".join(layout.name for layout in layouts) or "none"
    first = repr(next(iter(obj), None))
    raise PretrainedError(
        f"{path}: not an hcframe checkpoint, an encoder export, or a state dict in a layout encoder {encoder_name!r} "
        f"reads ({known}); its first key is {first}"
    )


def read_encoder_weights(
    path: str | os.PathLike[str], encoder: Encoder, *, encoder_name: str, branch: str = ""
) -> EncoderWeights:
    """:func:`encoder_weights_from` the file at ``path``, for ``encoder`` as configured."""
    return encoder_weights_from(
        read_weights_file(path), path, encoder_shapes(encoder), list(encoder.state_dict_layouts()), encoder_name=encoder_name, branch=branch
    )


# --- using them ----------------------------------------------------------------------------------
def initialise_encoder(encoder: Encoder, weights: EncoderWeights) -> None:
    """Copy ``weights`` into ``encoder``'s stages (before a model splits it into branches)."""
    own = {k[len("stages."):]: v for k, v in weights.state.items()}
    encoder.stages.load_state_dict(own, strict=True)


def load_encoder_into_model(model: Any, weights: EncoderWeights) -> None:
    """Copy ``weights`` into a built :class:`~hcframe.engine.model.MultiTaskModel`: the trunk's
    stages and the same stages of every branch. The tasks' own modules are left as they are."""
    trunk_names = set(model.trunk.stages)
    trunk = {k[len("stages."):]: v for k, v in weights.state.items() if _stage_of(k, "stages.") in trunk_names}
    rest = {k[len("stages."):]: v for k, v in weights.state.items() if _stage_of(k, "stages.") not in trunk_names}
    model.trunk.stages.load_state_dict(trunk, strict=True)
    for branch in model.branches.values():
        branch.stages.load_state_dict(rest, strict=True)


def export_encoder_file(
    weights: EncoderWeights,
    out: str | os.PathLike[str],
    encoder: Encoder,
    *,
    encoder_name: str,
    encoder_args: Mapping[str, Any],
    layout_name: str = "hcframe",
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any] | dict[str, Tensor]:
    """Write ``weights`` to ``out`` (atomically) as an hcframe encoder export (``layout_name =
    "hcframe"``), or as a plain state dict in one of the encoder's layouts (e.g. ``"torchvision"``:
    no classifier). Returns what was written."""
    if layout_name == "hcframe":
        payload: Any = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "encoder_name": encoder_name,
            "encoder_args": dict(encoder_args),
            "encoder": dict(weights.state),
            **dict(provenance or {}),
        }
    else:
        layouts = {layout.name: layout for layout in encoder.state_dict_layouts()}
        if layout_name not in layouts:
            raise PretrainedError(f"--format {layout_name}: encoder {encoder_name!r} writes {', '.join(['hcframe', *layouts])}")
        layout = layouts[layout_name]
        payload = {layout.from_encoder_key(k): v for k, v in weights.state.items()}
    save_torch_atomic(payload, Path(out))  # FileWriteError: the path and the cause
    return payload



# --- recipes and commands ------------------------------------------------------------------------
def check_init(init: str, init_branch: str, encoder_spec: Any, registry: Any) -> EncoderWeights:
    """Build the recipe's encoder and read ``[model] init`` strictly, before any work: the check
    run when a recipe is validated. Raises :class:`PretrainedError`."""
    try:
        encoder = encoder_spec.build(registry)
    except ValueError as exc:
        raise PretrainedError(f"cannot build the encoder to check the file against: {exc}") from None
    return read_encoder_weights(init, encoder, encoder_name=encoder_spec.name, branch=init_branch)


def initialise_from_recipe(encoder: Encoder, recipe: Any, log: Callable[[str], None] | None = None) -> EncoderWeights:
    """Read ``[model] init`` strictly and copy it into ``encoder`` (before the model splits it);
    errors are :class:`PretrainedError` lines starting with ``model.init:``."""
    try:
        weights = read_encoder_weights(recipe.model.init, encoder, encoder_name=recipe.encoder.name, branch=recipe.model.init_branch)
    except PretrainedError as exc:
        raise PretrainedError(f"model.init: {exc}") from None
    initialise_encoder(encoder, weights)
    if log is not None:
        log(f"model.init: {weights.describe()}")
    return weights


def export_encoder(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    recipe: Any,
    *,
    branch: str = "",
    layout_name: str = "hcframe",
    registry: Any = None,
) -> EncoderWeights:
    """``hcframe export-encoder``: the encoder of ``checkpoint`` (trunk + one branch; any file
    :func:`read_encoder_weights` reads), checked against ``recipe``'s encoder, written to ``out``."""
    encoder = recipe.encoder.build(registry)
    layouts = {"hcframe", *(layout.name for layout in encoder.state_dict_layouts())}
    if layout_name not in layouts:
        raise PretrainedError(f"--format {layout_name}: encoder {recipe.encoder.name!r} is written as {' or '.join(sorted(layouts))}")
    obj = read_weights_file(checkpoint)
    weights = encoder_weights_from(
        obj, checkpoint, encoder_shapes(encoder), list(encoder.state_dict_layouts()), encoder_name=recipe.encoder.name, branch=branch
    )
    provenance: dict[str, Any] = {"source": str(checkpoint), "origin": weights.origin}
    if isinstance(obj, Mapping) and isinstance(obj.get("step"), int):
        provenance["step"] = obj["step"]
    encoder_args = {k: v for k, v in recipe.encoder.to_table().items() if k != "name"}
    export_encoder_file(
        weights, out, encoder, encoder_name=recipe.encoder.name, encoder_args=encoder_args, layout_name=layout_name, provenance=provenance
    )
    return weights
