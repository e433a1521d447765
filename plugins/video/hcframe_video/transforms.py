"""Clip augmentation on the device batch: the per-pixel work of contrastive video learning.

Everything is vectorised over the batch: one ``affine_grid`` + ``grid_sample`` per view does the
random resized crop and the flip of every clip at once (the same warp for all frames of a clip and
for its part maps), and the photometric operations are batched tensor arithmetic with per-sample
parameters. Random draws come from the global torch RNG of the batch's device, which the engine
seeds and checkpoints, so runs are reproducible and resume identically.

The operations follow torchvision's definitions (``RandomResizedCrop``, ``RandomHorizontalFlip``,
``ColorJitter``, ``RandomGrayscale``, ``GaussianBlur``) applied to a video, i.e. one draw per clip
shared by its frames; ``tests/video/test_video_augment_reference.py`` checks them against float64
re-computations of those definitions.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hcframe.components import BatchTransform
from hcframe.data import ClipShape

from hcframe_video.partmaps import flip_permutation

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LUMA",
    "VideoAugment",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "grayscale",
    "resized_crop_boxes",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The luma weights of torchvision's tensor ``rgb_to_grayscale`` (ITU-R BT.601, red rounded to 0.2989).
LUMA = (0.2989, 0.587, 0.114)

#: Candidate boxes drawn per crop before falling back to a centre crop (torchvision's count).
CROP_ATTEMPTS = 10

#: Colour-jitter operations, in the numbering of the per-sample random order.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


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


# --- geometry ------------------------------------------------------------------------------------
def resized_crop_boxes(
    height: Tensor,
    width: Tensor,
    u_area: Tensor,
    u_log_ratio: Tensor,
    u_top: Tensor,
    u_left: Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for a batch, from given uniform numbers.

    ``height``/``width`` ``[B]``: the frame of each sample in pixels. ``u_area`` and
    ``u_log_ratio`` ``[B, A]``: uniforms in [0, 1) for ``A`` candidate boxes (area fraction
    ``U(scale)``, aspect ratio ``w/h`` log-uniform in ``ratio``; sides rounded to whole pixels);
    the first candidate that fits the frame is kept, at an integer position uniform over the
    frame (``u_top``, ``u_left`` ``[B]``). When none fits, the centre crop of the whole frame with
    its aspect ratio clamped to ``ratio``. Returns float ``[B, 4]`` ``(left, top, width, height)``
    in whole pixels, in the dtype of ``u_area``.
    """
    dtype = u_area.dtype
    h_img, w_img = height.to(dtype)[:, None], width.to(dtype)[:, None]
    target = h_img * w_img * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    # The first fitting candidate (argmax of a 0/1 row returns its first maximum).
    first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)
    found = fits.any(dim=1)
    w = w.gather(1, first)[:, 0]
    h = h.gather(1, first)[:, 0]
    h_img, w_img = h_img[:, 0], w_img[:, 0]
    top = torch.floor(u_top.to(dtype) * (h_img - h + 1))
    left = torch.floor(u_left.to(dtype) * (w_img - w + 1))
    # Fallback: the whole frame, narrowed to the nearest allowed aspect ratio, centred.
    frame_ratio = w_img / h_img
    too_tall, too_wide = frame_ratio < ratio[0], frame_ratio > ratio[1]
    fb_w = torch.where(too_wide, torch.round(h_img * ratio[1]), w_img)
    fb_h = torch.where(too_tall, torch.round(w_img / ratio[0]), h_img)
    fb_top = torch.div(h_img - fb_h, 2, rounding_mode="floor")
    fb_left = torch.div(w_img - fb_w, 2, rounding_mode="floor")
    return torch.stack(
        [
            torch.where(found, left, fb_left),
            torch.where(found, top, fb_top),
            torch.where(found, w, fb_w),
            torch.where(found, h, fb_h),
        ],
        dim=1,
    )


