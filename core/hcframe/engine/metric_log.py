"""The numbers of the training steps since the last log line (a small cousin of detectron2's
``EventStorage``): the trainer puts them in, the metric writer takes them out."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["MetricLog"]


class MetricLog:
    """Numbers on their way to ``metrics.jsonl``.

    - :meth:`add`: a value per micro-batch (loss terms, accuracies, loss weights); a log line holds
      the mean over the micro-batches since the previous log line.
    - :meth:`put`: a value of the current step only (gradient cosines); it is written at that step,
      in the log line or, between log lines, in a line of its own. The trainer clears these before
      every step.
    - :meth:`count_clips`: clips seen, for the throughput (``clips_per_s``).

    :meth:`flush` turns the window into a record; ``latest`` / ``latest_step`` keep the last one.
    """

    def __init__(self) -> None:
        self.window: dict[str, list[float]] = {}
        self.point: dict[str, float] = {}
        self.loss_keys: set[str] = set()
        self.latest: dict[str, Any] = {}
        self.latest_step: int | None = None
        self._clips = 0
        self._since = time.perf_counter()

    def add(self, key: str, value: float, *, loss: bool = False) -> None:
        """A micro-batch's value of ``key``; ``loss`` marks loss terms (for undeclared keys)."""
        self.window.setdefault(key, []).append(value)
        if loss:
            self.loss_keys.add(key)

    def mean(self, key: str) -> float | None:
        """The mean of ``key`` over the micro-batches since the last log line (what the next log
        line will hold), or None when it has no value yet."""
        values = self.window.get(key)
        return sum(values) / len(values) if values else None

    def put(self, key: str, value: float) -> None:
        self.point[key] = value

    def count_clips(self, clips: int) -> None:
        self._clips += clips

    def take_point(self) -> dict[str, float]:
        """The current step's own values, removed from the log."""
        point, self.point = self.point, {}
        return point

    def flush(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        """The log line of ``step``: means over the window, this step's own values, throughput
        and wall-clock time; starts a new window."""
        elapsed = time.perf_counter() - self._since
        record: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "lr": lr,
            **{k: sum(v) / len(v) for k, v in self.window.items()},
            **self.take_point(),
            "clips_per_s": self._clips / max(elapsed, 1e-9),
            "time": time.time(),
        }
        self.window, self._clips, self._since = {}, 0, time.perf_counter()
        self.latest, self.latest_step = record, step
        return record
