"""Momentum (exponential moving average) copies of a module, and momentum schedules."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["MOMENTUM_SCHEDULES", "MomentumEncoder", "momentum_at"]

MOMENTUM_SCHEDULES = ("constant", "cosine")


def momentum_at(step: int, max_steps: int, base: float, schedule: str = "constant") -> float:
    """The EMA momentum to use at optimiser step ``step`` of ``max_steps``.

    ``constant``: ``base`` at every step. ``cosine`` (BYOL): rises from ``base`` at step 0 to 1 at
    ``max_steps``: ``1 - (1 - base) * (cos(pi * step / max_steps) + 1) / 2``; steps past the end
    stay at 1.
    """
    if schedule not in MOMENTUM_SCHEDULES:
        raise ValueError(f"momentum schedule must be one of {', '.join(MOMENTUM_SCHEDULES)}, got {schedule!r}")
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {base!r}")
    if schedule == "constant":
        return float(base)
    if max_steps < 1:
        raise ValueError(f"the cosine momentum schedule needs max_steps >= 1, got {max_steps!r}")
    progress = min(max(step, 0), max_steps) / max_steps
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class MomentumEncoder(nn.Module):
    """A frozen copy of ``online`` that follows it by exponential moving average.

    The copy is a :func:`copy.deepcopy` made at construction, with ``requires_grad=False`` on every
    parameter: it is never optimised and gets no gradient, and as a submodule of a task it is
    saved in checkpoints. :meth:`update` moves it towards the online module::

        key_param = momentum * key_param + (1 - momentum) * online_param     (exactly this, in the
                                                                             parameters' dtype)

    and copies the online module's buffers (batch-norm running statistics), as MoCo does.
    Calling the module runs the copy. Keep ``online`` itself out of the task's submodules.
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(online)
        for param in self.module.parameters():
            param.requires_grad_(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def _pairs(self, online: nn.Module) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
        key_params, online_params = list(self.module.parameters()), list(online.parameters())
        key_buffers, online_buffers = list(self.module.buffers()), list(online.buffers())
        if len(key_params) != len(online_params) or len(key_buffers) != len(online_buffers):
            raise ValueError(
                "MomentumEncoder.update: the online module does not have the structure of the copy "
                f"({len(online_params)} vs {len(key_params)} parameters); pass the module it was made from"
            )
        for k, o in zip(key_params + key_buffers, online_params + online_buffers):
            if k.shape != o.shape:
                raise ValueError(
                    f"MomentumEncoder.update: shape mismatch {tuple(o.shape)} vs {tuple(k.shape)}; "
                    "pass the module the copy was made from"
                )
        return list(zip(key_params, online_params)), list(zip(key_buffers, online_buffers))

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """One EMA step towards ``online`` (same structure as the copy) with ``momentum`` in [0, 1]."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MomentumEncoder.update: momentum must be in [0, 1], got {momentum!r}")
        params, buffers = self._pairs(online)
        for key, value in params:
            key.mul_(momentum).add_(value.detach().mul(1.0 - momentum))
        for key, value in buffers:
            key.copy_(value)

    @torch.no_grad()
    def reset(self, online: nn.Module) -> None:
        """Copy ``online``'s parameters and buffers (e.g. after loading pre-trained weights into it)."""
        params, buffers = self._pairs(online)
        for key, value in params + buffers:
            key.copy_(value)
