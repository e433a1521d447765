"""``hcframe run``: pre-train, evaluate (a hook at the end of training), and write the run
directory's ``summary.json``, holding the run directory's lock throughout."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from hcframe.config import BuiltRun
from hcframe.engine import distributed as hd
from hcframe.engine.trainer import RunFailed, Trainer, choose_device
from hcframe.evaluation.hook import EvaluateAtEnd
from hcframe.files import write_json_atomic
from hcframe.recipe import Recipe
from hcframe.rundir import hold_run_dir, write_overrides

__all__ = ["RunFailed", "run_recipe"]


def run_recipe(
    recipe: Recipe | BuiltRun,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    overrides: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run every stage of ``recipe`` in ``run_dir``; returns the summary (also written to disk).
    ``recipe`` is a recipe, or what :func:`hcframe.config.build_run` built of one (what the CLI
    passes: everything was checked before the run directory was touched).

    The run directory is locked first (:func:`hcframe.rundir.hold_run_dir`): when another run
    holds it, :class:`~hcframe.rundir.RunDirBusy` is raised before anything is written.
    ``overrides`` (the ``--set`` options the recipe was loaded with) are stored in
    ``overrides.json`` for a later ``--resume``; ``None`` leaves that file as it is.

    Raises :class:`RunFailed` after writing a summary with ``status = "failed"``. A run a hook
    stopped early is ``"completed"`` with ``stopped_early = {step, reason}``. When
    ``summary.json`` cannot be written after the run failed, that is logged and the run's own
    error is the one raised.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    built, recipe = (recipe, recipe.recipe) if isinstance(recipe, BuiltRun) else (recipe, recipe)
    # The process group first, so that a refusal reaches every rank (none waits for the others).
    hd.init_from_environment(choose_device(recipe.train.device).type)
    try:
        lock = hold_run_dir(run_dir, log)
    except BaseException:
        hd.shutdown()
        raise
    summary: dict[str, Any] = {"status": "running", "recipe": recipe.source, "run_dir": str(run_dir)}
    failure: BaseException | None = None
    try:
        if overrides is not None and hd.is_main_process():
            write_overrides(run_dir, recipe.source, overrides)
        trainer = Trainer(built, run_dir, resume=resume, progress=progress, log=log, hooks=[EvaluateAtEnd(progress)])
        try:
            trainer.train()
            summary["status"] = "completed"
        except KeyboardInterrupt as exc:
            summary["status"] = "interrupted"
            failure = exc
            raise
        except Exception as exc:
            summary["status"] = "failed"
            summary["error"] = f"{type(exc).__name__}: {exc}"
            failure = exc
            raise
        finally:
            # What the training stage and its hooks recorded (steps, final metrics, unreadable
            # videos, evaluation results), also when it failed part of the way.
            summary.update({k: v for k, v in trainer.summary.items() if k not in summary})
            summary.setdefault("bad_videos", {"count": 0, "videos": []})
            summary["wall_time_s"] = time.perf_counter() - started
            if hd.is_main_process():
                _write_summary(run_dir, summary, failure, log)
    finally:
        if lock is not None:
            lock.release()
        hd.shutdown()
    return summary


def _write_summary(run_dir: Path, summary: dict[str, Any], failure: BaseException | None, log: Callable[[str], None]) -> None:
    """``summary.json``; a failure to write it is raised, unless the run had already failed:
    then the run's error stays the one reported and this one is logged."""
    try:
        write_json_atomic(run_dir / "summary.json", summary)
    except OSError as exc:
        if failure is None:
            raise
        log(f"{exc} (after the run failed)")
