"""Getting frames into a teacher's input conventions and its outputs back onto the frame grid.

Every teacher takes RGB frames ``[N, 3, H, W]`` in ``[0, 1]`` (the :class:`hcframe.Teacher`
contract). A teacher trained at a fixed input size sees them either

- ``"letterbox"``: resized keeping the aspect ratio so the whole frame fits, centred, the rest
  padded with black (value 0 before normalisation) — what SCHP's inference does with its affine
  warp of the whole image; or
- ``"resize"``: plainly resized to the input size (aspect ratio not kept).

Its logits are then mapped back: bilinearly upsampled to the input size (``align_corners=True``,
as SCHP does), the padded border cut away, and resized to the requested output grid.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FramePlacement", "place_frames", "logits_to_frame_grid", "normalise", "sample_frame_grid", "RESIZE_MODES"]

RESIZE_MODES = ("letterbox", "resize")


@attrs.frozen
class FramePlacement:
    """Where the frame content lies inside the teacher input (pixels of the input)."""

    top: int
    left: int
    height: int
    width: int
    input_size: tuple[int, int]


def place_frames(frames: Tensor, input_size: Sequence[int], mode: str = "letterbox") -> tuple[Tensor, FramePlacement]:
    """Resize ``frames`` ``[N, 3, H, W]`` into ``input_size`` (``[h, w]``) by ``mode``."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"teacher frames must be [N, 3, H, W], got {list(frames.shape)}")
    in_h, in_w = int(input_size[0]), int(input_size[1])
    h, w = frames.shape[-2:]
    if mode == "resize":
        out = frames if (h, w) == (in_h, in_w) else F.interpolate(frames, size=(in_h, in_w), mode="bilinear", align_corners=False)
        return out, FramePlacement(0, 0, in_h, in_w, (in_h, in_w))
    scale = min(in_h / h, in_w / w)
    new_h = max(1, min(in_h, round(h * scale)))
    new_w = max(1, min(in_w, round(w * scale)))
    resized = frames if (h, w) == (new_h, new_w) else F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top = (in_h - new_h) // 2
    left = (in_w - new_w) // 2
    padded = F.pad(resized, (left, in_w - new_w - left, top, in_h - new_h - top), value=0.0)
    return padded, FramePlacement(top, left, new_h, new_w, (in_h, in_w))


def normalise(frames: Tensor, mean: Sequence[float], std: Sequence[float], channel_order: str = "rgb") -> Tensor:
    """RGB ``[0, 1]`` frames -> the teacher's channel order, then ``(x - mean) / std`` (both given in
    the teacher's channel order)."""
    if channel_order == "bgr":
        frames = frames.flip(1)
    elif channel_order != "rgb":
        raise ValueError(f"channel_order {channel_order!r} is not one of rgb, bgr")
    m = torch.as_tensor(mean, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return (frames - m) / s


def logits_to_frame_grid(logits: Tensor, placement: FramePlacement, output_size: Sequence[int]) -> Tensor:
    """Teacher logits ``[N, K, h, w]`` (covering the whole input) -> ``[N, K, *output_size]`` covering
    exactly the original frame."""
    in_h, in_w = placement.input_size
    if logits.shape[-2:] != (in_h, in_w):
        logits = F.interpolate(logits, size=(in_h, in_w), mode="bilinear", align_corners=True)
    crop = logits[..., placement.top : placement.top + placement.height, placement.left : placement.left + placement.width]
    out_h, out_w = int(output_size[0]), int(output_size[1])
    if crop.shape[-2:] != (out_h, out_w):
        crop = F.interpolate(crop, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return crop


def sample_frame_grid(coarse: Tensor, placement: FramePlacement, output_size: Sequence[int]) -> Tensor:
    """Sample a coarse map ``[N, C, gh, gw]`` (covering the whole input, corner-aligned as with
    ``align_corners=True``) at the centres of an ``output_size`` grid laid over the frame.

    Cheap for wide feature maps (``output_size`` points per channel, no input-size intermediate):
    what feature distillation uses. Bilinear point samples, not area averages.
    """
    in_h, in_w = placement.input_size
    out_h, out_w = int(output_size[0]), int(output_size[1])
    dev, dt = coarse.device, coarse.dtype
    ys = placement.top + (torch.arange(out_h, device=dev, dtype=torch.float32) + 0.5) * placement.height / out_h - 0.5
    xs = placement.left + (torch.arange(out_w, device=dev, dtype=torch.float32) + 0.5) * placement.width / out_w - 0.5
    ny = 2.0 * ys / max(in_h - 1, 1) - 1.0
    nx = 2.0 * xs / max(in_w - 1, 1) - 1.0
    grid = torch.stack(torch.meshgrid(nx, ny, indexing="xy"), dim=-1)  # [out_h, out_w, 2] as (x, y)
    grid = grid.to(dt).unsqueeze(0).expand(coarse.shape[0], -1, -1, -1)
    return F.grid_sample(coarse, grid, mode="bilinear", padding_mode="border", align_corners=True)
