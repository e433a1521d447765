"""The training loop reduced to its shape: optimisation steps, and hooks around them.

:class:`TrainerBase` knows nothing about models or data (that is
:class:`hcframe.engine.trainer.Trainer`); it runs::

    before_train()                      # the trainer's own, then every hook's
    while step < max_steps and no stop was requested:
        before_step()
        run_step()                      # one optimisation step
        step += 1
        after_step()
    after_train()                       # always, also when something raised

and records how it ended in :attr:`TrainerBase.status`. The idiom is detectron2's ``TrainerBase``
/ ``HookBase`` (one ``run_step`` per optimisation step, hooks for everything around it).
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable, Literal

from hcframe.components import Hook

__all__ = ["RunFailed", "TrainerBase"]

Status = Literal["not started", "running", "completed", "stopped", "failed", "interrupted"]


class RunFailed(RuntimeError):
    """The run cannot go on (too many bad videos, a bad video in strict mode, a data problem)."""


class TrainerBase:
    """Optimisation steps with hooks around them.

    Attributes hooks can read: ``step`` (optimisation steps completed; inside :meth:`run_step` the
    index of the step being taken), ``max_steps``, ``status`` (``"running"`` during training, then
    ``"completed"``, ``"stopped"`` after :meth:`request_stop`, ``"failed"`` or
    ``"interrupted"``) and ``stop_reason``.
    """

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self.step = 0
        self.max_steps = 0
        self.status: Status = "not started"
        self.stop_reason: str | None = None

    def register_hooks(self, hooks: Iterable[Hook]) -> None:
        """Add hooks; they run in the order they were registered."""
        for hook in hooks:
            if not isinstance(hook, Hook):
                raise TypeError(f"{hook!r} is not a hcframe.Hook")
            # A weak proxy: the trainer owns its hooks, not the other way round.
            hook.trainer = weakref.proxy(self)
            self.hooks.append(hook)

    def request_stop(self, reason: str) -> None:
        """End training cleanly after the current step's hooks: status ``"stopped"``, and hooks'
        :meth:`~hcframe.Hook.after_train` run as after a completed run."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def train(self) -> None:
        self.status = "running"
        try:
            self.before_train()
            while self.step < self.max_steps and self.stop_reason is None:
                self.before_step()
                self.run_step()
                self.step += 1
                self.after_step()
            self.status = "stopped" if self.stop_reason is not None else "completed"
        except KeyboardInterrupt:
            self.status = "interrupted"
            raise
        except BaseException:
            self.status = "failed"
            raise
        finally:
            self.after_train()

    def run_step(self) -> None:
        """One optimisation step."""
        raise NotImplementedError

    def call_hooks(self, stage: str) -> None:
        """Call every hook's ``stage`` method (``"before_train"``, ...), in registration order."""
        for hook in self.hooks:
            getattr(hook, stage)()

    # A subclass extends a stage by overriding it and calling super() where its own work fits.
    def before_train(self) -> None:
        self.call_hooks("before_train")

    def before_step(self) -> None:
        self.call_hooks("before_step")

    def after_step(self) -> None:
        self.call_hooks("after_step")

    def after_train(self) -> None:
        self.call_hooks("after_train")

    def hook_states(self) -> dict[str, Any]:
        """Every stateful hook's :meth:`~hcframe.Hook.state_dict`, by its ``state_key``."""
        return {h.state_key: state for h in self.hooks if (state := h.state_dict())}

    def load_hook_states(self, states: dict[str, Any]) -> list[str]:
        """Give each hook its saved state; returns the keys no registered hook claimed."""
        by_key = {h.state_key: h for h in self.hooks}
        for key, state in states.items():
            if key in by_key:
                by_key[key].load_state_dict(state)
        return sorted(set(states) - set(by_key))
