"""Where the tasks' gradients meet: the recipe's ``[combiner]`` table, owned by one class.

:class:`TaskCombiner` decides

- how the task losses are weighted into one total (fixed weights, or learned uncertainty weights);
- how much of each task's gradient reaches the shared trunk (``shared_grad_scale``; the model asks
  :meth:`TaskCombiner.into_trunk` on the way in);
- how the gradients are combined on the way back (plain sum, or PCGrad; the trainer calls
  :meth:`TaskCombiner.backward`);
- when the cosine between the tasks' gradients on the trunk is measured (``grad_cosine_every``;
  :meth:`TaskCombiner.cosine_due`, :meth:`TaskCombiner.measure_cosines`), so their conflict is
  visible in the logs.

The functions below it (:func:`gradient_cosines`, :func:`pcgrad_combine`, :func:`scale_gradient`)
are the building blocks, usable on their own.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor, nn

from hcframe.metrics import MetricInfo

__all__ = ["TaskCombiner", "gradient_cosines", "pcgrad_combine", "scale_gradient"]


class TaskCombiner(nn.Module):
    """The ``[combiner]`` table: weighting, gradient scale into the trunk, PCGrad, cosine probe.

    Args:
        task_names: the tasks, in recipe order.
        weights: fixed weight per task (1 for tasks not named); with ``uncertainty`` weighting,
            the starting weights.
        weighting: ``"fixed"``: ``sum_i w_i L_i``. ``"uncertainty"``: ``sum_i exp(-s_i) L_i + s_i``
            with a learned ``s_i = log sigma_i^2`` per task (Kendall, Gal & Cipolla, CVPR 2018),
            initialised so that the starting weight is the fixed weight.
        shared_grad_scale: per task, the multiplier of its gradient into the shared trunk
            (1 for tasks not named; 0: the task trains only its branch and head).
        pcgrad: combine the per-task gradients on the shared parameters with PCGrad (Yu et al.,
            NeurIPS 2020) instead of summing them; fixed weighting only.
        grad_cosine_every: measure the cosine between every pair of tasks' gradients on the shared
            trunk every this many optimisation steps (0: never).
    """

    def __init__(
        self,
        task_names: Iterable[str],
        weights: dict[str, float] | None = None,
        weighting: Literal["fixed", "uncertainty"] = "fixed",
        shared_grad_scale: dict[str, float] | None = None,
        pcgrad: bool = False,
        grad_cosine_every: int = 0,
    ) -> None:
        super().__init__()
        self.task_names = list(task_names)
        for table, mapping in (("weights", weights), ("shared_grad_scale", shared_grad_scale)):
            unknown = [t for t in mapping or {} if t not in self.task_names]
            if unknown:
                raise ValueError(f"combiner.{table}.{unknown[0]}: no such task; tasks are {', '.join(self.task_names)}")
        if weighting not in ("fixed", "uncertainty"):
            raise ValueError(f"combiner.weighting must be 'fixed' or 'uncertainty', got {weighting!r}")
        if pcgrad and weighting != "fixed":
            raise ValueError("combiner.pcgrad: PCGrad projects the gradients of fixed-weight losses; set weighting = \"fixed\"")
        if grad_cosine_every < 0:
            raise ValueError(f"combiner.grad_cosine_every must be >= 0, got {grad_cosine_every}")
        self.fixed = {n: float((weights or {}).get(n, 1.0)) for n in self.task_names}
        self.weighting = weighting
        self.shared_grad_scale = {n: float((shared_grad_scale or {}).get(n, 1.0)) for n in self.task_names}
        self.pcgrad = pcgrad
        self.grad_cosine_every = grad_cosine_every
        if weighting == "uncertainty":
            self.log_vars = nn.Parameter(torch.tensor([-math.log(max(self.fixed[n], 1e-8)) for n in self.task_names]))

    # --- the forward pass ------------------------------------------------------------------------
    def into_trunk(self, task: str, shared: Tensor) -> Tensor:
        """The shared trunk's output as ``task``'s branch receives it: unchanged, with the gradient
        flowing back into the trunk multiplied by the task's ``shared_grad_scale``."""
        return scale_gradient(shared, self.shared_grad_scale.get(task, 1.0))

    def weight(self, task: str) -> Tensor | float:
        """The current weight of ``task``'s loss."""
        if self.weighting == "uncertainty":
            return torch.exp(-self.log_vars[self.task_names.index(task)])
        return self.fixed[task]

    def forward(self, task_losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns the total and, per task, its weighted contribution (with regulariser)."""
        parts: dict[str, Tensor] = {}
        for i, name in enumerate(self.task_names):
            # float32 whatever a task returned under autocast: the sum of several losses and, with
            # learned weights, exp(-s) * L + s would round to 8 significant bits in bfloat16
            loss = task_losses[name].float()
            if self.weighting == "uncertainty":
                parts[name] = torch.exp(-self.log_vars[i].float()) * loss + self.log_vars[i].float()
            else:
                parts[name] = self.fixed[name] * loss
        total = torch.stack(list(parts.values())).sum()
        return total, parts

    # --- the backward pass -----------------------------------------------------------------------
    def backward(
        self,
        total: Tensor,
        weighted: dict[str, Tensor],
        params: list[nn.Parameter],
        shared: list[nn.Parameter],
        *,
        accumulate: int = 1,
        scaler: torch.amp.GradScaler | None = None,
        reduce: Callable[[Tensor], None] | None = None,
    ) -> None:
        """Add this micro-batch's gradients (divided by ``accumulate``) to ``params``' ``.grad``.

        Plain: ``total`` backpropagated (through ``scaler`` when given). PCGrad: each task's
        weighted loss differentiated on its own, the per-task gradients on ``shared`` combined by
        :func:`pcgrad_combine`, the rest summed; ``reduce`` (e.g. an all-reduce mean over ranks)
        is applied to each parameter's gradient before it is added, since a data-parallel wrapper
        does not see these gradients.
        """
        if not self.pcgrad:
            loss = total / accumulate
            (scaler.scale(loss) if scaler is not None else loss).backward()
            return
        shared_ids = {id(p) for p in shared}
        shared_mask = torch.cat([torch.full((p.numel(),), id(p) in shared_ids, dtype=torch.bool, device=p.device) for p in params])
        scale = 1.0 / accumulate
        per_task = {name: _flat_grads(loss * scale, params) for name, loss in weighted.items()}
        combined = torch.stack(list(per_task.values())).sum(0)
        combined[shared_mask] = pcgrad_combine({n: g[shared_mask] for n, g in per_task.items()})
        offset = 0
        for p in params:
            g = combined[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if reduce is not None:
                reduce(g)
            p.grad = g.clone() if p.grad is None else p.grad + g

    # --- the cosine probe ------------------------------------------------------------------------
    def cosine_due(self, step: int) -> bool:
        """Whether optimisation step number ``step`` (counting from 1) measures gradient cosines."""
        return self.grad_cosine_every > 0 and step % self.grad_cosine_every == 0

    def measure_cosines(self, task_losses: dict[str, Tensor], shared: list[nn.Parameter]) -> dict[str, float]:
        """``{"<a>~<b>": cosine}`` between the tasks' gradients on ``shared`` (the graph is kept for
        the backward pass); empty with fewer than two tasks or no shared parameter."""
        if len(task_losses) < 2 or not shared:
            return {}
        return gradient_cosines(task_losses, shared)

    def metric_info(self) -> list[MetricInfo]:
        """What the trainer logs for the combiner: ``weight/<task>`` and ``grad_cos/<a>~<b>``."""
        info = [MetricInfo(f"weight/{t}", "other", plot="loss_weights") for t in self.task_names]
        if self.grad_cosine_every:
            names = self.task_names
            info += [MetricInfo(f"grad_cos/{a}~{b}", "other", plot="gradient_cosine") for i, a in enumerate(names) for b in names[i + 1 :]]
        return info


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient flowing back by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, with its gradient multiplied by ``scale`` (0 detaches)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return _ScaleGradient.apply(x, scale)


def _flat_grads(loss: Tensor, params: list[nn.Parameter], retain_graph: bool = True) -> Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def gradient_cosines(task_losses: dict[str, Tensor], shared: list[nn.Parameter]) -> dict[str, float]:
    """Cosine similarity between every pair of tasks' gradients on the shared parameters.

    Negative values mean the tasks pull the shared trunk in conflicting directions. Pairs where a
    task sends no gradient into the trunk are left out.
    """
    names = list(task_losses)
    grads = {n: _flat_grads(task_losses[n], shared) for n in names}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            denom = grads[a].norm() * grads[b].norm()
            if denom > 0:  # a task kept out of the trunk (shared_grad_scale 0) has no direction
                out[f"{a}~{b}"] = float((grads[a] @ grads[b]) / denom)
    return out


def pcgrad_combine(per_task: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
    """PCGrad (Yu et al., NeurIPS 2020): for each task gradient, in random order of the others,
    remove its component along any other task's gradient it conflicts with (negative dot product);
    return the sum of the projected gradients."""
    names = list(per_task)
    projected = []
    for name in names:
        g = per_task[name].clone()
        others = [n for n in names if n != name]
        order = torch.randperm(len(others), generator=generator).tolist()
        for j in order:
            h = per_task[others[j]]
            dot = g @ h
            if dot < 0:
                g = g - dot / (h @ h).clamp_min(1e-20) * h
        projected.append(g)
    return torch.stack(projected).sum(0)
