"""Optimiser and learning-rate schedule built from the recipe's ``[optim]`` and ``[schedule]``."""

from __future__ import annotations

import inspect

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)
from torch import nn

from hcframe.recipe import OptimSpec, ScheduleSpec

__all__ = ["build_optimizer", "build_schedule", "set_learning_rate"]


def _param_groups(model: nn.Module, spec: OptimSpec) -> list[dict]:
    """Weight decay on weights only (not biases or norm scales); per-task learning-rate scales."""
    owner: dict[int, str] = {}
    for task in spec.lr_scale:
        for p in model.task_parameters(task):  # type: ignore[operator]
            owner[id(p)] = task
    groups: dict[tuple[str, bool], list] = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (owner.get(id(p), ""), p.ndim > 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (task, decays), params in sorted(groups.items()):
        out.append({
            "params": params,
            "weight_decay": spec.weight_decay if decays else 0.0,
            "lr_scale": spec.lr_scale.get(task, 1.0) if task else 1.0,
            "group_name": f"{task or 'all'}/{'decay' if decays else 'no_decay'}",
        })
    return out


def build_optimizer(model: nn.Module, spec: OptimSpec, device_type: str) -> torch.optim.Optimizer:
    groups = _param_groups(model, spec)
    if spec.name == "sgd":
        kwargs = dict(lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)
        cls = torch.optim.SGD
    else:
        kwargs = dict(lr=spec.lr, betas=spec.betas)
        cls = torch.optim.AdamW
    # The fused kernels are faster on CUDA; on CPU the default (foreach) path is used.
    if device_type == "cuda" and "fused" in inspect.signature(cls).parameters:
        kwargs["fused"] = True
    return cls(groups, **kwargs)


def build_schedule(spec: ScheduleSpec, max_steps: int) -> ParamScheduler:
    """A multiplier of the base learning rate as a function of training progress in [0, 1)."""
    if spec.name == "cosine":
        main: ParamScheduler = CosineParamScheduler(1.0, spec.final_factor)
    elif spec.name == "step":
        milestones = [m for m in spec.milestones if 0 < m < max_steps]
        values = [spec.gamma**i for i in range(len(milestones) + 1)]
        main = MultiStepParamScheduler(values, num_updates=max_steps, milestones=milestones)
    else:
        main = ConstantParamScheduler(1.0)
    warmup = min(spec.warmup_steps, max_steps)
    if warmup == 0:
        return main
    fraction = warmup / max_steps
    if fraction >= 1.0:
        return LinearParamScheduler(spec.warmup_start_factor, 1.0)
    return CompositeParamScheduler(
        [LinearParamScheduler(spec.warmup_start_factor, 1.0), main],
        lengths=[fraction, 1.0 - fraction],
        interval_scaling=["rescaled", "rescaled"],
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float, schedule: ParamScheduler, step: int, max_steps: int) -> float:
    """Set every group's lr for optimiser step ``step``; returns the unscaled lr."""
    lr = base_lr * schedule(min(step / max_steps, 1.0 - 1e-9))
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
