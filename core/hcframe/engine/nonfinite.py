"""Non-finite training steps: found on the device, skipped, counted; non-finite weights never saved.

A step is *non-finite* when one of its loss terms (summed over its micro-batches) or the norm of its
gradients (after fp16 unscaling) is NaN or infinite. Such a step changes no weight and no optimiser
state: :func:`step_if_finite` skips it (with fp16 the loss scaler also backs off its scale). Its
data and random draws are consumed as for any step, so a resumed run replays it identically.

Skipping is decided without waiting for the device where the optimiser allows it: the fused
optimisers (``fused=True``, what :func:`hcframe.engine.optim.build_optimizer` builds) take a
``found_inf`` tensor and skip on the device, the mechanism :class:`torch.amp.GradScaler` uses with
them. Others (and every optimiser's first step, see :func:`step_if_finite`) read the flag back.

:class:`hcframe.engine.hooks.NonFiniteSteps` (a built-in hook) reads the flags back in batches,
logs each skipped step with the loss terms that were not finite, counts them (``skipped_steps`` in
``metrics.jsonl``, ``nonfinite_steps`` in ``summary.json``) and stops the run when
``train.max_nonfinite_steps`` steps in a row were skipped, or at once when the model's own weights
or buffers are no longer finite (no skipping can repair those). :func:`nonfinite_tensors` is what
the checkpointer checks before writing: a checkpoint never holds non-finite weights.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["ADVICE", "all_ranks_finite", "describe_nonfinite", "gradients_finite", "nonfinite_tensors", "step_if_finite"]

ADVICE = "lower optim.lr, set train.clip_grad, or check the loss for a division by zero or a log of 0"


def gradients_finite(params: Iterable[nn.Parameter]) -> Tensor:
    """Whether every gradient of ``params`` is finite: a bool scalar on their device (True when
    none has a gradient), computed without waiting for the device.

    Uses the check :class:`torch.amp.GradScaler` runs on every step (one multi-tensor kernel on
    CUDA; on CPU a tenth of the time of a norm over a video ResNet's 111 small tensors), with a
    scale of 1, which leaves the gradients as they are."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    device, dtype = grads[0].device, grads[0].dtype
    check = getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None)
    if check is not None and all(g.device == device and g.dtype == dtype for g in grads):
        found = torch.zeros(1, device=device)
        check(grads, found, torch.ones(1, device=device))
        return found[0] == 0
    # Mixed devices or dtypes: a norm per gradient, NaN or infinite with any non-finite entry.
    norms = [torch.linalg.vector_norm(g.detach().float()).to(device) for g in grads]
    return torch.isfinite(torch.stack(norms)).all()


def all_ranks_finite(finite: Tensor) -> Tensor:
    """``finite`` (a bool scalar) and-ed over the ranks of a distributed run, so that every rank
    skips the same steps (a loss term is per rank; the gradients are already the same)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return finite
    flag = finite.to(torch.int32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.reshape(()).bool()


def step_if_finite(optimizer: torch.optim.Optimizer, finite: Tensor) -> None:
    """``optimizer.step()`` unless ``finite`` (a bool scalar tensor) is False.

    A fused optimiser skips on the device (``found_inf``): no wait for the device. Its first step is
    decided on the host all the same: fused SGD with momentum allocates its momentum buffers
    uninitialised on its first step and a skipped first step leaves them so (torch 2.x; the next
    step then reads garbage), so a fused optimiser is only handed a possible skip once it has state
    (or when it never has any: SGD without momentum).
    """
    stateless = isinstance(optimizer, torch.optim.SGD) and all(g.get("momentum", 0) == 0 for g in optimizer.param_groups)
    if getattr(optimizer, "_step_supports_amp_scaling", False) and (optimizer.state or stateless):
        optimizer.grad_scale = None  # type: ignore[attr-defined]  # the gradients are unscaled already
        optimizer.found_inf = (~finite).to(torch.float32)  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]
    elif bool(finite):
        optimizer.step()


def nonfinite_tensors(tensors: Mapping[str, Any]) -> tuple[list[str], int]:
    """The names of the floating-point tensors of ``tensors`` (a state dict) holding a NaN or an
    infinity, and how many floating-point tensors there are."""
    names, total = [], 0
    for name, value in tensors.items():
        if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            total += 1
            if value.numel() and not bool(torch.isfinite(value).all()):
                names.append(name)
    return names, total


def describe_nonfinite(names: Sequence[str], total: int, what: str = "tensors") -> str:
    """``"105 of 204 tensors are not finite (first: trunk.stem.0.weight)"``."""
    return f"{len(names)} of {total} {what} are not finite (first: {names[0]})"
