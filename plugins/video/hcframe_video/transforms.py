"""Clip augmentation on the device batch: the per-pixel work of contrastive video learning.

Everything is vectorised over the batch: one ``affine_grid`` + ``grid_sample`` per view does the
random resized crop and the flip of every clip at once (the same warp for all frames of a clip and
for its part maps), and the photometric operations are batched tensor arithmetic with per-sample
parameters. Random draws come from the global torch RNG of the batch's device, which the engine
seeds and checkpoints, so runs are reproducible and resume identically.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hcframe.components import BatchTransform
from hcframe.data import ClipShape

from hcframe_video.partmaps import flip_permutation

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VideoAugment"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ITU-R BT.601 luma weights (what "grayscale" means here and in torchvision).
LUMA = (0.299, 0.587, 0.114)

_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]], dtype=torch.float64
)


def _check_range(name: str, value: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise ValueError(f"{name}: expected [low, high] with {lo} <= low <= high <= {hi}, got {list(value)}")
    return float(value[0]), float(value[1])


def _check_prob(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def _check_nonneg(name: str, value: float, hi: float = math.inf) -> float:
    if not 0.0 <= value <= hi:
        raise ValueError(f"{name}: expected a value in [0, {hi}], got {value!r}")
    return float(value)


class VideoAugment(BatchTransform):
    """Random resized crop, flip, colour jitter, grayscale, blur and normalisation of clips.

    Per sample and per view, the same for every frame of a clip (in this order):

    1. random resized crop: area fraction ``U(scale)`` of the frame, aspect ratio (width/height)
       log-uniform in ``ratio``, clamped to fit the frame (so very elongated draws cover the
       frame's full width or height), position uniform; output ``crop_size`` square, bilinear;
    2. horizontal flip with probability ``flip_prob`` (none when ``flip = false``: use that for
       datasets whose labels depend on left/right);
    3. with probability ``jitter_prob``: brightness factor ``U(1 ± brightness)``, contrast
       ``U(1 ± contrast)`` (around the clip's mean luma), saturation ``U(1 ± saturation)``, hue
       shift ``U(± hue)`` turns (a rotation of the chroma plane in YIQ space), clamped to [0, 1];
    4. grayscale (BT.601 luma) with probability ``grayscale_prob``;
    5. Gaussian blur with probability ``blur_prob``, sigma ``U(blur_sigma)`` pixels, kernel side
       ``2 * ceil(3 * max sigma) + 1``, reflect padding;
    6. normalisation with ``mean`` / ``std``.

    Part maps get the same crop and flip (bilinear; cells whose centre falls outside the frame
    are all 0 = unknown, see :meth:`warp`), output ``part_size`` square (0: their input size, as a square of the larger side).
    ``train=False``: centre square crop of the short side resized to ``crop_size``, then
    normalisation only (deterministic).
    """

    def __init__(
        self,
        crop_size: int = 112,
        scale: tuple[float, float] = (0.3, 1.0),
        ratio: tuple[float, float] = (0.75, 1.3333333),
        flip: bool = True,
        flip_prob: float = 0.5,
        jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_prob: float = 0.2,
        blur_prob: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        part_size: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"crop_size: expected a positive integer, got {crop_size!r}")
        if isinstance(part_size, bool) or not isinstance(part_size, int) or part_size < 0:
            raise ValueError(f"part_size: expected an integer >= 0 (0: keep the input size), got {part_size!r}")
        self.crop_size = crop_size
        self.part_size = part_size
        self.scale = _check_range("scale", tuple(scale), 1e-6, 1.0)
        self.ratio = _check_range("ratio", tuple(ratio), 1e-3, 1e3)
        self.flip = bool(flip)
        self.flip_prob = _check_prob("flip_prob", flip_prob)
        self.jitter_prob = _check_prob("jitter_prob", jitter_prob)
        self.brightness = _check_nonneg("brightness", brightness, 1.0)
        self.contrast = _check_nonneg("contrast", contrast, 1.0)
        self.saturation = _check_nonneg("saturation", saturation, 1.0)
        self.hue = _check_nonneg("hue", hue, 0.5)
        self.grayscale_prob = _check_prob("grayscale_prob", grayscale_prob)
        self.blur_prob = _check_prob("blur_prob", blur_prob)
        self.blur_sigma = _check_range("blur_sigma", tuple(blur_sigma), 1e-3, 100.0)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std: expected three values each with std > 0, got {list(mean)} / {list(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.part_flip: list[int] | None = None  # class permutation for mirrored part maps

    def output_shape(self, clip: ClipShape) -> ClipShape:
        """Every frame of a view is resized to ``crop_size`` x ``crop_size``."""
        return ClipShape(clip.frames, self.crop_size, self.crop_size)

    def set_part_labels(self, label_names: Sequence[str]) -> None:
        """Flipped part maps swap left/right classes (LIP: arms 14/15, legs 16/17, shoes 18/19)."""
        perm = flip_permutation(label_names)
        self.part_flip = perm if perm != list(range(len(perm))) else None

    # --- geometry -------------------------------------------------------------------------------
    def sample_affine(self, batch: int, height: int, width: int, device: torch.device) -> Tensor:
        """``[batch, 2, 3]`` affine matrices (``affine_grid`` convention, output -> input in
        normalised coordinates) for random resized crops with random flips."""
        area = torch.empty(batch, device=device).uniform_(*self.scale) * (height * width)
        log_ratio = torch.empty(batch, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(log_ratio)
        crop_w = torch.sqrt(area * aspect).clamp(max=width)
        crop_h = torch.sqrt(area / aspect).clamp(max=height)
        cx = crop_w / 2 + torch.rand(batch, device=device) * (width - crop_w)
        cy = crop_h / 2 + torch.rand(batch, device=device) * (height - crop_h)
        sx = crop_w / width
        sy = crop_h / height
        if self.flip and self.flip_prob > 0:
            flips = torch.rand(batch, device=device) < self.flip_prob
            sx = torch.where(flips, -sx, sx)
        else:
            torch.rand(batch, device=device)  # keep the RNG stream the same whatever the flip setting
        theta = torch.zeros(batch, 2, 3, device=device)
        theta[:, 0, 0] = sx
        theta[:, 0, 2] = 2 * cx / width - 1
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = 2 * cy / height - 1
        return theta

    @staticmethod
    def centre_affine(batch: int, height: int, width: int, device: torch.device) -> Tensor:
        """The deterministic evaluation warp: the centre square of side ``min(height, width)``."""
        side = min(height, width)
        theta = torch.zeros(batch, 2, 3, device=device)
        theta[:, 0, 0] = side / width
        theta[:, 1, 1] = side / height
        return theta

    @staticmethod
    def warp(x: Tensor, theta: Tensor, size: tuple[int, int], padding: str) -> Tensor:
        """Apply ``theta`` to ``x [B, C, T, H, W]`` (every frame of a sample alike) -> ``[B, C, T, *size]``.

        ``padding="border"``: bilinear, edge values repeated (pixels). ``padding="zeros"``
        (part maps): bilinear with edge values repeated inside the frame, and exactly 0 for output
        cells whose sample point lies outside the frame, so a cell's probabilities sum to 1 when it
        is inside and to 0 (unknown) when it is not; plain zero padding would instead leave
        partial sums along the frame's edge.
        """
        b, c, t, h, w = x.shape
        grid = F.affine_grid(theta.to(x.dtype), [b, 1, size[0], size[1]], align_corners=False)
        out = F.grid_sample(x.reshape(b, c * t, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False)
        if padding == "zeros":
            inside = (grid.abs() <= 1).all(dim=-1)  # [B, h', w']
            out = out * inside[:, None].to(out.dtype)
        elif padding != "border":
            raise ValueError(f"padding: expected 'border' or 'zeros', got {padding!r}")
        return out.reshape(b, c, t, size[0], size[1])

    # --- photometry -----------------------------------------------------------------------------
    def _uniform_factor(self, batch: int, spread: float, device: torch.device) -> Tensor:
        return torch.empty(batch, device=device).uniform_(1 - spread, 1 + spread)

    def colour_jitter(self, x: Tensor) -> Tensor:
        """Brightness, contrast, saturation and hue with per-sample factors; ``x [B, 3, T, H, W]``."""
        b, device = x.shape[0], x.device
        apply = (torch.rand(b, device=device) < self.jitter_prob).view(b, 1, 1, 1, 1)
        bright = self._uniform_factor(b, self.brightness, device).view(b, 1, 1, 1, 1)
        contr = self._uniform_factor(b, self.contrast, device).view(b, 1, 1, 1, 1)
        satur = self._uniform_factor(b, self.saturation, device).view(b, 1, 1, 1, 1)
        hue = torch.empty(b, device=device).uniform_(-self.hue, self.hue)
        y = (x * bright).clamp(0, 1)
        mean_luma = _luma(y).mean(dim=(1, 2, 3, 4), keepdim=True)
        y = ((y - mean_luma) * contr + mean_luma).clamp(0, 1)
        gray = _luma(y)
        y = ((y - gray) * satur + gray).clamp(0, 1)
        y = _rotate_hue(y, hue).clamp(0, 1)
        return torch.where(apply, y, x)

    def random_grayscale(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        apply = (torch.rand(b, device=x.device) < self.grayscale_prob).view(b, 1, 1, 1, 1)
        return torch.where(apply, _luma(x).expand_as(x), x)

    def random_blur(self, x: Tensor) -> Tensor:
        """Separable Gaussian blur, one sigma per sample (identity kernel where not applied)."""
        b, c, t, h, w = x.shape
        device = x.device
        apply = torch.rand(b, device=device) < self.blur_prob
        sigma = torch.empty(b, device=device).uniform_(*self.blur_sigma)
        radius = int(math.ceil(3 * self.blur_sigma[1]))
        radius = min(radius, (min(h, w) - 1))  # reflect padding needs radius < size
        offsets = torch.arange(-radius, radius + 1, device=device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None].to(x.dtype)) ** 2)
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        identity = (offsets == 0).to(x.dtype).expand_as(kernel)
        kernel = torch.where(apply[:, None], kernel, identity)  # [B, k]
        if radius == 0:
            return x
        groups = b * c * t
        weights = kernel.repeat_interleave(c * t, dim=0)  # [B*C*T, k]
        planes = x.reshape(1, groups, h, w)
        planes = F.pad(planes, (radius, radius, 0, 0), mode="reflect")
        planes = F.conv2d(planes, weights.view(groups, 1, 1, -1), groups=groups)
        planes = F.pad(planes, (0, 0, radius, radius), mode="reflect")
        planes = F.conv2d(planes, weights.view(groups, 1, -1, 1), groups=groups)
        return planes.reshape(b, c, t, h, w)

    def normalise(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1, 1)
        return (x - mean) / std

    # --- the contract ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], train: bool = True) -> dict[str, Any]:
        views = batch["views"]  # uint8 [B, V, 3, T, H, W]
        if views.dim() != 6 or views.shape[2] != 3:
            raise ValueError(f"views: expected uint8 [B, V, 3, T, H, W], got shape {tuple(views.shape)}")
        parts = batch.get("parts")
        b, num_views, _, _, h, w = views.shape
        device = views.device
        out = dict(batch)
        out_views, out_parts = [], []
        size = (self.crop_size, self.crop_size)
        for v in range(num_views):
            clip = views[:, v].to(torch.float32) / 255.0
            theta = self.sample_affine(b, h, w, device) if train else self.centre_affine(b, h, w, device)
            clip = self.warp(clip, theta, size, padding="border").clamp(0, 1)
            if train:
                clip = self.colour_jitter(clip)
                clip = self.random_grayscale(clip)
                clip = self.random_blur(clip)
            out_views.append(self.normalise(clip))
            if parts is not None:
                maps = parts[:, v].to(torch.float32)
                side = self.part_size or max(maps.shape[-2:])
                maps = self.warp(maps, theta, (side, side), padding="zeros")
                if self.part_flip is not None:
                    mirrored = theta[:, 0, 0] < 0
                    maps = torch.where(mirrored[:, None, None, None, None], maps[:, self.part_flip], maps)
                out_parts.append(maps)
        out["views"] = out_views
        if parts is not None:
            out["parts"] = out_parts
        out["pixel_mean"] = torch.tensor(self.mean, device=device)
        out["pixel_std"] = torch.tensor(self.std, device=device)
        return out

    def extra_repr(self) -> str:
        return (
            f"crop_size={self.crop_size}, scale={self.scale}, ratio={self.ratio}, flip={self.flip and self.flip_prob}, "
            f"jitter_prob={self.jitter_prob}, grayscale_prob={self.grayscale_prob}, blur_prob={self.blur_prob}"
        )


def _luma(x: Tensor) -> Tensor:
    """``[B, 1, T, H, W]`` BT.601 luma of ``x [B, 3, T, H, W]``."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return LUMA[0] * r + LUMA[1] * g + LUMA[2] * b


def _rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate the chroma (I, Q) plane of YIQ by ``turns`` full turns per sample."""
    # float32 throughout: float64 is slow on GPUs and missing on some (MPS).
    angle = turns.to(torch.float32) * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(turns.shape[0], 3, 3, dtype=torch.float32, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    to_yiq = _RGB_TO_YIQ.to(device=x.device, dtype=torch.float32)
    matrix = (torch.linalg.inv(to_yiq) @ rot @ to_yiq).to(x.dtype)  # [B, 3, 3]
    return torch.einsum("bij,bjthw->bithw", matrix, x)
