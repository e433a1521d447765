"""Clip sampling over a list of video files: the base of every file-based hcframe dataset.

Sampling, exactly
-----------------
A clip is ``clip_len`` frames ``start, start + stride, ...``. Frame numbers are defined in
:mod:`hcframe_video.decode`. A video shorter than the clip's span ``(clip_len - 1) * stride + 1``
is **clamped**: indices past the last frame repeat the last frame (looping would put a cut into
the clip; clamping keeps the motion and then holds still).

``mode="train"``: ``num_views`` views (set by the engine, from the tasks). Each view draws its own
start uniformly from ``[0, num_frames - span]`` and keeps the **whole frame**, resized so that its
short side is ``short_side`` (aspect ratio kept). The spatial augmentation (a random resized crop of
the whole frame, as MMAction2 and pytorchvideo crop from the whole resized frame) is the batch
transform's, on the device; views of videos with other aspect ratios are padded to one size when
batched (:func:`hcframe.data.collate`).

``mode="test"``: ``num_clips`` starts spaced uniformly from the first to the last possible start
(one clip: the centre), times ``num_crops`` crops. For testing, frames are resized so that the
short side is ``crop_size`` (the usual "resize to crop size, cover the whole frame" protocol), and
the crops are ``crop_size`` squares spaced uniformly along the long side, from one end to the
other (3 crops: left/centre/right for landscape frames, top/centre/bottom for portrait frames;
1 crop: the centre). Views are ordered clip-major: view ``c * num_crops + k`` is clip ``c``, crop
``k``.

Every random draw of sample ``(i, epoch)`` comes from :func:`hcframe.data.sample_generator`.

Decoding
--------
All views of one sample are read in one pass over the file (the union of their frame numbers is
decoded once, only the kept frames converted and resized); frame counts are probed once per video
and cached in memory by each dataset object (so once per DataLoader worker).

Part targets
------------
When ``target_store`` is set, ``parts`` float16 ``[V, K, T, h, w]`` holds the store's full-frame
maps for the view's frames, cut with the same normalised box as the view's pixels and
area-resampled (each output cell is the area-weighted mean of the map cells it covers, so
per-cell probabilities still sum to 1 where the store knows the labels, and to 0 where it does
not): test mode, ``part_size`` squares for the ``crop_size`` crops; train mode, the whole frame at
the same density, ``round(H * part_size / crop_size) x round(W * part_size / crop_size)`` for a
``W x H`` view.

Bad videos
----------
A file that cannot be opened or decoded (corrupt, truncated, empty, no video stream) gives
``hcframe.BadVideo(index, path, reason)`` with the decoder's error text, or raises
:class:`BadVideoError` when ``on_bad_video="raise"``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from hcframe.data import BadVideo, ClipShape, VideoDataset, sample_generator, split_key

from hcframe_video.decode import DecodeError, FrameCountCache, VideoInfo, decode_frames, resized_size

__all__ = ["BadVideoError", "ClipPlan", "VideoClipDataset", "area_resample_box", "check_clip_arguments", "clip_frame_indices"]

MODES = ("train", "test")
ON_BAD = ("skip", "raise")


class BadVideoError(RuntimeError):
    """Raised instead of returning :class:`hcframe.BadVideo` when ``on_bad_video="raise"``."""


def clip_frame_indices(start: int, clip_len: int, stride: int, num_frames: int) -> list[int]:
    """``clip_len`` frame numbers from ``start`` at ``stride``, clamped to the last frame."""
    last = num_frames - 1
    return [min(start + k * stride, last) for k in range(clip_len)]


def _uniform_positions(extent: int, count: int) -> list[int]:
    """``count`` integer offsets spread evenly over ``[0, extent]`` (one: the centre)."""
    if count == 1:
        return [extent // 2]
    return [int(round(k * extent / (count - 1))) for k in range(count)]


def _overlap_weights(lo: float, hi: float, cells: int, out: int) -> torch.Tensor:
    """``[out, cells]`` weights: fraction of output cell ``o`` (of ``out`` equal parts of the
    interval ``[lo, hi]`` in input-cell units) covered by input cell ``c``."""
    edges = torch.linspace(lo, hi, out + 1, dtype=torch.float64)
    a, b = edges[:-1, None], edges[1:, None]
    c0 = torch.arange(cells, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(b, c0 + 1) - torch.maximum(a, c0)).clamp(min=0)
    return overlap / (b - a)


def area_resample_box(maps: torch.Tensor, box: tuple[float, float, float, float], out_size: int | tuple[int, int]) -> torch.Tensor:
    """Cut the normalised box ``(x0, y0, x1, y1)`` (fractions of width and height) out of
    ``maps [..., h, w]`` and area-resample it to ``[..., out_size, out_size]`` (float32;
    ``out_size = (rows, columns)`` for a non-square output).

    Each output cell is the mean of the input over its footprint, weighted by overlap area, so a
    per-cell probability distribution that sums to 1 (or 0) still does. Parts of the box outside
    the map contribute zeros (unknown)."""
    h, w = maps.shape[-2:]
    x0, y0, x1, y1 = box
    out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
    wy = _overlap_weights(y0 * h, y1 * h, h, out_h)
    wx = _overlap_weights(x0 * w, x1 * w, w, out_w)
    resampled = torch.einsum("oh,...hw,pw->...op", wy, maps.to(torch.float64), wx)
    return resampled.to(torch.float32)


class ClipPlan:
    """The frames and crop of one view.

    ``frame_indices``: ``clip_len`` frame numbers. ``resize = (width, height)``: the frame size
    after resizing, and ``(x, y)``: the top-left corner of the crop in those resized pixels;
    ``size = (width, height)``: the crop's size (``None``: the ``crop_size`` square). Train-mode
    plans keep the whole frame: ``x = y = 0``, ``size = resize``.
    """

    __slots__ = ("frame_indices", "resize", "x", "y", "size")

    def __init__(
        self,
        frame_indices: list[int],
        resize: tuple[int, int],
        x: int,
        y: int,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.frame_indices = frame_indices
        self.resize = resize
        self.x = x
        self.y = y
        self.size = size

    def crop_size(self, square: int) -> tuple[int, int]:
        """``(width, height)`` of the crop (``square``: the dataset's ``crop_size``)."""
        return self.size if self.size is not None else (square, square)

    def normalised_box(self, crop_size: int) -> tuple[float, float, float, float]:
        """The crop as fractions of the frame's width and height: ``(x0, y0, x1, y1)``."""
        w, h = self.resize
        cw, ch = self.crop_size(crop_size)
        return (self.x / w, self.y / h, (self.x + cw) / w, (self.y + ch) / h)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_clip_arguments(
    *,
    clip_len: int,
    stride: int,
    short_side: int,
    crop_size: int,
    mode: str,
    num_clips: int,
    num_crops: int,
    seed: int,
    on_bad_video: str,
    part_size: int,
) -> dict[str, Any]:
    """The clip arguments of :class:`VideoClipDataset`, checked (``ValueError`` naming the
    argument) and as plain ints. Datasets that do work before calling
    ``VideoClipDataset.__init__`` (the synthetic world is generated first) check them with this
    before that work."""
    checked: dict[str, Any] = {
        "clip_len": _positive_int("clip_len", clip_len),
        "stride": _positive_int("stride", stride),
        "short_side": _positive_int("short_side", short_side),
        "crop_size": _positive_int("crop_size", crop_size),
    }
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "train" and checked["crop_size"] > checked["short_side"]:
        raise ValueError(f"crop_size: {crop_size} is larger than short_side {short_side}; use crop_size <= short_side")
    checked["mode"] = mode
    checked["num_clips"] = _positive_int("num_clips", num_clips)
    checked["num_crops"] = _positive_int("num_crops", num_crops)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    checked["seed"] = int(seed)
    if on_bad_video not in ON_BAD:
        raise ValueError(f"on_bad_video: expected one of {', '.join(ON_BAD)}, got {on_bad_video!r}")
    checked["on_bad_video"] = on_bad_video
    checked["part_size"] = _positive_int("part_size", part_size, minimum=0)
    return checked


class VideoClipDataset(VideoDataset):
    """Clips of video files, decoded with PyAV (see the module docstring for the exact protocol).

    Arguments:
        paths: video files, relative to ``root`` (or absolute, inside ``root``).
        labels: class index per video (``-1``: unlabelled).
        class_names: label names (may be empty for unlabelled data).
        root: the dataset folder; ``video_id(i)`` is the path relative to it.
        clip_len: frames per clip. stride: frame step inside a clip.
        short_side: train mode resizes frames so the short side is this many pixels, and keeps
            the whole frame (the batch transform crops).
        crop_size: side of the test-mode square crops (see ``num_crops``); in train mode it only
            sets the part maps' density (``part_size`` cells per ``crop_size`` pixels).
        mode: ``"train"`` (random clips of whole frames, ``num_views`` per sample) or ``"test"``
            (``num_clips`` uniform clips x ``num_crops`` crops per sample).
        num_clips, num_crops: test-mode views (``num_crops`` spread along the long side).
        seed: base of every random draw (with epoch and index).
        on_bad_video: ``"skip"`` returns :class:`hcframe.BadVideo`; ``"raise"`` raises.
        part_size: side of the part-target maps of a ``crop_size`` crop (0: ``crop_size // 4``).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        class_names: Sequence[str],
        root: str,
        *,
        clip_len: int = 16,
        stride: int = 2,
        short_side: int = 128,
        crop_size: int = 112,
        mode: str = "train",
        num_clips: int = 10,
        num_crops: int = 3,
        seed: int = 0,
        on_bad_video: str = "skip",
        part_size: int = 0,
    ) -> None:
        super().__init__()
        if len(paths) != len(labels):
            raise ValueError(f"labels: expected one label per video ({len(paths)}), got {len(labels)}")
        checked = check_clip_arguments(
            clip_len=clip_len, stride=stride, short_side=short_side, crop_size=crop_size, mode=mode,
            num_clips=num_clips, num_crops=num_crops, seed=seed, on_bad_video=on_bad_video, part_size=part_size,
        )  # fmt: skip
        self.clip_len, self.stride = checked["clip_len"], checked["stride"]
        self.short_side, self.crop_size, self.mode = checked["short_side"], checked["crop_size"], checked["mode"]
        self.num_clips, self.num_crops, self.seed = checked["num_clips"], checked["num_crops"], checked["seed"]
        self.on_bad_video = checked["on_bad_video"]
        self.part_size = checked["part_size"] or max(1, self.crop_size // 4)
        self.root = os.path.abspath(os.fspath(root))
        self.class_names = tuple(str(c) for c in class_names)
        n_classes = len(self.class_names)
        checked_labels = []
        for k, label in enumerate(labels):
            label = int(label)
            if label != -1 and not 0 <= label < n_classes:
                raise ValueError(f"labels[{k}]: {label} is not a class index in [0, {n_classes}) or -1")
            checked_labels.append(label)
        self._labels = checked_labels
        self._ids = [self._relative(os.fspath(p)) for p in paths]
        self._infos = FrameCountCache()

    def _relative(self, path: str) -> str:
        if os.path.isabs(path):
            rel = os.path.relpath(path, self.root)
            if rel.startswith(".."):
                raise ValueError(f"paths: {path} is not inside root {self.root}")
            return rel.replace(os.sep, "/")
        return os.path.normpath(path).replace(os.sep, "/")

    # --- the VideoDataset interface -------------------------------------------------------------
    @classmethod
    def clip_shape(cls, **args: Any) -> ClipShape:
        """``clip_len`` frames of ``crop_size`` x ``crop_size`` pixels (train and test views)."""
        a = cls.arguments(**args)
        return ClipShape(a["clip_len"], a["crop_size"], a["crop_size"])

    def __len__(self) -> int:
        return len(self._ids)

    def video_id(self, index: int) -> str:
        return self._ids[index]

    def video_path(self, index: int) -> str:
        return os.path.join(self.root, self._ids[index])

    def labels(self) -> list[int]:
        return list(self._labels)

    @property
    def views_per_sample(self) -> int:
        """``V`` of the ``views`` tensor: ``num_views`` in train mode, clips x crops in test mode."""
        return self.num_views if self.mode == "train" else self.num_clips * self.num_crops

    def clip_span(self) -> int:
        return (self.clip_len - 1) * self.stride + 1

    # --- sampling (override to change the protocol) ---------------------------------------------
    def video_info(self, index: int) -> VideoInfo:
        """Frame count, rate and size of video ``index`` (probed once, then cached)."""
        return self._infos.get(self.video_path(index))

    def plan_views(self, info: VideoInfo, generator: torch.Generator) -> list[ClipPlan]:
        """The frames and crop of every view of one sample."""
        max_start = max(0, info.num_frames - self.clip_span())
        c = self.crop_size
        if self.mode == "train":
            resize = resized_size(info.width, info.height, self.short_side)
            plans = []
            for _ in range(self.num_views):
                start = int(torch.randint(0, max_start + 1, (1,), generator=generator))
                indices = clip_frame_indices(start, self.clip_len, self.stride, info.num_frames)
                plans.append(ClipPlan(indices, resize, 0, 0, size=resize))  # the whole frame
            return plans
        resize = resized_size(info.width, info.height, c)
        landscape = resize[0] >= resize[1]
        offsets = _uniform_positions((resize[0] if landscape else resize[1]) - c, self.num_crops)
        plans = []
        for start in _uniform_positions(max_start, self.num_clips):
            indices = clip_frame_indices(start, self.clip_len, self.stride, info.num_frames)
            for offset in offsets:
                x, y = (offset, (resize[1] - c) // 2) if landscape else ((resize[0] - c) // 2, offset)
                plans.append(ClipPlan(indices, resize, x, y))
        return plans

    def read_frames(self, index: int, frame_indices: Sequence[int], size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
        """RGB frames ``[len(unique), H, W, 3]`` at ``size = (W, H)`` for the sorted unique
        ``frame_indices``, and that list; raises :class:`~hcframe_video.decode.DecodeError`."""
        return decode_frames(self.video_path(index), frame_indices, size=size, info=self.video_info(index))

    # --- building a sample ----------------------------------------------------------------------
    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | BadVideo:
        index, epoch = split_key(key)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        try:
            return self._sample(index, epoch)
        except DecodeError as exc:
            path = self.video_path(index)
            if self.on_bad_video == "raise":
                raise BadVideoError(f"{path}: {exc} (set on_bad_video = \"skip\" to skip bad videos)") from None
            return BadVideo(index=index, path=path, reason=str(exc))

    def _sample(self, index: int, epoch: int) -> dict[str, Any]:
        info = self.video_info(index)
        plans = self.plan_views(info, sample_generator(self.seed, epoch, index))
        unique = sorted({i for p in plans for i in p.frame_indices})
        frames, unique = self.read_frames(index, unique, plans[0].resize)  # views share the resize
        lookup = np.asarray(unique)
        cw, ch = plans[0].crop_size(self.crop_size)  # views share the crop size
        views = np.empty((len(plans), 3, self.clip_len, ch, cw), dtype=np.uint8)
        for v, plan in enumerate(plans):
            rows = np.searchsorted(lookup, plan.frame_indices)
            views[v] = frames[rows, plan.y : plan.y + ch, plan.x : plan.x + cw].transpose(3, 0, 1, 2)
        sample: dict[str, Any] = {
            "views": torch.from_numpy(np.ascontiguousarray(views)),
            "frame_indices": torch.tensor([p.frame_indices for p in plans], dtype=torch.int64),
            "label": torch.tensor(self._labels[index], dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self.target_store is not None:
            sample["parts"] = self._parts(index, plans, unique)
        return sample

    def _parts(self, index: int, plans: list[ClipPlan], unique: list[int]) -> torch.Tensor:
        maps = torch.as_tensor(self.target_store.read(self.video_id(index), unique))  # [K, U, h, w]
        if maps.dim() != 4 or maps.shape[1] != len(unique):
            raise ValueError(
                f"target store returned shape {tuple(maps.shape)} for {len(unique)} frames of {self.video_id(index)}; "
                "expected [K, frames, h, w]"
            )
        lookup = np.asarray(unique)
        cw, ch = plans[0].crop_size(self.crop_size)
        # part_size cells per crop_size pixels, along both sides of the view.
        size = (max(1, round(ch * self.part_size / self.crop_size)), max(1, round(cw * self.part_size / self.crop_size)))
        out = []
        for plan in plans:
            rows = torch.from_numpy(np.searchsorted(lookup, plan.frame_indices))
            out.append(area_resample_box(maps[:, rows], plan.normalised_box(self.crop_size), size))
        return torch.stack(out).to(torch.float16)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} videos, {self.num_classes} classes, root={self.root!r}, "
            f"mode={self.mode!r}, clip_len={self.clip_len}, stride={self.stride})"
        )
