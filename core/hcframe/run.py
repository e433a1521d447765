"""``hcframe run``: pre-train, evaluate (a hook at the end of training), and write the run
directory's ``summary.json``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from hcframe.engine import distributed as hd
from hcframe.engine.trainer import RunFailed, Trainer
from hcframe.evaluation.hook import EvaluateAtEnd
from hcframe.files import write_json_atomic
from hcframe.recipe import Recipe

__all__ = ["RunFailed", "run_recipe"]


def run_recipe(
    recipe: Recipe,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict[str, Any]:
    """Run every stage of ``recipe`` in ``run_dir``; returns the summary (also written to disk).

    Raises :class:`RunFailed` after writing a summary with ``status = "failed"``. A run a hook
    stopped early is ``"completed"`` with ``stopped_early = {step, reason}``.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    summary: dict[str, Any] = {"status": "running", "recipe": recipe.source, "run_dir": str(run_dir)}
    trainer = Trainer(recipe, run_dir, resume=resume, progress=progress, log=log, hooks=[EvaluateAtEnd(progress)])
    try:
        trainer.train()
        summary["status"] = "completed"
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    except Exception as exc:
        summary["status"] = "failed"
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        # What the training stage and its hooks recorded (steps, final metrics, unreadable videos,
        # evaluation results), also when it failed part of the way.
        summary.update({k: v for k, v in trainer.summary.items() if k not in summary})
        summary.setdefault("bad_videos", {"count": 0, "videos": []})
        summary["wall_time_s"] = time.perf_counter() - started
        if hd.is_main_process():
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run_dir / "summary.json", summary)
        hd.shutdown()
    return summary
