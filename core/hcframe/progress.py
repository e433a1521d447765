"""Progress with a time left (ETA), for every long loop: a rich bar on a terminal, plain log lines
otherwise (a log file or CI output gets a line every ``every_s`` seconds and one at the end,
never a screen of redraws).

::

    with ProgressBar("extracting features", total=len(loader), terminal=console.is_terminal) as bar:
        for batch in loader:
            ...
            bar.advance()
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

__all__ = ["ProgressBar", "ProgressClock", "format_duration"]


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour); ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressClock:
    """Time left for ``total`` items at the rate measured since the clock started (at ``done``
    items: a resumed run's earlier steps do not count towards the rate)."""

    def __init__(self, total: int, done: int = 0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total = total
        self.clock = clock
        self.start_done = done
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def rate(self, done: int) -> float | None:
        """Items per second since the start, or None before the first item."""
        elapsed = self.elapsed()
        finished = done - self.start_done
        return finished / elapsed if finished > 0 and elapsed > 0 else None

    def eta_seconds(self, done: int) -> float | None:
        rate = self.rate(done)
        return None if rate is None else max(self.total - done, 0) / rate

    def eta(self, done: int) -> str:
        return format_duration(self.eta_seconds(done))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ProgressBar:
    """Progress of ``total`` items. ``terminal``: draw a rich bar (steps done, rate, elapsed time,
    ETA) on stderr; otherwise write ``description: done/total (p %), rate, ETA`` through ``log``
    every ``every_s`` seconds, and a last line with the total time when there was a line before
    it (a short loop stays quiet). ``enabled=False`` shows nothing. ``terminal=None`` asks whether
    stderr is a terminal."""

    def __init__(
        self,
        description: str,
        total: int,
        *,
        terminal: bool | None = None,
        enabled: bool = True,
        log: Callable[[str], None] = _stderr,
        every_s: float = 30.0,
        unit: str = "",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.description = description
        self.total = int(total)
        self.enabled = enabled
        self.log = log
        self.every_s = every_s
        self.unit = f" {unit}" if unit else ""
        self.clock = ProgressClock(self.total, clock=clock)
        self.done = 0
        self.lines = 0
        self._last_line = 0.0
        self._bar: Any = None
        self._task: Any = None
        if terminal is None:
            from rich.console import Console

            terminal = Console(stderr=True).is_terminal
        self.terminal = terminal

    def __enter__(self) -> "ProgressBar":
        self.clock = ProgressClock(self.total, clock=self.clock.clock)
        self._last_line = self.clock.elapsed()
        if self.enabled and self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, rate="")
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            rate = self.clock.rate(self.done)
            self._bar.update(self._task, completed=self.done, rate=f"{rate:.1f}{self.unit}/s" if rate else "")
            return
        now = self.clock.elapsed()
        if now - self._last_line >= self.every_s and self.done < self.total:
            self._last_line = now
            self.lines += 1
            self.log(self.line())

    def line(self) -> str:
        """The plain progress line of now."""
        rate = self.clock.rate(self.done)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        speed = f", {rate:.1f}{self.unit}/s" if rate else ""
        return f"{self.description}: {self.done}/{self.total} ({percent:.0f} %){speed}, ETA {self.clock.eta(self.done)}"

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.enabled and exc[0] is None and self.lines:
            self.log(f"{self.description}: {self.done}/{self.total} in {format_duration(self.clock.elapsed())}")
