"""The SCHP teacher computes what SCHP computes: InPlace-ABN norm layers (affine scale
``|weight| + eps``, eps 1e-5, per-layer activation as SCHP builds them), checked against a float64
re-implementation written here from the InPlace-ABN inference formula; invariance to the sign of
the stored norm weights; and the teacher precision option (fp32 default, bf16 opt-in, part of the
cache identity).

The reference formula (mapillary/inplace_abn forward kernels, CPU and CUDA, in SCHP's bundled copy):
``y = (x - running_mean) / sqrt(running_var + eps) * (|weight| + eps) + bias``, then identity or
leaky ReLU with slope 0.01.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hcframe
from hcframe_parsing.cache import cache_teacher, open_teacher_cache
from hcframe_parsing.precision import ieee_fp32_on_cuda, teacher_precision
from hcframe_parsing.schp import ABNStandIn, AugmentCE2P, Bottleneck, SCHPTeacher, conv_norm
from hcframe_parsing.torchscript_teacher import TorchScriptTeacher
from hcframe_video.partmaps import PartMapError
from parsing_helpers import FolderVideos, random_schp_state, save_public_layout

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

EPS = 1e-5
SLOPE = 0.01


# --- the float64 reference, from the formula --------------------------------------------------------
def inplace_abn_f64(x: np.ndarray, weight, bias, mean, var, activation: str) -> np.ndarray:
    """InPlace-ABN in inference, float64 numpy, channels on axis 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    gamma = np.abs(np.asarray(weight, np.float64)) + EPS
    y = (x - np.asarray(mean, np.float64).reshape(shape)) / np.sqrt(np.asarray(var, np.float64).reshape(shape) + EPS)
    y = y * gamma.reshape(shape) + np.asarray(bias, np.float64).reshape(shape)
    if activation == "leaky_relu":
        y = np.where(y >= 0, y, SLOPE * y)
    return y


def norm_tensors(norm: ABNStandIn) -> tuple[np.ndarray, ...]:
    return tuple(t.detach().double().numpy() for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var))


def conv_f64(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    out = F.conv2d(
        torch.from_numpy(x), conv.weight.detach().double(), None if conv.bias is None else conv.bias.detach().double(),
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
    )
    return out.numpy()


def randomise_norm(norm: ABNStandIn, g: torch.Generator) -> None:
    """Mixed-sign weights (one exactly 0, where only the eps term scales), biases, statistics."""
    c = norm.weight.numel()
    with torch.no_grad():
        w = torch.rand(c, generator=g) * 1.5 + 0.1
        w[torch.rand(c, generator=g) < 0.4] *= -1
        w[0] = 0.0
        norm.weight.copy_(w)
        norm.bias.copy_(torch.randn(c, generator=g) * 0.3)
        norm.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
        norm.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.05)


# --- norm layers against the formula -----------------------------------------------------------------
@pytest.mark.parametrize("activation", ["none", "leaky_relu"])
def test_norm_layer_equals_float64_inplace_abn_formula(activation):
    g = torch.Generator().manual_seed(0)
    norm = ABNStandIn(12, activation=activation)
    randomise_norm(norm, g)
    with torch.no_grad():
        norm.bias[0] = 0.0  # channel 0: weight 0, bias 0 -> the output is eps * normalised input
    x = torch.randn(3, 12, 5, 7, generator=g) * 2
    with torch.no_grad():
        out = norm(x).double().numpy()
    ref = inplace_abn_f64(x.double().numpy(), *norm_tensors(norm), activation)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # The zero-weight channel is scaled by eps (not 0, as plain batch norm would): its values are
    # ~1e-5 and match the formula to float32 precision.
    assert np.abs(out[:, 0]).max() > 1e-6
    np.testing.assert_allclose(out[:, 0], ref[:, 0], rtol=1e-5, atol=1e-12)
    # Leaky slope only where the layer has an activation.
    assert (out < 0).any()


