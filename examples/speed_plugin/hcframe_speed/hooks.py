"""``stop_when_learned``: a training hook that ends a run early once a logged number is good enough.

Added from a recipe with a ``[[hooks]]`` table::

    [[hooks]]
    name = "stop_when_learned"
    metric = "speed/acc"     # a key the run logs (<task name>/<term>)
    target = 0.9
    patience = 2             # on this many log lines in a row

At every log line (``train.log_every``) it reads the mean of ``metric`` over the steps since the
previous line (the number the line holds); once that reached ``target`` on ``patience`` lines in
a row it asks the trainer to stop. The run then ends as a finished one: its last step is logged
and checkpointed, the ``[[eval]]`` stages run, and ``summary.json`` says ``stopped_early``. The count
of lines in a row is kept in checkpoints, so a resumed run goes on counting.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import hcframe

__all__ = ["StopWhenLearned"]


class StopWhenLearned(hcframe.Hook):
    """Stop training once a logged metric has reached a target on ``patience`` log lines in a row.

    Arguments: ``metric`` (str, default ``"speed/acc"``): a key the run logs; ``target`` (float,
    default 0.9); ``patience`` (int >= 1, default 1); ``mode`` (``"max"``, default: stop when the
    metric is >= target; ``"min"``: when it is <= target, for losses).
    """

    def __init__(self, metric: str = "speed/acc", target: float = 0.9, patience: int = 1, mode: Literal["max", "min"] = "max") -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"stop_when_learned: patience must be an integer >= 1, got {patience!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"stop_when_learned: mode must be 'max' or 'min', got {mode!r}")
        self.metric = metric
        self.target = float(target)
        self.patience = patience
        self.mode = mode
        self.streak = 0  # log lines in a row that reached the target

    def before_train(self) -> None:
        logged = [info.name for info in self.trainer.metric_info()]
        if self.metric not in logged:
            raise ValueError(f"stop_when_learned: the run logs no {self.metric!r}; it logs {', '.join(logged)}")

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.step % trainer.recipe.train.log_every and trainer.step != trainer.max_steps:
            return  # not a log line
        value = trainer.metrics.mean(self.metric)
        if value is None:
            return
        reached = value >= self.target if self.mode == "max" else value <= self.target
        self.streak = self.streak + 1 if reached else 0
        if self.streak >= self.patience:
            trainer.request_stop(f"{self.metric} = {value:.4g} reached {self.target:g} on {self.patience} log line(s) in a row")

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self.streak}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.streak = int(state["streak"])
