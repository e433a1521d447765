"""Helpers for the precision tests: tiny models of every shipped task and encoder, fixed batches,
and a few training steps in a given precision (the trainer's step: autocast from
:func:`hcframe.engine.precision.autocast`, a gradient scaler for fp16)."""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs
import torch
from torch import nn

import hcframe
from hcframe.engine.combiner import TaskCombiner
from hcframe.engine.model import MultiTaskModel
from hcframe.engine.precision import autocast

#: LIP-style part classes of the made-up part maps (the synthetic world renders 20).
NUM_PARTS = 6
NUM_CLASSES = 4
MEAN = torch.tensor([0.45, 0.45, 0.45])
STD = torch.tensor([0.225, 0.225, 0.225])


class FeatureTeacher(hcframe.Teacher):
    """A tiny frozen parser exposing features (as SCHP does), for the feature-distillation term."""

    feature_dim = 5

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.label_names = tuple(f"part{i}" for i in range(NUM_PARTS))
        self.features = nn.Conv2d(3, 5, 3, padding=1)
        self.classifier = nn.Conv2d(5, NUM_PARTS, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        self.freeze()

    def identity(self) -> dict[str, Any]:
        return {"architecture": "precision-test"}

    def forward_with_features(self, frames, output_size=None, feature_size=None):
        features = torch.relu(self.features(frames))
        return self.classifier(features), features

    def forward(self, frames, output_size=None):
        return self.forward_with_features(frames, output_size)[0]


#: ``--set`` overrides that turn examples/quickstart.toml into a 3-step run on ``small_world``
#: (batch 4, no data workers, a log line and metrics record every step).
def quickstart_overrides(world) -> list[str]:
    return [
        f'data.root="{world}"', "data.num_train=8", "data.num_test=1", "data.workers=1",
        "train.steps=3", "train.batch_size=4", "train.num_workers=0", "train.cpu_threads=1",
        "train.log_every=1", "train.checkpoint_every=3",
    ]


def make_batches(steps: int, batch: int = 4, frames: int = 8, size: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """``steps`` batches of two views, one-hot part maps ``[B, K, T, 8, 8]`` (float16, as the data
    pipeline delivers them) and labels. The two views of a clip share a smooth random pattern (what
    a contrastive task can match) under independent noise: with plain noise every clip's pooled
    features would be alike up to rounding and any precision would look unstable."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        pattern = torch.randn(batch, 3, frames // 2, 4, 4, generator=g)
        pattern = torch.nn.functional.interpolate(pattern, size=(frames, size, size), mode="trilinear", align_corners=False)
        views = [pattern + 0.3 * torch.randn(batch, 3, frames, size, size, generator=g) for _ in range(2)]
        labels = torch.randint(NUM_PARTS, (batch, frames, size // 2, size // 2), generator=g)
        parts = torch.nn.functional.one_hot(labels, NUM_PARTS).permute(0, 4, 1, 2, 3).to(torch.float16)
        out.append({
            "views": views,
            "parts": [parts],
            "label": torch.randint(NUM_CLASSES, (batch,), generator=g),
            "pixel_mean": MEAN,
            "pixel_std": STD,
        })
    return out


def build_model(encoder: Callable[[], hcframe.Encoder], tasks: Callable[[], dict[str, hcframe.PretextTask]], split: str, shared_grad_scale: dict[str, float] | None = None) -> MultiTaskModel:
    torch.manual_seed(0)
    built = tasks()
    return MultiTaskModel(encoder(), built, split, TaskCombiner(built, shared_grad_scale=shared_grad_scale))


@attrs.frozen
class Run:
    """What :func:`train` saw: per step every task's loss terms and the total; the gradient of
    the first step (unscaled, flattened over all parameters); how many steps the fp16 gradient
    scaler skipped; whether every weight is finite at the end."""

    losses: list[dict[str, float]]
    first_gradient: torch.Tensor
    skipped: int
    finite_weights: bool

    def all_finite(self) -> bool:
        return all(math.isfinite(v) for step in self.losses for v in step.values())


def train(model: MultiTaskModel, batches: list[dict[str, Any]], precision: str, lr: float = 0.002, init_scale: float = 2.0**8) -> Run:
    """``len(batches)`` SGD steps of ``model`` in ``precision``, as the trainer takes them.

    SGD, not Adam: Adam moves every weight by about ``lr`` whatever the size of its gradient, so a
    gradient that rounding flips in sign moves the weight the other way, and runs that differ only
    in rounding drift apart within steps. fp16's scaler starts at ``init_scale`` (2**8), not
    PyTorch's 2**16, which spends its first steps (all of a 3-step run) finding a scale at which
    these gradients fit.
    """
    torch.manual_seed(1)  # the tasks' own draws (playback speeds, ...) are the same in every precision
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, enabled=precision == "fp16")
    model.train()
    history, skipped, first = [], 0, torch.empty(0)
    for step, batch in enumerate(batches):
        with autocast(torch.device("cpu"), precision):
            total, outputs, _ = model(batch, step, len(batches))
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        if step == 0:
            first = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten() for p in params])
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)
        scaler.update()
        skipped += int(scaler.is_enabled() and scaler.get_scale() < scale)
        optimizer.zero_grad(set_to_none=True)
        record = {"total": float(total.detach())}
        for name, out in outputs.items():
            for term, value in out.losses.items():
                record[f"{name}/{term}"] = float(value.detach())
        history.append(record)
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return Run(history, first, skipped, finite)


# --- the cases: every shipped task and encoder ------------------------------------------------------
def _registry():
    return hcframe.get_registry()


def _ground_truth():
    return _registry().create("teacher", "synthetic_ground_truth", label_names=[f"part{i}" for i in range(NUM_PARTS)])


def _task(name: str, **kwargs):
    return lambda: {"task": _registry().create("task", name, **kwargs)}


#: Every shipped task alone (its options that change the arithmetic as separate cases).
TASKS = {
    "simclr": _task("simclr", hidden_dim=32, out_dim=16),
    "simclr_cross_view": _task("simclr", negatives="cross_view", hidden_dim=32, out_dim=16),
    "simclr_cross_view_one_direction": _task("simclr", negatives="cross_view", symmetric=False, hidden_dim=32, out_dim=16),
    "moco": _task("moco", queue_size=32, hidden_dim=32, out_dim=16),
    "moco_symmetric_running_stats": _task("moco", queue_size=32, hidden_dim=32, out_dim=16, symmetric=True, key_bn="running_stats"),
    "parsing_kl": lambda: {"task": _registry().create("task", "parsing_distill", teacher=_ground_truth(), hidden_dim=16)},
    "parsing_kl_temperature_upsample": lambda: {
        "task": _registry().create("task", "parsing_distill", teacher=_ground_truth(), hidden_dim=16, temperature=2.0, upsample=2)
    },
    "parsing_ce": lambda: {"task": _registry().create("task", "parsing_distill", teacher=_ground_truth(), hidden_dim=16, loss="ce")},
    "parsing_feature_term": lambda: {
        "task": _registry().create("task", "parsing_distill", teacher=FeatureTeacher(), hidden_dim=16, feature_distill_weight=1.0)
    },
    "supervised": _task("supervised", num_classes=NUM_CLASSES),
    "online_probe": lambda: {
        "simclr": _registry().create("task", "simclr", hidden_dim=32, out_dim=16),  # the probe reads a branch it does not own
        "probe": _registry().create("task", "online_probe", num_classes=NUM_CLASSES),
    },
    "playback_speed": _task("playback_speed", speeds=[1, 2], frames=4),
}


def r2plus1d():
    # The quickstart's strides: layer4 sees 2 frames, the shape oneDNN's bf16 weight gradient got wrong.
    return _registry().create(
        "encoder", "r2plus1d_18", width=4, blocks=[1, 1, 1, 1], spatial_strides=[1, 2, 2, 1], temporal_strides=[1, 1, 2, 2]
    )


#: Every shipped encoder (and the test kit's), small, with the stage the tasks split at.
ENCODERS = {
    "r2plus1d_18": (r2plus1d, "layer3"),
    "r3d_18": (lambda: _registry().create("encoder", "r3d_18", width=4, blocks=[1, 1, 1, 1]), "layer3"),
    "mc3_18": (lambda: _registry().create("encoder", "mc3_18", width=4, blocks=[1, 1, 1, 1]), "layer3"),
    # stem stride 1: S3D divides space by 32 and needs a map left after block5 at 16 pixels
    "s3d": (lambda: _registry().create("encoder", "s3d", width=8, stem_spatial_stride=1), "block4"),
    "s3d_gating": (lambda: _registry().create("encoder", "s3d", width=8, gating=True, stem_spatial_stride=1), "block4"),
    "c3d_small": (lambda: _registry().create("encoder", "c3d_small", width=4), "conv4"),
    "tiny3d_test": (lambda: _registry().create("encoder", "tiny3d_test", width=4), "layer2"),
}


def quickstart_pair():
    return {
        "contrastive": _registry().create("task", "simclr", hidden_dim=32, out_dim=16),
        "parsing": _registry().create("task", "parsing_distill", teacher=_ground_truth(), hidden_dim=16),
    }
