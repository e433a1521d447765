"""Numeric precision: one place that turns ``train.precision`` into autocast and loss scaling, for
pre-training, feature extraction and fine-tuning alike."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

__all__ = ["autocast", "grad_scaler", "resolve_precision"]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bf16 on CUDA (as fast as fp16 there, without loss scaling), fp32 elsewhere (CPU
    autocast is slower than fp32 for 3D convolutions); any other value as it is."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> Any:
    """The autocast context of ``precision`` on ``device`` (a no-op context for fp32)."""
    dtype = _AUTOCAST_DTYPES.get(resolve_precision(precision, device))
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 (bf16 and fp32 gradients do not underflow)."""
    return torch.amp.GradScaler(device.type, enabled=resolve_precision(precision, device) == "fp16")
