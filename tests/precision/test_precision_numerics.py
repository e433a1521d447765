"""The numerically sensitive parts run in float32 under autocast, by construction.

Each part is called inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` with bfloat16 inputs (what
the layers before it hand over under autocast) and compared with a float64 computation of its
definition on the same inputs: float32 arithmetic agrees to ~1e-6, bfloat16 arithmetic would miss by
~1e-2. Also: the CPU guard around oneDNN's bf16 conv3d weight gradient (see
:mod:`hcframe.engine.precision`) gives float64-exact gradients where that kernel fails, and leaves
every other convolution to autocast, bit for bit; fp16 convolutions on a CPU without float16
kernels sum in float32 and round to float16.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hcframe.components import EncoderOutput, TaskInput
from hcframe.engine.combiner import TaskCombiner
from hcframe.engine.precision import CPUConv3dGuard, autocast, kernel_exceeds_input, resolve_precision
from hcframe.heads import OnlineLinearProbe, SupervisedClassification
from hcframe_parsing.distill import ParsingHead, align_targets, distill_loss

BF16 = torch.bfloat16
CPU = torch.device("cpu")


def autocast_bf16():
    return torch.autocast("cpu", dtype=BF16)


def _close(value: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-5) -> None:
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), reference, rtol=rtol, atol=1e-7)


# --- losses, targets, logits --------------------------------------------------------------------------
def _kl_reference(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over valid cells of KL(q || softmax(z / T)), q = p^(1/T) renormalised (float64)."""
    z = logits.double().movedim(1, -1)[valid] / temperature
    q = target.double().movedim(1, -1)[valid].pow(1.0 / temperature)
    q = q / q.sum(dim=1, keepdim=True)
    log_s = z - torch.logsumexp(z, dim=1, keepdim=True)
    terms = torch.where(q > 0, q * (q.log() - log_s), torch.zeros_like(q))
    return terms.sum(dim=1).mean() * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillation_kl_is_float32_under_autocast(temperature):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 6, 2, 3, 3, generator=g) * 4).to(BF16)
    target = torch.softmax(torch.randn(2, 6, 2, 3, 3, generator=g) * 3, dim=1)
    valid = torch.rand(2, 2, 3, 3, generator=g) > 0.2
    with autocast_bf16():
        loss = distill_loss(logits, target, valid, "kl", temperature)
    _close(loss, _kl_reference(logits, target, valid, temperature))


def test_distillation_cross_entropy_is_float32_under_autocast():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 5, 2, 2, 2, generator=g) * 4).to(BF16)
    target = torch.softmax(torch.randn(3, 5, 2, 2, 2, generator=g), dim=1)
    valid = torch.ones(3, 2, 2, 2, dtype=torch.bool)
    with autocast_bf16():
        loss = distill_loss(logits, target, valid, "ce")
    z = logits.double().movedim(1, -1).reshape(-1, 5)
    labels = target.movedim(1, -1).reshape(-1, 5).argmax(dim=1)
    reference = (torch.logsumexp(z, dim=1) - z[torch.arange(len(z)), labels]).mean()
    _close(loss, reference)


def test_part_maps_are_area_averaged_in_float32():
    """float16 one-hot maps (as the data pipeline delivers them) onto a 2x2x2 grid: each cell is the
    mean of its 2x4x4 block of pixels, renormalised over the pixels that have a target."""
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(7, (2, 4, 8, 8), generator=g)
    parts = F.one_hot(labels, 7).permute(0, 4, 1, 2, 3).to(torch.float16)
    parts[:, :, :, :3, :] = 0  # pixels without a target (outside the image after a crop)
    with autocast_bf16():
        dist, valid = align_targets(parts, (2, 2, 2))
    blocks = parts.double().reshape(2, 7, 2, 2, 2, 4, 2, 4).mean(dim=(3, 5, 7))
    mass = blocks.sum(dim=1, keepdim=True)
    assert torch.equal(valid, mass[:, 0] > 1e-3)
    _close(dist[valid.unsqueeze(1).expand_as(dist)], (blocks / mass)[valid.unsqueeze(1).expand_as(dist)], rtol=1e-6)


@pytest.mark.parametrize("upsample", [1, 2])
def test_parsing_head_returns_float32_logits_under_autocast(upsample):
    head = ParsingHead(8, 4, 5, upsample).train()
    with autocast_bf16():
        logits = head(torch.randn(2, 8, 2, 3, 3).to(BF16))
    assert logits.dtype == torch.float32 and logits.shape == (2, 5, 2, 3 * upsample, 3 * upsample)


