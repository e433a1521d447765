"""Any human parser exported with ``torch.jit.save`` as a teacher."""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

import hcframe
from hcframe_parsing.frames import RESIZE_MODES, logits_to_frame_grid, normalise, place_frames
from hcframe_parsing.precision import check_precision, teacher_precision
from hcframe_parsing.schp import sha256_of_file

__all__ = ["TorchScriptTeacher"]


class TorchScriptTeacher(hcframe.Teacher):
    """A TorchScript parser ``[N, 3, h, w] -> [N, K, h', w']`` logits (any output stride).

    Args:
        path: file written by ``torch.jit.save``; the scripted module's ``forward`` must return one
            logits tensor.
        label_names: the ``K`` class names, in output-channel order (index 0 is background).
        input_size: ``[h, w]`` the parser expects.
        channel_order: ``"rgb"`` or ``"bgr"``: the order the parser expects its input channels in.
        mean, std: per-channel normalisation, given in the parser's channel order, applied to
            ``[0, 1]`` pixels.
        resize_mode: ``"letterbox"`` (aspect kept, black padding) or ``"resize"`` (plain resize).
        precision: ``"fp32"`` (default) or ``"bf16"`` (autocast; an opt-in meant for CUDA), see
            :mod:`hcframe_parsing.precision`. Part of :meth:`identity`.

    Outputs are mapped back onto the frame grid as for every teacher (see :mod:`hcframe_parsing.frames`).
    """

    def __init__(
        self,
        path: str,
        label_names: list[str],
        input_size: list[int],
        channel_order: str = "rgb",
        mean: list[float] = [0.485, 0.456, 0.406],  # noqa: B006 - never mutated; shown in recipes
        std: list[float] = [0.229, 0.224, 0.225],  # noqa: B006
        resize_mode: str = "letterbox",
        precision: Literal["fp32", "bf16"] = "fp32",
    ) -> None:
        super().__init__()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"teacher.path {path!r} does not exist; export the parser with torch.jit.save")
        if len(label_names) < 2:
            raise ValueError(f"teacher.label_names must list at least 2 classes, got {list(label_names)}")
        if len(input_size) != 2 or min(input_size) <= 0:
            raise ValueError(f"teacher.input_size must be [height, width] > 0, got {list(input_size)}")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"teacher.channel_order {channel_order!r} is not one of rgb, bgr")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"teacher.mean and teacher.std need 3 values each (std > 0), got {list(mean)} and {list(std)}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"teacher.resize_mode {resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        self.precision = check_precision(precision)
        try:
            with warnings.catch_warnings():
                # torch >= 2.9 marks TorchScript deprecated; exported parsers are still TorchScript files.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise ValueError(f"teacher.path {path!r} is not a TorchScript file ({type(exc).__name__}: {exc})") from exc
        self.path = path
        self.label_names = tuple(label_names)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.channel_order = channel_order
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize_mode = resize_mode
        self.file_sha256 = sha256_of_file(path)
        self.freeze()

    def identity(self) -> dict[str, Any]:
        return {
            "architecture": "torchscript",
            "checkpoint_sha256": self.file_sha256,
            "input_size": list(self.input_size),
            "resize_mode": self.resize_mode,
            "channel_order": self.channel_order,
            "mean": list(self.mean),
            "std": list(self.std),
            "label_names": list(self.label_names),
            "precision": self.precision,
        }

    def forward(self, frames: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        with teacher_precision(frames.device, self.precision):
            placed, placement = place_frames(frames.float(), self.input_size, self.resize_mode)
            logits = self.module(normalise(placed, self.mean, self.std, self.channel_order))
            if not isinstance(logits, Tensor) or logits.dim() != 4 or logits.shape[1] != self.num_classes:
                got = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"{self.path}: the TorchScript parser must return [N, {self.num_classes}, h, w] logits, got {got}")
            return logits_to_frame_grid(logits.float(), placement, output_size or frames.shape[-2:])
