"""Numeric precision: one place that turns ``train.precision`` into autocast and loss scaling, for
pre-training, feature extraction and fine-tuning alike.

- ``"fp32"``: no autocast.
- ``"bf16"``: :func:`torch.autocast` to bfloat16 (what ``"auto"`` means on CUDA).
- ``"fp16"``: autocast to float16, with a :class:`torch.amp.GradScaler` (:func:`grad_scaler`).

Under autocast the convolutions and linear layers run in the low-precision type; the numerically
sensitive parts (softmax / log-softmax / KL, part-map averaging, L2 normalisation, similarity
logits, the loss weighting) are computed in float32 by the tasks and the combiner themselves, and
batch-norm statistics are accumulated in float32 by PyTorch's kernels whatever the input type.

Two CPU kernels are avoided (:class:`CPUConv3dGuard`, active inside :func:`autocast` on CPU):

- bf16: oneDNN's bf16 weight-gradient kernel for 3D convolutions (``jit_bf16:avx512_core_bf16``,
  picked on CPUs with AVX512-BF16, e.g. AMD Zen 4 and Intel Cooper Lake or later; oneDNN as bundled
  with torch 2.13.0+cpu) returns garbage (values near 1e37, inf, NaN, different from call to call;
  once a heap corruption) when the kernel is larger than the unpadded input along a dimension: the
  3x1x1 temporal convolution of R(2+1)D's ``layer4`` on the 2-frame map of an 8-frame clip, for
  instance. That, not the arithmetic, is what made a bf16 quickstart on CPU stop with ``loss is
  nan`` at step 3. Its forward pass and input gradient are right.
- fp16: on CPUs without oneDNN float16 support (no AVX512-FP16 / AMX-FP16:
  ``torch.ops.mkldnn._is_mkldnn_fp16_supported()`` is false) PyTorch runs float16 3D convolutions
  in its reference kernels (``slow_conv3d_forward`` and its backward), about 9x the time of float32
  for the quickstart's encoder (measured), which put a 5-minute quickstart at over an hour.

Such a convolution is computed in float32 on the input autocast would have given it (rounded to
the autocast type) and the float32 weights, and its output is rounded to the autocast type: what
flows between layers, and the gradients flowing back into the layers below, keep the low-precision
type and its range; the sums inside the convolution are float32 (as a GPU's fp16 and bf16
convolutions accumulate them too) and so is its weight gradient.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["CPUConv3dGuard", "autocast", "autocast_dtype", "grad_scaler", "kernel_exceeds_input", "resolve_precision"]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bf16 on CUDA (as fast as fp16 there, without loss scaling), fp32 elsewhere (CPU
    autocast is slower than fp32 for 3D convolutions); any other value as it is."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast type of ``precision`` on ``device`` (``None`` for fp32)."""
    return _AUTOCAST_DTYPES.get(resolve_precision(precision, device))


@contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The autocast context of ``precision`` on ``device`` (nothing for fp32), with
    :class:`CPUConv3dGuard` for bf16 and fp16 on CPU (fine-tuning runs backward under it too)."""
    dtype = autocast_dtype(device, precision)
    with ExitStack() as stack:
        if dtype is not None:
            stack.enter_context(torch.autocast(device.type, dtype=dtype))
            if device.type == "cpu":
                stack.enter_context(CPUConv3dGuard(dtype))
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 (bf16 and fp32 gradients do not underflow)."""
    return torch.amp.GradScaler(device.type, enabled=resolve_precision(precision, device) == "fp16")


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


class CPUConv3dGuard(TorchFunctionMode):
    """Runs in float32 the CPU 3D convolutions that autocast to ``dtype`` would send to a wrong or
    a reference kernel (see the module's description).

    A ``conv3d`` on a CPU tensor that would run in ``dtype`` is redirected when
    :meth:`redirects` says so: computed in float32 with autocast off, its output rounded to
    ``dtype`` as autocast would have left it. Every other call is untouched.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.native_fp16 = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())

    def redirects(self, input: torch.Tensor, weight: torch.Tensor, dilation: Any = 1) -> bool:
        """bf16: when the weight gradient will be computed and the kernel is longer than the input
        (:func:`kernel_exceeds_input`); such convolutions sit at the end of a trunk where maps are
        a few cells across, so the cost is small. fp16: always, unless oneDNN has float16
        kernels on this CPU."""
        if input.device.type != "cpu" or _compute_dtype(input) != self.dtype:
            return False
        if self.dtype == torch.bfloat16:
            return torch.is_grad_enabled() and weight.requires_grad and kernel_exceeds_input(input, weight, dilation)
        if self.dtype == torch.float16:
            return not self.native_fp16
        return False

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv3d and len(args) >= 2 and isinstance(args[0], torch.Tensor):
            input, weight = args[0], args[1]
            if self.redirects(input, weight, args[5] if len(args) > 5 else kwargs.get("dilation", 1)):
                bias = args[2] if len(args) > 2 else kwargs.pop("bias", None)
                rest = args[3:]
                with torch.autocast("cpu", enabled=False):
                    x = input.to(self.dtype).float()  # the values autocast would have convolved
                    out = func(x, weight.float(), None if bias is None else bias.float(), *rest, **kwargs)
                return out.to(self.dtype)
        return func(*args, **kwargs)
