"""Parameter and FLOP counts of a recipe's model, with fvcore's ``FlopCountAnalysis``.

fvcore counts one fused multiply-add as one FLOP (so its "FLOPs" are MACs), per forward pass.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from torch import Tensor, nn

from hcframe.data import ClipShape
from hcframe.engine.model import MultiTaskModel
from hcframe.recipe import Recipe
from hcframe.registry import Registry, get_registry

__all__ = ["model_info", "training_clip_shape"]


class _AllViews(nn.Module):
    """The encoder work of one training sample: the trunk on every view, then each task's branch on
    the views that task uses (momentum encoders and heads are not included)."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: Tensor) -> tuple[Tensor, ...]:
        shared = self.model.trunk(views)
        return tuple(branch(shared[: self.model.tasks[n].num_views]) for n, branch in self.model.branches.items())


class _OneClip(nn.Module):
    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip: Tensor) -> Tensor:
        name = next(iter(self.model.branches))
        return self.model.branches[name](self.model.trunk(clip))


def _count(module: nn.Module, inputs: Tensor) -> tuple[float, dict[str, int]]:
    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    return float(analysis.total()), dict(analysis.unsupported_ops())


def training_clip_shape(recipe: Recipe, registry: Registry | None = None) -> ClipShape | None:
    """The shape of the views the model trains on: what the dataset declares for its arguments
    (:meth:`hcframe.VideoDataset.clip_shape`), through the transform
    (:meth:`hcframe.BatchTransform.output_shape`); ``None`` when the dataset does not say."""
    registry = registry or get_registry()
    factory = registry.get("dataset", recipe.data.name).factory
    declared = getattr(factory, "clip_shape", None)
    shape = declared(**recipe.data.args) if declared is not None else None
    if shape is None:
        return None
    return recipe.transform.build(registry).output_shape(shape)


def model_info(model: MultiTaskModel, frames: int, height: int, width: int | None = None) -> dict[str, Any]:
    model = model.eval()
    width = height if width is None else width
    encoder_params = sum(p.numel() for p in model.trunk.parameters()) + sum(p.numel() for p in next(iter(model.branches.values())).parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    clip = torch.zeros(1, 3, frames, height, width)
    with torch.no_grad():
        per_clip, unsupported = _count(_OneClip(model), clip)
        views = model.num_views
        per_step, unsupported_all = _count(_AllViews(model), torch.zeros(views, 3, frames, height, width))
    for k, v in unsupported_all.items():
        unsupported.setdefault(k, v)
    return {
        "encoder_parameters": encoder_params,
        "trainable_parameters": trainable,
        "clip_shape": [3, frames, height, width],
        "gflops_per_clip": per_clip / 1e9,
        "views_per_step": views,
        "gflops_per_step_sample": per_step / 1e9,
        "uncounted_operators": unsupported,
    }