@pytest.mark.parametrize("stride,dilation", [(2, 1), (1, 2)])
def test_bottleneck_block_equals_float64_reference(stride, dilation):
    g = torch.Generator().manual_seed(stride * 10 + dilation)
    block = Bottleneck(16, 8, stride=stride, dilation=dilation).eval()
    with torch.no_grad():
        for conv in (block.conv1, block.conv2, block.conv3, block.downsample[0]):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
    for norm in (block.bn1, block.bn2, block.bn3, block.downsample[1]):
        randomise_norm(norm, g)
    x = torch.randn(2, 16, 9, 11, generator=g)
    with torch.no_grad():
        out = block(x).double().numpy()

    # SCHP's Bottleneck: conv-norm(identity)-ReLU twice, conv-norm(identity), plus the
    # conv-norm(identity) shortcut, then ReLU.
    def relu(a):
        return np.maximum(a, 0.0)

    x64 = x.double().numpy()
    h = relu(inplace_abn_f64(conv_f64(x64, block.conv1), *norm_tensors(block.bn1), "none"))
    h = relu(inplace_abn_f64(conv_f64(h, block.conv2), *norm_tensors(block.bn2), "none"))
    h = inplace_abn_f64(conv_f64(h, block.conv3), *norm_tensors(block.bn3), "none")
    shortcut = inplace_abn_f64(conv_f64(x64, block.downsample[0]), *norm_tensors(block.downsample[1]), "none")
    ref = relu(h + shortcut)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_head_conv_norm_block_equals_float64_reference():
    g = torch.Generator().manual_seed(7)
    block = conv_norm(24, 10).eval()
    with torch.no_grad():
        block[0].weight.copy_(torch.randn(block[0].weight.shape, generator=g) * 0.3)
    randomise_norm(block[1], g)
    x = torch.randn(2, 24, 6, 6, generator=g)
    with torch.no_grad():
        out = block(x).double().numpy()
    ref = inplace_abn_f64(conv_f64(x.double().numpy(), block[0]), *norm_tensors(block[1]), "leaky_relu")
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


# SCHP (networks/AugmentCE2P.py): BatchNorm2d = InPlaceABNSync(activation='none') in the stem and
# every bottleneck (bn1..3, downsample.1); every other norm is a default InPlaceABNSync (leaky ReLU
# 0.01): PSP stages and bottleneck, edge conv1..3, decoder conv1, conv2, conv3 (two), fusion.
SCHP_HEAD_NORMS = {
    *(f"context_encoding.stages.{i}.2" for i in range(4)),
    "context_encoding.bottleneck.1",
    "edge.conv1.1", "edge.conv2.1", "edge.conv3.1",
    "decoder.conv1.1", "decoder.conv2.1", "decoder.conv3.1", "decoder.conv3.3",
    "fushion.1",
}
BACKBONE_NORM = re.compile(r"^(bn[123]|layer[1-4]\.\d+\.(bn[123]|downsample\.1))$")


def test_every_norm_layer_has_schps_activation_and_eps():
    with torch.device("meta"):
        model = AugmentCE2P(20)
    norms = {name: m for name, m in model.named_modules() if isinstance(m, ABNStandIn)}
    assert len(norms) == 119
    head = {name for name, m in norms.items() if m.activation == "leaky_relu"}
    assert head == SCHP_HEAD_NORMS
    for name, m in norms.items():
        assert m.eps == EPS, name
        if name in SCHP_HEAD_NORMS:
            assert m.slope == SLOPE, name
        else:
            assert m.activation == "none" and BACKBONE_NORM.match(name), name


# --- sign invariance on a whole checkpoint ----------------------------------------------------------
def norm_weight_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k[: -len("running_var")] + "weight" for k in state if k.endswith("running_var")]


@pytest.fixture(scope="module")
def lip_state() -> dict[str, torch.Tensor]:
    return random_schp_state("lip", seed=3)


def _small_teacher(teacher: SCHPTeacher) -> SCHPTeacher:
    teacher.input_size = (64, 64)  # the same network on a small input keeps the forward cheap
    return teacher


def test_negating_every_norm_weight_of_a_checkpoint_leaves_the_output_unchanged(tmp_path, lip_state):
    keys = norm_weight_keys(lip_state)
    assert len(keys) == 119
    negated = dict(lip_state)
    for key in keys:
        negated[key] = -lip_state[key]
    registry = hcframe.get_registry()
    original = _small_teacher(registry.create("teacher", "schp", checkpoint=str(save_public_layout(lip_state, tmp_path / "a.pth"))))
    flipped = _small_teacher(registry.create("teacher", "schp", checkpoint=str(save_public_layout(negated, tmp_path / "b.pth"))))
    # The signs were loaded as stored ...
    assert (flipped.model.state_dict()["layer3.7.bn2.weight"] < 0).all()
    frames = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = original(frames)
        b = flipped(frames)
    # ... and the outputs are the same: |w| is exact, so bit for bit.
    assert torch.equal(a, b)
    # The norm weights do matter (the check above is not vacuous): halving their magnitude changes the output.
    halved = {k: (v * 0.5 if k in set(keys) else v) for k, v in lip_state.items()}
    with torch.no_grad():
        c = _small_teacher(SCHPTeacher.from_state_dict(halved, dataset="lip"))(frames)
    assert (c - a).abs().max() > 1e-3 * a.abs().max()


