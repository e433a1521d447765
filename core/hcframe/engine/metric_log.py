"""The numbers of the training steps since the last log line (a small cousin of detectron2's
``EventStorage``): the trainer puts them in, the metric writer takes them out.

Values may be tensors on the training device. They stay there, summed on the device, until a log
line is written: a step never waits for the device to read a loss back (on a GPU, such a wait
stalls the host every step). :meth:`MetricLog.flush` and :meth:`MetricLog.mean` read them.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["MetricLog", "stack_values"]


def _number(value: Any) -> float | int:
    """A logged value as a Python number (reads a tensor back from its device; ints stay ints)."""
    if isinstance(value, Tensor):
        return float(value.detach().float().mean())
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


class MetricLog:
    """Numbers on their way to ``metrics.jsonl``.

    - :meth:`add`: a value per micro-batch (loss terms, accuracies, loss weights); a log line holds
      the mean over the micro-batches since the previous log line. :meth:`add_many` adds several
      keys' device values at once (one tensor, one addition on the device).
    - :meth:`put`: a value of the current step only (gradient cosines); it is written at that step,
      in the log line or, between log lines, in a line of its own. The trainer clears these before
      every step.
    - :meth:`set`: a running number (a count) that every log line from now on holds, at its latest
      value.
    - :meth:`count_clips`: clips seen, for the throughput (``clips_per_s``).

    :meth:`flush` turns the window into a record; ``latest`` / ``latest_step`` keep the last one.
    """

    def __init__(self) -> None:
        # Window sums: host floats per key, and device vectors per tuple of keys (add_many).
        self._host: dict[str, list[float]] = {}  # key -> [sum, count]
        self._device: dict[tuple[str, ...], list[Any]] = {}  # keys -> [sum vector, count]
        self.point: dict[str, Any] = {}
        self.running: dict[str, Any] = {}
        self.loss_keys: set[str] = set()
        self.latest: dict[str, Any] = {}
        self.latest_step: int | None = None
        self._clips = 0
        self._since = time.perf_counter()

    @property
    def window(self) -> dict[str, int]:
        """Keys with values since the last log line, and how many (no device read)."""
        counts = {k: int(c) for k, (_, c) in self._host.items()}
        for keys, (_, c) in self._device.items():
            counts.update({k: counts.get(k, 0) + c for k in keys})
        return counts

    def add(self, key: str, value: float | Tensor, *, loss: bool = False) -> None:
        """A micro-batch's value of ``key``; ``loss`` marks loss terms (for undeclared keys). A
        tensor (its mean) stays on its device until the next log line."""
        if isinstance(value, Tensor):
            self.add_many((key,), value.detach().float().mean().reshape(1), loss_keys=(key,) if loss else ())
            return
        entry = self._host.setdefault(key, [0.0, 0])
        entry[0] += float(value)
        entry[1] += 1
        if loss:
            self.loss_keys.add(key)

    def add_many(self, keys: Sequence[str], values: Tensor, *, loss_keys: Sequence[str] = ()) -> None:
        """One micro-batch's values of ``keys``: ``values[i]`` is the value of ``keys[i]``."""
        keys = tuple(keys)
        values = values.detach().float()
        entry = self._device.get(keys)
        if entry is None:
            self._device[keys] = [values.clone(), 1]
        else:
            entry[0].add_(values)
            entry[1] += 1
        self.loss_keys.update(loss_keys)

    def _means(self) -> dict[str, float]:
        means: dict[str, list[float]] = {k: list(v) for k, v in self._host.items()}
        for keys, (total, count) in self._device.items():
            for key, value in zip(keys, total.tolist()):  # one read per group of keys
                entry = means.setdefault(key, [0.0, 0])
                entry[0] += value
                entry[1] += count
        return {k: s / c for k, (s, c) in means.items() if c}

    def mean(self, key: str) -> float | None:
        """The mean of ``key`` over the micro-batches since the last log line (what the next log
        line will hold), or None when it has no value yet."""
        total, count = self._host.get(key, (0.0, 0))
        for keys, (vector, c) in self._device.items():
            if key in keys:
                total, count = total + float(vector[keys.index(key)]), count + c
        return total / count if count else None

    def put(self, key: str, value: float | Tensor) -> None:
        self.point[key] = value

    def set(self, key: str, value: float | Tensor) -> None:
        """``key``'s current value, in every log line from now on (until set again)."""
        self.running[key] = value

    def count_clips(self, clips: int) -> None:
        self._clips += clips

    def take_point(self) -> dict[str, float]:
        """The current step's own values, removed from the log."""
        point, self.point = self.point, {}
        return {k: _number(v) for k, v in point.items()}

    def flush(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        """The log line of ``step``: means over the window, this step's own values, the running
        numbers, throughput and wall-clock time; starts a new window."""
        means = self._means()  # reads the device values: waits for the steps to finish
        elapsed = time.perf_counter() - self._since
        record: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "lr": lr,
            **means,
            **self.take_point(),
            **{k: _number(v) for k, v in self.running.items()},
            "clips_per_s": self._clips / max(elapsed, 1e-9),
            "time": time.time(),
        }
        self._host, self._device, self._clips, self._since = {}, {}, 0, time.perf_counter()
        self.latest, self.latest_step = record, step
        return record


def stack_values(values: Sequence[Tensor]) -> Tensor:
    """Scalars (or the means of tensors) as one float32 vector, on their device."""
    return torch.stack([v.detach().float().mean() if v.dim() else v.detach().float() for v in values])