@pytest.mark.parametrize("task_class", [SupervisedClassification, OnlineLinearProbe])
def test_classification_losses_are_float32_under_autocast(task_class):
    task = task_class(num_classes=4)
    task.setup(nn.Identity(), 6)
    pooled = (torch.randn(5, 6) * 3).to(BF16)
    labels = torch.tensor([0, 1, 2, 3, 0])
    inp = TaskInput({"label": labels}, [EncoderOutput(pooled, pooled)], nn.Identity(), 0, 1)
    with autocast_bf16():
        loss = task(inp).losses["ce"]
        logits = task.head(pooled)  # the bfloat16 logits the loss was computed from
    z = logits.double()
    _close(loss, (torch.logsumexp(z, dim=1) - z[torch.arange(5), labels]).mean())


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_loss_combiner_is_float32_under_autocast(weighting):
    combiner = TaskCombiner(["a", "b"], {"a": 1.0, "b": 0.3}, weighting)
    losses = {"a": torch.tensor(2.7183, dtype=BF16), "b": torch.tensor(0.0123, dtype=BF16)}
    with autocast_bf16():
        total, parts = combiner(losses)
    la, lb = float(losses["a"]), float(losses["b"])
    if weighting == "fixed":
        reference = la + 0.3 * lb
    else:  # sum_i exp(-s_i) L_i + s_i with s_i = -log(w_i) at the start
        reference = la + (0.3 * lb - math.log(0.3))
    _close(total, torch.tensor(reference, dtype=torch.float64))


@pytest.mark.parametrize("norm, shape", [(nn.BatchNorm3d, (8, 4, 2, 3, 3)), (nn.BatchNorm1d, (32, 4))])
def test_batch_norm_statistics_are_float32_under_autocast(norm, shape):
    """hcframe relies on PyTorch's batch norm accumulating bfloat16 inputs in float32: with a mean
    of 30 and a spread of 0.05, statistics summed in bfloat16 would be off by far more than 1e-5."""
    layer = norm(4, momentum=1.0).train()  # momentum 1: the running stats are this batch's
    x = (torch.randn(shape) * 0.05 + 30.0).to(BF16)
    with autocast_bf16():
        layer(x)
    dims = [0, *range(2, x.dim())]
    assert layer.running_mean.dtype == torch.float32
    _close(layer.running_mean, x.double().mean(dims), rtol=1e-6)
    _close(layer.running_var, x.double().var(dims, unbiased=True), rtol=1e-4)


# --- the CPU bf16 conv3d guard ------------------------------------------------------------------------
def test_resolve_precision():
    assert resolve_precision("auto", torch.device("cuda")) == "bf16" and resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp16", CPU) == "fp16"


def test_kernel_exceeds_input():
    x = torch.empty(1, 1, 2, 4, 4)
    assert kernel_exceeds_input(x, torch.empty(1, 1, 3, 1, 1))  # 3 taps over 2 frames
    assert not kernel_exceeds_input(x, torch.empty(1, 1, 1, 3, 3))
    assert kernel_exceeds_input(x, torch.empty(1, 1, 1, 3, 3), dilation=(1, 2, 2))  # dilated: 5 > 4
    assert kernel_exceeds_input(torch.empty(1, 1, 4, 1, 4), torch.empty(1, 1, 1, 3, 1))


def _output_gradient(shape) -> torch.Tensor:
    """A gradient for a convolution's output, in bfloat16 as the layers above send it."""
    return torch.linspace(-1, 1, math.prod(shape)).view(shape).to(BF16)


def _conv_weight_gradient(x, weight, padding, stride, context):
    w = weight.clone().requires_grad_(True)
    with context():
        y = F.conv3d(x, w, None, stride, padding)
    y.backward(_output_gradient(y.shape).to(y.dtype))
    return y, w.grad