# --- precision --------------------------------------------------------------------------------------
def test_fp32_is_the_default_and_holds_inside_an_enclosing_autocast(lip_state):
    teacher = _small_teacher(SCHPTeacher.from_state_dict(lip_state, dataset="lip"))
    assert teacher.precision == "fp32" and teacher.identity()["precision"] == "fp32"
    frames = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = teacher(frames)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as in a training step under bf16
            inside = teacher(frames)
            logits, feats = teacher.forward_with_features(frames, feature_size=(3, 4))
    assert inside.dtype == torch.float32 and torch.equal(plain, inside)
    assert torch.equal(logits, plain) and feats.dtype == torch.float32

    low = _small_teacher(SCHPTeacher.from_state_dict(lip_state, dataset="lip", precision="bf16"))
    assert low.identity()["precision"] == "bf16" and low.identity_key() != teacher.identity_key()
    with torch.no_grad():
        reduced = low(frames)
    # bf16 is really used (outputs differ) and still close: float32 logits, same parse almost everywhere.
    assert reduced.dtype == torch.float32 and not torch.equal(reduced, plain)
    assert (reduced.argmax(1) == plain.argmax(1)).float().mean() > 0.9


def test_bad_precision_is_refused(lip_state, tiny_parser_file):
    with pytest.raises(ValueError, match="teacher.precision 'fp16' is not one of fp32, bf16"):
        SCHPTeacher.from_state_dict(lip_state, dataset="lip", precision="fp16")
    with pytest.raises(ValueError, match="teacher.precision 'fp16' is not one of fp32, bf16"):
        TorchScriptTeacher(str(tiny_parser_file()), ["a", "b", "c", "d"], [16, 24], precision="fp16")


def test_cache_written_at_one_precision_is_refused_at_the_other(tmp_path, video_folder, tiny_parser_file):
    path = str(tiny_parser_file())
    labels = ["bg", "head", "body", "legs"]
    low = TorchScriptTeacher(path, labels, [16, 24], precision="bf16")
    full = TorchScriptTeacher(path, labels, [16, 24])
    dataset = FolderVideos(str(video_folder))
    cache_teacher(low, dataset, tmp_path / "c", resolution=(12, 16), progress=False)
    assert open_teacher_cache(tmp_path / "c", low).identity["teacher"]["precision"] == "bf16"
    with pytest.raises(PartMapError, match=r'stale.*teacher.precision: "bf16" -> "fp32"'):
        open_teacher_cache(tmp_path / "c", full)
    with pytest.raises(PartMapError, match=r'cannot resume teacher cache .*teacher.precision: "bf16" -> "fp32"'):
        cache_teacher(full, dataset, tmp_path / "c", resolution=(12, 16), progress=False)


def test_ieee_fp32_block_restores_the_tf32_settings():
    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    try:
        conv.fp32_precision = "tf32"
        with ieee_fp32_on_cuda():
            assert conv.fp32_precision == "ieee" and torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert conv.fp32_precision == "tf32"
        with teacher_precision(torch.device("cpu"), "fp32"):  # nothing to change off CUDA
            assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = before


@pytest.mark.gpu
def test_cuda_fp32_matches_cpu_and_bf16_agreement_is_measured(lip_state):
    """On CUDA: fp32 (TF32 off) agrees with the CPU; bf16's argmax agreement with fp32 is printed
    (run with ``-s``) for the README, at the real LIP input size."""
    frames = torch.rand(4, 3, 240, 320, generator=torch.Generator().manual_seed(2))
    cpu = SCHPTeacher.from_state_dict(lip_state, dataset="lip")
    with torch.no_grad():
        ref = cpu(frames)
        full = SCHPTeacher.from_state_dict(lip_state, dataset="lip").cuda()(frames.cuda()).cpu()
        low = SCHPTeacher.from_state_dict(lip_state, dataset="lip", precision="bf16").cuda()(frames.cuda()).cpu()
    rel = ((full - ref).abs().max() / ref.abs().max()).item()
    agree_fp32 = (full.argmax(1) == ref.argmax(1)).float().mean().item()
    agree_bf16 = (low.argmax(1) == full.argmax(1)).float().mean().item()
    print(f"\nCUDA fp32 vs CPU fp32: max rel diff {rel:.2e}, argmax agreement {agree_fp32:.4%}; "
          f"CUDA bf16 vs CUDA fp32: argmax agreement {agree_bf16:.4%} (random weights, {torch.cuda.get_device_name()})")
    assert rel < 1e-3 and agree_fp32 > 0.999
    assert agree_bf16 > 0.9
