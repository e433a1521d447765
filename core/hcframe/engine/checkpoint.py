"""Atomic checkpoints holding everything a resume needs, loaded with ``weights_only=True``.

A resume takes the newest checkpoint that loads and has the training state's structure
(:func:`find_resumable_checkpoint`); newer ones that do not (a truncated copy, a file that is not
a training checkpoint) are named in the log and renamed ``<name>.unreadable``, so that they
neither shadow the good ones nor count towards ``train.keep_checkpoints``."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

import numpy as np
import torch

from hcframe.files import save_torch_atomic

__all__ = [
    "CheckpointError",
    "StateDictMismatch",
    "capture_rng",
    "check_training_state",
    "compare_state_dicts",
    "find_resumable_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

_NAME = re.compile(r"step_(\d+)\.pt$")
UNREADABLE_SUFFIX = ".unreadable"

#: What a training checkpoint holds (:meth:`hcframe.engine.trainer.Trainer.state_dict`), with
#: the type each field must have for a resume to use it.
TRAINING_STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "optimizer": dict,
    "scaler": dict,
    "step": int,
    "sampler": dict,
    "rng": dict,
    "recipe_sha256": str,
}


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or is not what it should be (one-line message
    naming the file)."""


@attrs.frozen
class StateDictMismatch:
    """How a state dict differs from the one a module expects (empty lists: it fits)."""

    missing: list[str]  # expected keys it lacks
    unexpected: list[str]  # keys the module does not have
    reshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, given shape, expected shape)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.reshaped)

    def describe(self) -> str:
        """One line: how many of each kind, with the first of each."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} weights missing (e.g. {self.missing[0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (e.g. {self.unexpected[0]})")
        if self.reshaped:
            key, given, expected = self.reshaped[0]
            parts.append(f"{len(self.reshaped)} of another shape (e.g. {key}: {given} vs {expected})")
        return "; ".join(parts)


def compare_state_dicts(expected: Mapping[str, Any], given: Mapping[str, Any]) -> StateDictMismatch:
    """Keys and shapes of ``given`` against ``expected`` (e.g. ``module.state_dict()``), in
    ``expected``'s order (unexpected keys in ``given``'s)."""
    return StateDictMismatch(
        missing=[k for k in expected if k not in given],
        unexpected=[k for k in given if k not in expected],
        reshaped=[
            (k, tuple(given[k].shape), tuple(expected[k].shape))
            for k in expected
            if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(expected[k].shape)
        ],
    )


def capture_rng() -> dict[str, Any]:
    """RNG states of every generator the run draws from (torch CPU/CUDA, Python, NumPy)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # NumPy's state holds an ndarray, which weights_only refuses: keep it as a tensor.
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], directory: Path, step: int, keep: int = 2) -> Path:
    """Write ``step_XXXXXXXX.pt`` atomically (temporary file, fsync, rename); keep the newest ``keep``."""
    final = directory / f"step_{step:08d}.pt"
    save_torch_atomic(state, final, fsync=True)  # FileWriteError: the path and the cause
    for old in sorted(_checkpoints(directory))[:-keep]:
        old[1].unlink(missing_ok=True)
    return final


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.search(p.name)
        if m and not p.name.startswith("."):
            found.append((int(m.group(1)), p))
    return found


def latest_checkpoint(directory: Path) -> Path | None:
    found = _checkpoints(directory)
    return max(found)[1] if found else None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """Whatever ``path`` holds, read with ``weights_only=True``; :class:`CheckpointError` when it
    cannot be read (truncated, not a PyTorch file, or holding objects other than tensors and
    plain containers)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {first[:200]})") from exc


def check_training_state(state: Any, path: Path) -> dict[str, Any]:
    """``state`` when it has the structure of a training checkpoint, else :class:`CheckpointError`
    naming ``path`` and what is wrong (not a dict, fields missing, a field of another type)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (it holds a {type(state).__name__}, not a dict)")
    missing = [k for k in TRAINING_STATE_FIELDS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
    for key, kind in TRAINING_STATE_FIELDS.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"{path}: not a training checkpoint ({key} is a {type(state[key]).__name__})")
    sampler = state["sampler"]
    if not all(isinstance(sampler.get(k), int) for k in ("epoch", "batches_done")):
        raise CheckpointError(f"{path}: not a training checkpoint (sampler lacks epoch and batches_done)")
    return state


def find_resumable_checkpoint(
    directory: Path, log: Callable[[str], None] = lambda m: None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads and has a training state's structure,
    with its state; ``None`` when the folder has no checkpoint.

    Newer files that fail are skipped: each is named in one ``log`` line and renamed
    ``<name>.unreadable`` (kept for inspection, out of the way of later saves and of
    ``keep_checkpoints``). When none loads, :class:`CheckpointError` lists them all and nothing
    is renamed."""
    found = sorted(_checkpoints(directory), reverse=True)
    if not found:
        return None
    failures: list[tuple[Path, CheckpointError]] = []
    for _, path in found:
        try:
            state = check_training_state(load_checkpoint(path), path)
        except CheckpointError as exc:
            failures.append((path, exc))
            continue
        for bad, why in failures:
            aside = bad.with_name(bad.name + UNREADABLE_SUFFIX)
            try:
                bad.replace(aside)
                log(f"skipping {why}; renamed it {aside.name}")
            except OSError as exc:
                log(f"skipping {why}; could not rename it ({exc.strerror or exc})")
        return path, state
    listed = "; ".join(str(why) for _, why in failures)
    raise CheckpointError(
        f"no checkpoint in {directory} can be resumed from ({listed}); move them away to start the run again from step 0"
    )