@pytest.mark.parametrize(
    "input_shape, kernel, padding, stride",
    [
        ((4, 16, 2, 4, 4), (3, 1, 1), (1, 0, 0), 1),  # R(2+1)D's temporal conv on the quickstart's layer4
        ((4, 16, 2, 4, 4), (3, 1, 1), (1, 0, 0), (2, 1, 1)),  # the strided first conv of a stage
        ((4, 8, 1, 2, 2), (3, 3, 3), (1, 1, 1), 1),  # R3D / C3D on a 1-frame map
    ],
)
def test_guarded_bf16_conv3d_weight_gradient_matches_float64(input_shape, kernel, padding, stride):
    """Five calls (oneDNN's failure came and went from call to call): the guarded convolution runs
    in float32, so its weight gradient matches float64 (same bfloat16 input and output gradient)
    to float32 rounding."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(input_shape, generator=g).to(BF16)  # what the layer before hands over
    weight = torch.randn(16, input_shape[1], *kernel, generator=g) * 0.1
    w64 = weight.double().requires_grad_(True)
    y64 = F.conv3d(x.double(), w64, None, stride, padding)
    y64.backward(_output_gradient(y64.shape).double())
    for _ in range(5):
        y, grad = _conv_weight_gradient(x, weight, padding, stride, lambda: autocast(CPU, "bf16"))
        assert y.dtype == BF16  # what autocast would have returned
        torch.testing.assert_close(grad.double(), w64.grad, rtol=1e-5, atol=1e-6 * float(w64.grad.abs().max()))


def test_guard_leaves_other_convolutions_to_autocast():
    """A kernel that fits its input: the same bfloat16 result and gradient as plain autocast."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 8, 4, 6, 6, generator=g)
    weight = torch.randn(8, 8, 3, 3, 3, generator=g) * 0.1
    plain = _conv_weight_gradient(x, weight, 1, 1, autocast_bf16)
    guarded = _conv_weight_gradient(x, weight, 1, 1, lambda: autocast(CPU, "bf16"))
    assert torch.equal(plain[0], guarded[0]) and torch.equal(plain[1], guarded[1])
    # A kernel longer than its input is redirected when its weight gradient will be computed, and
    # only then (evaluation runs oneDNN's forward, which is right).
    short = x[:, :, :2]
    with torch.no_grad(), autocast_bf16():
        bf16_kernel = F.conv3d(short, weight, None, 1, 1)
    with torch.no_grad(), autocast(CPU, "bf16"):
        assert torch.equal(F.conv3d(short, weight.clone().requires_grad_(True), None, 1, 1), bf16_kernel)
    with autocast(CPU, "bf16"):
        redirected = F.conv3d(short, weight.clone().requires_grad_(True), None, 1, 1)
    assert redirected.dtype == BF16 and not torch.equal(redirected.detach(), bf16_kernel)


def test_guard_is_active_for_bf16_and_fp16_on_cpu():
    def guard(precision):
        with autocast(CPU, precision):
            mode = torch.overrides._get_current_function_mode()
            return mode.dtype if isinstance(mode, CPUConv3dGuard) else None

    assert guard("bf16") == BF16 and guard("fp16") == torch.float16
    assert guard("fp32") is None and guard("auto") is None


def test_fp16_conv3d_on_cpu_sums_in_float32_without_the_reference_kernel():
    """fp16 autocast on a CPU without oneDNN float16: the convolution of the float16-rounded input
    with the float32 weights, summed in float32 and rounded to float16 (float64 reference), with
    its weight gradient in float32 and its input gradient back in float16, and no call to PyTorch's
    float16 reference kernel (slow_conv3d), which takes ~9x the time of float32."""
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        pytest.skip("this CPU has oneDNN float16 kernels: fp16 convolutions are left to autocast")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 3, 5, 5, generator=g).requires_grad_(True)  # the first layer: float32 clips
    weight = (torch.randn(6, 4, 3, 3, 3, generator=g) * 0.2).requires_grad_(True)
    bias = torch.randn(6, generator=g).requires_grad_(True)
    with torch.profiler.profile() as prof, autocast(CPU, "fp16"):
        y = F.conv3d(x, weight, bias, 1, 1)
    grad_out = torch.linspace(-1, 1, y.numel()).view(y.shape).to(torch.float16)
    y.backward(grad_out)
    assert "aten::slow_conv3d_forward" not in {e.key for e in prof.key_averages()}

    x64 = x.detach().to(torch.float16).double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    y64 = F.conv3d(x64, w64, bias.detach().double(), 1, 1)
    y64.backward(grad_out.double())
    assert y.dtype == torch.float16
    # float32 sums differ from float64 ones by ~1e-7 relative: at most one float16 step after rounding
    torch.testing.assert_close(y.double(), y64.to(torch.float16).double(), rtol=2**-10, atol=2**-14)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-6 * float(w64.grad.abs().max()))
    torch.testing.assert_close(x.grad.double(), x64.grad.to(torch.float16).double(), rtol=2**-10, atol=2**-14)
