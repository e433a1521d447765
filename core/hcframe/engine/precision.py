"""The arithmetic of a training step: ``train.precision`` and the autocast context it stands for.

- ``"fp32"``: no autocast.
- ``"bf16"``: :func:`torch.autocast` to bfloat16 (what ``"auto"`` means on CUDA).
- ``"fp16"``: autocast to float16; the trainer pairs it with a :class:`torch.amp.GradScaler`.

Under autocast the convolutions and linear layers run in the low-precision type; the numerically
sensitive parts (softmax / log-softmax / KL, part-map averaging, L2 normalisation, similarity
logits, the loss weighting) are computed in float32 by the tasks themselves, and batch-norm
statistics are accumulated in float32 by PyTorch's kernels whatever the input type.

One CPU kernel is avoided (:class:`CPUConv3dWeightGradGuard`): oneDNN's bf16 weight-gradient kernel
for 3D convolutions (``jit_bf16:avx512_core_bf16``, picked on CPUs with AVX512-BF16, e.g. AMD Zen 4
and Intel Cooper Lake or later; oneDNN as bundled with torch 2.13.0+cpu) returns garbage (values
near 1e37, inf, NaN, different from call to call; once a heap corruption) when the kernel is larger
than the unpadded input along a dimension: the 3x1x1 temporal convolution of R(2+1)D's ``layer4`` on
the 2-frame map of an 8-frame clip, for instance. That, not the arithmetic, is what made a bf16
quickstart on CPU stop with ``loss is nan`` at step 3. Its forward pass and input gradient are
right, and fp32 and fp16 use other kernels.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["PRECISIONS", "CPUConv3dWeightGradGuard", "autocast_dtype", "kernel_exceeds_input", "resolve_precision", "training_autocast"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device_type: str) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA, ``"fp32"`` elsewhere; other names unchanged (checked)."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of auto, {', '.join(PRECISIONS)}")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast type of a resolved precision (``None`` for fp32)."""
    return _DTYPES.get(precision)


def kernel_exceeds_input(input: torch.Tensor, weight: torch.Tensor, dilation: Any = 1) -> bool:
    """Whether the (dilated) kernel is longer than the unpadded input along some spatial dimension."""
    dims = weight.dim() - 2
    dilations = [int(dilation)] * dims if isinstance(dilation, int) else [int(d) for d in dilation]
    if len(dilations) == 1:
        dilations = dilations * dims
    sizes = input.shape[-dims:]
    return any((k - 1) * d + 1 > n for k, d, n in zip(weight.shape[2:], dilations, sizes))


def _compute_dtype(input: torch.Tensor) -> torch.dtype:
    """The type a convolution of ``input`` runs in here (autocast's, when it is on)."""
    device = input.device.type
    if torch.is_autocast_enabled(device) and input.is_floating_point():
        return torch.get_autocast_dtype(device)
    return input.dtype


class CPUConv3dWeightGradGuard(TorchFunctionMode):
    """Runs in float32 the CPU bf16 3D convolutions whose weight gradient oneDNN gets wrong.

    Active inside :func:`training_autocast` for bf16 on CPU. A ``conv3d`` on a CPU tensor that
    would run in bfloat16, whose weight needs a gradient and whose kernel is longer than its input
    along a dimension (:func:`kernel_exceeds_input`) is computed in float32 with autocast off, and
    its output cast to bfloat16 as autocast would have left it; every other call is untouched.
    Such convolutions sit at the end of a trunk where maps are a few cells across, so the cost is
    small.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv3d and len(args) >= 2:
            input, weight = args[0], args[1]
            if (
                isinstance(input, torch.Tensor)
                and input.device.type == "cpu"
                and torch.is_grad_enabled()
                and weight.requires_grad
                and _compute_dtype(input) == torch.bfloat16
                and kernel_exceeds_input(input, weight, args[5] if len(args) > 5 else kwargs.get("dilation", 1))
            ):
                bias = args[2] if len(args) > 2 else kwargs.pop("bias", None)
                rest = args[3:]
                with torch.autocast("cpu", enabled=False):
                    out = func(input.float(), weight.float(), None if bias is None else bias.float(), *rest, **kwargs)
                return out.to(torch.bfloat16)
        return func(*args, **kwargs)


@contextmanager
def training_autocast(device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device_type`` for a training forward (nothing for ``None``),
    with :class:`CPUConv3dWeightGradGuard` for bf16 on CPU."""
    with ExitStack() as stack:
        if dtype is not None:
            stack.enter_context(torch.autocast(device_type, dtype=dtype))
            if device_type == "cpu" and dtype == torch.bfloat16:
                stack.enter_context(CPUConv3dWeightGradGuard())
        yield
