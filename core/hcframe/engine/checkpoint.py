"""Atomic checkpoints holding everything a resume needs, loaded with ``weights_only=True``."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Mapping

import attrs

import numpy as np
import torch

from hcframe.files import atomic_path

__all__ = ["StateDictMismatch", "capture_rng", "compare_state_dicts", "latest_checkpoint", "load_checkpoint", "restore_rng", "save_checkpoint"]

_NAME = re.compile(r"step_(\d+)\.pt$")


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
    with atomic_path(final, fsync=True) as tmp:
        torch.save(state, tmp)
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


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc}); delete it to resume from an older one") from exc