def box_affine(boxes: Tensor, canvas: tuple[int, int], mirror: Tensor | None = None) -> Tensor:
    """``[B, 2, 3]`` ``affine_grid`` matrices (output -> input, normalised coordinates,
    ``align_corners=False``) that resample the box ``(left, top, width, height)`` (pixels) of
    each sample out of a tensor whose last two dimensions are ``canvas`` (height, width); the
    sample's frame is in the canvas's top-left corner, any rest is padding. ``mirror`` ``[B]``
    bool flips the output horizontally."""
    boxes = boxes.to(torch.float32)
    ch, cw = float(canvas[0]), float(canvas[1])
    theta = torch.zeros(boxes.shape[0], 2, 3, device=boxes.device)
    theta[:, 0, 0] = boxes[:, 2] / cw
    theta[:, 0, 2] = 2 * (boxes[:, 0] + boxes[:, 2] / 2) / cw - 1
    theta[:, 1, 1] = boxes[:, 3] / ch
    theta[:, 1, 2] = 2 * (boxes[:, 1] + boxes[:, 3] / 2) / ch - 1
    if mirror is not None:
        theta[:, 0, 0] = torch.where(mirror, -theta[:, 0, 0], theta[:, 0, 0])
    return theta


def rescale_boxes(boxes: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Boxes in pixels of frames of size ``source`` ``[B, 2]`` (height, width) -> the same
    fractions of frames of size ``target`` (e.g. from the pixels to the part maps)."""
    sy = target[:, 0].to(boxes.dtype) / source[:, 0].to(boxes.dtype)
    sx = target[:, 1].to(boxes.dtype) / source[:, 1].to(boxes.dtype)
    return boxes * torch.stack([sx, sy, sx, sy], dim=1)


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


# --- photometry (torchvision's definitions, per sample; x: [N, 3, T, H, W] in [0, 1]) ---------------
def _per_sample(factor: Tensor, x: Tensor) -> Tensor:
    """``factor [N]`` shaped to broadcast over ``x [N, ...]`` (in ``x``'s dtype unless a mask)."""
    factor = factor if factor.dtype == torch.bool else factor.to(x.dtype)
    return factor.view(-1, *([1] * (x.dim() - 1)))


def grayscale(x: Tensor) -> Tensor:
    """``[N, 1, T, H, W]`` luma of ``x [N, 3, T, H, W]`` with :data:`LUMA` weights."""
    return LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor * x + (1 - factor) * other``, clamped to [0, 1] (torchvision's blend)."""
    f = _per_sample(factor, x)
    return (f * x + (1 - f) * other).clamp(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with black: ``x * factor``, clamped."""
    return _blend(x, torch.zeros((), dtype=x.dtype, device=x.device), factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with each frame's mean luma (torchvision on a video: the mean over one frame's
    pixels, so every frame keeps its own mean), clamped."""
    mean = grayscale(x).mean(dim=(1, 3, 4), keepdim=True)  # [N, 1, T, 1, 1]
    return _blend(x, mean, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the pixel's own luma, clamped."""
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Shift the HSV hue by ``shift`` turns (in [-0.5, 0.5]) per sample, keeping saturation and
    value; grey pixels (max = min) are unchanged."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    grey = chroma == 0
    safe = torch.where(grey, torch.ones_like(chroma), chroma)
    # Hue in sixths of a turn, by which channel is the largest (red first, then green, on ties).
    sixths = torch.where(
        value == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    sixths = torch.where(grey, torch.zeros_like(sixths), sixths)
    hue = torch.remainder(sixths / 6.0 + _per_sample(shift, sixths), 1.0)
    # Back to RGB: channel n (red 5, green 3, blue 1) is value - chroma * clamp(min(k, 4 - k), 0, 1)
    # with k = (n + 6 * hue) mod 6; the same chroma and value, so saturation and value are kept.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * hue, 6.0)
        out.append(value - chroma * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1)




class VideoAugment(BatchTransform):
    """Random resized crop, flip, colour jitter, grayscale, blur and normalisation of clips.

    Per sample and per view, the same for every frame of a clip (in this order, torchvision's
    definitions):

    1. random resized crop of the whole frame (``RandomResizedCrop.get_params``): up to 10
       candidate boxes with area fraction ``U(scale)`` of the frame and aspect ratio (width/height)
       log-uniform in ``ratio``, sides rounded to whole pixels; the first that fits the frame is
       used, at a uniformly drawn integer position; if none fits, the centred whole frame with its
       aspect ratio clamped to ``ratio``. Resized to a ``crop_size`` square (bilinear, half-pixel
       centres, no antialiasing);
    2. horizontal flip with probability ``flip_prob`` (none when ``flip = false``, or when the
       engine reports that the dataset's labels change under mirroring, see
       :meth:`set_flip_allowed`);
    3. with probability ``jitter_prob``, ``ColorJitter``: brightness factor
       ``U(max(0, 1 - brightness), 1 + brightness)`` (scales the pixels), contrast factor likewise
       (blend with each frame's mean luma), saturation factor likewise (blend with the pixel's
       luma), hue shift ``U(-hue, hue)`` turns of the HSV hue; the four in a random order per
       sample, each result clamped to [0, 1];
    4. grayscale (luma ``0.2989 R + 0.587 G + 0.114 B``) with probability ``grayscale_prob``;
    5. Gaussian blur with probability ``blur_prob``, sigma ``U(blur_sigma)`` pixels, kernel side
       ``2 * ceil(3 * max sigma) + 1``, reflect padding;
    6. normalisation with ``mean`` / ``std``.

    Input frames are whole frames (a train-mode dataset's views); batches of frames of different
    sizes arrive zero-padded with their true sizes in ``views_hw`` / ``parts_hw`` (see
    :func:`hcframe.data.collate`) and every box is drawn inside the true frame.

    Part maps get the same crop and flip (bilinear; cells whose centre falls outside the map are
    all 0 = unknown, see :func:`warp`; mirrored maps swap left/right classes, see
    :meth:`set_part_labels`), output a ``part_size`` square (0: the maps' own density, i.e.
    ``crop_size`` times the ratio of part-map rows to pixel rows).

    ``train=False``: centre square crop of the short side resized to ``crop_size``, then
    normalisation only (deterministic, no randomness consumed).
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
            raise ValueError(f"part_size: expected an integer >= 0 (0: the part maps' own density), got {part_size!r}")
        self.crop_size = crop_size
        self.part_size = part_size
        self.scale = _check_range("scale", tuple(scale), 1e-6, 1.0)
        self.ratio = _check_range("ratio", tuple(ratio), 1e-3, 1e3)
        self.flip = bool(flip)
        self.flip_prob = _check_prob("flip_prob", flip_prob)
        self.jitter_prob = _check_prob("jitter_prob", jitter_prob)
        self.brightness = _check_nonneg("brightness", brightness)
        self.contrast = _check_nonneg("contrast", contrast)
        self.saturation = _check_nonneg("saturation", saturation)
        self.hue = _check_nonneg("hue", hue, 0.5)
        self.grayscale_prob = _check_prob("grayscale_prob", grayscale_prob)
        self.blur_prob = _check_prob("blur_prob", blur_prob)
        self.blur_sigma = _check_range("blur_sigma", tuple(blur_sigma), 1e-3, 100.0)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std: expected three values each with std > 0, got {list(mean)} / {list(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.part_flip: list[int] | None = None  # class permutation for mirrored part maps
        self.flip_allowed = True  # set by the engine from the dataset's flip_preserves_label

    def output_shape(self, clip: ClipShape) -> ClipShape:
        """Every frame of a view is resized to ``crop_size`` x ``crop_size``."""
        return ClipShape(clip.frames, self.crop_size, self.crop_size)

    def set_part_labels(self, label_names: Sequence[str]) -> None:
        """Flipped part maps swap left/right classes (LIP: arms 14/15, legs 16/17, shoes 18/19)."""
        perm = flip_permutation(label_names)
        self.part_flip = perm if perm != list(range(len(perm))) else None

    def set_flip_allowed(self, allowed: bool) -> None:
        """``False`` (a dataset whose labels change under mirroring): never flip."""
        self.flip_allowed = bool(allowed)

    def finetune_transform(self) -> "VideoAugment":
        """The fine-tuning protocol's augmentation: this crop and flip, no colour jitter,
        grayscale or blur (the same crop size, crop scales and normalisation)."""
        lighter = copy.deepcopy(self)
        lighter.jitter_prob = lighter.grayscale_prob = lighter.blur_prob = 0.0
        return lighter

    # --- geometry -------------------------------------------------------------------------------
    def _box_dtype(self, device: torch.device) -> torch.dtype:
        # Box arithmetic in float64 where the device has it, so sides round as torchvision's
        # Python floats do; MPS has no float64.
        return torch.float32 if device.type == "mps" else torch.float64

    def sample_boxes(self, frame: Tensor) -> Tensor:
        """Random resized crop boxes ``[B, 4]`` ``(left, top, width, height)`` in the pixels of
        each sample's ``frame = (height, width)`` ``[B, 2]`` (see :func:`resized_crop_boxes`)."""
        b, device = frame.shape[0], frame.device
        dtype = self._box_dtype(device)
        u_area = torch.rand(b, CROP_ATTEMPTS, device=device, dtype=dtype)
        u_ratio = torch.rand(b, CROP_ATTEMPTS, device=device, dtype=dtype)
        u_top = torch.rand(b, device=device, dtype=dtype)
        u_left = torch.rand(b, device=device, dtype=dtype)
        return resized_crop_boxes(frame[:, 0], frame[:, 1], u_area, u_ratio, u_top, u_left, self.scale, self.ratio)

    def sample_mirror(self, batch: int, device: torch.device) -> Tensor:
        """``[B]`` bool: which samples are flipped (always one draw per sample, so the random
        stream does not depend on whether flipping is on)."""
        draw = torch.rand(batch, device=device)
        if not (self.flip and self.flip_allowed and self.flip_prob > 0):
            return torch.zeros(batch, dtype=torch.bool, device=device)
        return draw < self.flip_prob

    def centre_boxes(self, frame: Tensor) -> Tensor:
        """The deterministic evaluation box: the centre square of side ``min(height, width)``."""
        dtype = self._box_dtype(frame.device)
        h, w = frame[:, 0].to(dtype), frame[:, 1].to(dtype)
        side = torch.minimum(h, w)
        return torch.stack([(w - side) / 2, (h - side) / 2, side, side], dim=1)

    # Kept for research code that warps by hand.
    warp = staticmethod(warp)

    # --- photometry -----------------------------------------------------------------------------
    def _factor_range(self, spread: float) -> tuple[float, float]:
        return max(0.0, 1.0 - spread), 1.0 + spread

    def sample_jitter(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The draws of :meth:`colour_jitter`: ``apply`` ``[B]`` bool, ``order`` ``[B, 4]`` (a
        uniformly random permutation of the operations per sample) and ``factors`` ``[B, 4]``
        (brightness, contrast, saturation factors and the hue shift)."""
        apply = torch.rand(batch, device=device) < self.jitter_prob
        order = torch.argsort(torch.rand(batch, 4, device=device), dim=1)
        factors = torch.empty(batch, 4, device=device)
        for op, spread in ((BRIGHTNESS, self.brightness), (CONTRAST, self.contrast), (SATURATION, self.saturation)):
            factors[:, op].uniform_(*self._factor_range(spread))
        factors[:, HUE].uniform_(-self.hue, self.hue)
        return apply, order, factors

    def apply_jitter(self, x: Tensor, apply: Tensor, order: Tensor, factors: Tensor) -> Tensor:
        """Apply the operations to the samples with ``apply``, each sample in its own ``order``.
        Operations whose range is neutral (strength 0) are skipped, as torchvision skips them.

        Each of the four positions is one pass over the whole batch, without a device sync:
        brightness, contrast and saturation are all blends ``f * x + (1 - f) * other`` (with
        black, the frame's mean luma, the pixel's luma), done together with per-sample ``f`` and
        ``other`` (``f = 1`` leaves a sample exactly as it is); the hue shift is kept only for the
        samples whose operation it is."""
        active = torch.tensor([self.brightness > 0, self.contrast > 0, self.saturation > 0, self.hue > 0], device=x.device)
        blends_on = bool(active[:HUE].any())
        y = x
        for position in range(4):
            op = order[:, position]
            chosen = apply & active[op]
            factor = factors.gather(1, op[:, None])[:, 0].to(x.dtype)
            if blends_on:
                blend = chosen & (op != HUE)
                f = _per_sample(torch.where(blend, factor, torch.ones_like(factor)), y)
                luma = grayscale(y)
                other = torch.where(_per_sample(op == CONTRAST, y), luma.mean(dim=(1, 3, 4), keepdim=True), luma)
                other = torch.where(_per_sample(op == BRIGHTNESS, y), torch.zeros_like(other), other)
                y = (f * y + (1 - f) * other).clamp(0, 1)
            if self.hue > 0:
                shift = chosen & (op == HUE)
                y = torch.where(_per_sample(shift, y), adjust_hue(y, torch.where(shift, factor, torch.zeros_like(factor))), y)
        return y

    def colour_jitter(self, x: Tensor) -> Tensor:
        """torchvision's ``RandomApply([ColorJitter(...)], p=jitter_prob)`` per sample:
        brightness, contrast, saturation and hue factors drawn per sample and applied in a random
        order per sample. ``x [B, 3, T, H, W]`` in [0, 1]."""
        return self.apply_jitter(x, *self.sample_jitter(x.shape[0], x.device))

    def random_grayscale(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        apply = (torch.rand(b, device=x.device) < self.grayscale_prob).view(b, 1, 1, 1, 1)
        return torch.where(apply, grayscale(x).expand_as(x), x)

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
    def _part_side(self, frame: Tensor, part_frame: Tensor) -> int:
        if self.part_size:
            return self.part_size
        return max(1, int(round(self.crop_size * float(part_frame[0, 0]) / float(frame[0, 0]))))

    def forward(self, batch: dict[str, Any], train: bool = True) -> dict[str, Any]:
        views = batch["views"]  # uint8 [B, V, 3, T, H, W]
        if views.dim() != 6 or views.shape[2] != 3:
            raise ValueError(f"views: expected uint8 [B, V, 3, T, H, W], got shape {tuple(views.shape)}")
        parts = batch.get("parts")
        b, num_views, _, _, h, w = views.shape
        device = views.device
        frame = _frame_sizes(batch.get("views_hw"), b, (h, w), device)
        if parts is not None:
            part_frame = _frame_sizes(batch.get("parts_hw"), b, tuple(parts.shape[-2:]), device)
            part_side = self._part_side(frame, part_frame)
        out = dict(batch)
        out_views, out_parts = [], []
        size = (self.crop_size, self.crop_size)
        for v in range(num_views):
            boxes = self.sample_boxes(frame) if train else self.centre_boxes(frame)
            mirror = self.sample_mirror(b, device) if train else None
            clip = views[:, v].to(torch.float32) / 255.0
            clip = warp(clip, box_affine(boxes, (h, w), mirror), size, padding="border").clamp(0, 1)
            if train:
                clip = self.colour_jitter(clip)
                clip = self.random_grayscale(clip)
                clip = self.random_blur(clip)
            out_views.append(self.normalise(clip))
            if parts is not None:
                maps = parts[:, v].to(torch.float32)
                part_boxes = rescale_boxes(boxes, frame, part_frame)
                theta = box_affine(part_boxes, tuple(maps.shape[-2:]), mirror)
                maps = warp(maps, theta, (part_side, part_side), padding="zeros")
                if self.part_flip is not None and mirror is not None:
                    maps = torch.where(mirror[:, None, None, None, None], maps[:, self.part_flip], maps)
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


def _frame_sizes(recorded: Tensor | None, batch: int, full: tuple[int, int], device: torch.device) -> Tensor:
    """``[B, 2]`` (height, width) of each sample's frame: the collated ``*_hw`` sizes of a padded
    batch, else the tensor's own size."""
    if recorded is None:
        return torch.tensor([list(full)] * batch, dtype=torch.int64, device=device)
    return recorded.to(device=device, dtype=torch.int64).view(batch, 2)
