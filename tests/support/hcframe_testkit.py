"""Small components for testing the engine without the plugins (registered with --plugin).

``moving_squares`` is a test fixture, not a dataset for users: a bright square drifting in a
direction that depends on the class, on a dark background, computed from ``(seed, epoch, index)``.
``crash_after`` is a fault-injection hook: it makes a run crash at a chosen micro-batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import hcframe
from hcframe.data import ClipShape, sample_generator, split_key

DIRECTIONS = [(0, 1), (1, 0), (0, -1), (-1, 0)]


class MovingSquares(hcframe.VideoDataset):
    """A square moving in one of four directions (the class)."""

    def __init__(self, num_videos: int = 32, frames: int = 4, size: int = 16, seed: int = 0) -> None:
        self.n, self.frames, self.size, self.seed = num_videos, frames, size, seed
        self.class_names = ("right", "down", "left", "up")

    @classmethod
    def clip_shape(cls, **args: Any) -> ClipShape:
        a = cls.arguments(**args)
        return ClipShape(a["frames"], a["size"], a["size"])

    def __len__(self) -> int:
        return self.n

    def video_id(self, index: int) -> str:
        return f"square_{index:04d}"

    def video_path(self, index: int) -> str:
        return f"<generated>/{self.video_id(index)}"

    def labels(self) -> list[int]:
        return [i % 4 for i in range(self.n)]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = split_key(key)
        g = sample_generator(self.seed, epoch, index)
        label = index % 4
        dy, dx = DIRECTIONS[label]
        views = torch.zeros(self.num_views, 3, self.frames, self.size, self.size, dtype=torch.uint8)
        starts = torch.zeros(self.num_views, self.frames, dtype=torch.long)
        for v in range(self.num_views):
            y0, x0 = (int(c) for c in torch.randint(4, self.size - 8, (2,), generator=g))
            t0 = int(torch.randint(0, 8, (1,), generator=g))
            for t in range(self.frames):
                y, x = y0 + dy * (t + t0) % 4, x0 + dx * (t + t0) % 4
                views[v, :, t, y : y + 4, x : x + 4] = 200
            starts[v] = torch.arange(t0, t0 + self.frames)
        return {"views": views, "label": torch.tensor(label), "index": torch.tensor(index), "frame_indices": starts}


class TinyEncoder(hcframe.Encoder):
    """Three conv stages without batch norm (so DDP and one process compute the same thing)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(
            {
                "stem": nn.Sequential(nn.Conv3d(3, width, 3, stride=(1, 2, 2), padding=1), nn.ReLU()),
                "layer1": nn.Sequential(nn.Conv3d(width, width, 3, padding=1), nn.ReLU()),
                "layer2": nn.Sequential(nn.Conv3d(width, 2 * width, 3, stride=(1, 2, 2), padding=1), nn.ReLU()),
            }
        )
        self.feature_dim = 2 * width


class BrightnessRegression(hcframe.PretextTask):
    """Predict each view's mean brightness from its pooled features (a label-free toy task)."""

    num_views = 2

    def metric_info(self):
        return (hcframe.MetricInfo("mse", "loss", progress=True),)

    def setup(self, encoder: nn.Module, feature_dim: int) -> None:
        self.head = nn.Linear(feature_dim, 1)

    def forward(self, inp: hcframe.TaskInput) -> hcframe.TaskOutput:
        losses = []
        for view, feats in zip(inp.batch["views"], inp.features):
            target = view.mean(dim=(1, 2, 3, 4))
            losses.append(F.mse_loss(self.head(feats.pooled).squeeze(1), target))
        return hcframe.TaskOutput({"mse": torch.stack(losses).mean()})


class Crashed(Exception):
    """What :class:`CrashAfterMicroBatches` raises."""


class CrashAfterMicroBatches(hcframe.Hook):
    """Raise :class:`Crashed` in the forward pass of micro-batch ``micro_batches + 1``: a crash at
    any point of training, also in the middle of an accumulated step (a kill, for resume tests).

    Installs a forward pre-hook on the model when training starts and removes it at the end."""

    def __init__(self, micro_batches: int) -> None:
        self.micro_batches = micro_batches
        self.seen = 0
        self.handle = None

    def before_train(self) -> None:
        self.handle = self.trainer.model.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.seen += 1
        if self.seen > self.micro_batches:
            raise Crashed(f"crashed in micro-batch {self.seen}")

    def after_train(self) -> None:
        if self.handle is not None:
            self.handle.remove()


@hcframe.hookimpl
def hcframe_register(registry) -> None:
    registry.add("dataset", "moving_squares", MovingSquares)
    registry.add("encoder", "tiny3d_test", TinyEncoder)
    registry.add("task", "brightness", BrightnessRegression)
    registry.add("hook", "crash_after", CrashAfterMicroBatches)
