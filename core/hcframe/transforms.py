"""The core's deterministic batch transform (augmentation transforms live in the data plugin)."""

from __future__ import annotations

from typing import Any

import torch

from hcframe.components import BatchTransform

__all__ = ["Normalize"]


class Normalize(BatchTransform):
    """uint8 views -> float, scaled to [0, 1] and normalised per channel; no augmentation.

    ``mean`` and ``std`` default to the ImageNet statistics most video backbones use.
    """

    def __init__(self, mean: tuple[float, float, float] = (0.485, 0.456, 0.406), std: tuple[float, float, float] = (0.229, 0.224, 0.225)) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self.mean, self.std = tuple(mean), tuple(std)
        self.register_buffer("_mean", torch.tensor(mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, batch: dict[str, Any], train: bool = True) -> dict[str, Any]:
        views = batch["views"]  # [B, V, 3, T, H, W] uint8
        if "views_hw" in batch:
            sizes = sorted({tuple(hw) for hw in batch["views_hw"].tolist()})
            raise ValueError(
                f"normalize: this batch holds frames of different sizes {sizes} (padded to one); normalize does not "
                "crop, so use a transform that does (e.g. video_augment) or a dataset in test mode"
            )
        out = dict(batch)
        out["views"] = [((views[:, v].float() / 255.0) - self._mean) / self._std for v in range(views.shape[1])]
        if "parts" in batch:
            out["parts"] = [batch["parts"][:, v].float() for v in range(batch["parts"].shape[1])]
        out["pixel_mean"], out["pixel_std"] = self._mean.view(3), self._std.view(3)
        return out
