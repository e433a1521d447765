"""The evaluation at the end of a run, as a training hook (:func:`hcframe.run.run_recipe` adds it)."""

from __future__ import annotations

from hcframe.components import Hook
from hcframe.evaluation.runner import run_evaluations

__all__ = ["EvaluateAtEnd"]


class EvaluateAtEnd(Hook):
    """Runs the recipe's ``[[eval]]`` stages on the trained model once training has ended cleanly
    (completed, or stopped by a hook); the results go to ``summary["eval"]``. Registered last, it
    runs after the final checkpoint is written, so a failing evaluation loses no training."""

    def __init__(self, progress: bool = False) -> None:
        self.progress = progress

    def after_train(self) -> None:
        trainer = self.trainer
        if trainer.status not in ("completed", "stopped") or not trainer.recipe.evaluations:
            return
        built = getattr(trainer, "built", None)  # the [[eval]] datasets build_run already built
        trainer.summary["eval"] = run_evaluations(
            trainer.recipe, trainer.model, trainer.run_dir, device=trainer.device, log=trainer.log, progress=self.progress,
            datasets=built.eval_datasets if built is not None else None,
        )
