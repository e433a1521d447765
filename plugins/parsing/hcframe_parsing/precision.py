"""The arithmetic a teacher runs in, chosen by the teacher's ``precision`` option.

- ``"fp32"`` (default): full float32, whatever surrounds the call. Any enclosing autocast (a
  training step under bf16 autocast runs online targets) is switched off for the teacher, and on
  CUDA the convolutions and matmuls use IEEE float32 instead of TensorFloat-32 (PyTorch lets cuDNN
  convolutions use TF32 by default, which keeps 10 mantissa bits). SCHP is a float32 model; this
  is the mode whose outputs match it.
- ``"bf16"``: autocast to bfloat16 on the frames' device. Meant for CUDA, where it is faster; it
  changes the outputs (see the plugin README for the measured argmax agreement with fp32). On a CPU
  it runs too (CPU autocast), usually slower than fp32 unless the CPU has bf16 instructions.

The precision changes a teacher's outputs, so it is part of the teacher's ``identity()`` and hence
of a teacher cache's identity: a cache written at one precision is refused for the other.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["TEACHER_PRECISIONS", "check_precision", "teacher_precision"]

TEACHER_PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in TEACHER_PRECISIONS:
        raise ValueError(f"teacher.precision {precision!r} is not one of {', '.join(TEACHER_PRECISIONS)}")
    return precision


@contextmanager
def ieee_fp32_on_cuda() -> Iterator[None]:
    """cuDNN convolutions and CUDA matmuls in IEEE float32 (no TF32) inside the block; the
    previous settings are restored on exit."""
    conv = torch.backends.cudnn.conv
    matmul = torch.backends.cuda.matmul
    previous = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision = "ieee"
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = previous


@contextmanager
def teacher_precision(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed teacher computation on ``device`` in ``precision`` (see the module docstring)."""
    check_precision(precision)
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    with torch.autocast(device.type, enabled=False):
        if device.type == "cuda":
            with ieee_fp32_on_cuda():
                yield
        else:
            yield
