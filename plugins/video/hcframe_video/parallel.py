"""Run a function over many files in worker processes, with progress and the time left (a rich
bar on a terminal, a log line every 30 s otherwise: :class:`hcframe.progress.ProgressBar`)."""

from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Iterator, Sequence, TypeVar

from hcframe.progress import ProgressBar

__all__ = ["default_workers", "map_with_progress"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def map_with_progress(
    fn: Callable[[T], R], items: Sequence[T], workers: int, description: str, terminal: bool | None = None
) -> Iterator[R]:
    """Yield ``fn(item)`` for every item (in completion order). ``workers <= 1`` runs in this
    process; otherwise a ``spawn`` pool (no inherited threads or open decoders) runs them.
    ``fn`` must be a module-level function, and must not raise for bad input: return the failure.
    Progress goes to stderr: a bar when it is a terminal (``terminal=None`` asks), lines otherwise."""
    with ProgressBar(description, len(items), terminal=terminal, unit="videos") as progress:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                progress.advance()
            return
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes=min(workers, len(items))) as pool:
            for result in pool.imap_unordered(fn, items, chunksize=1):
                yield result
                progress.advance()
