"""Tests of the hcframe-backbones plugin: R3D-18, R(2+1)D-18, S3D / S3D-G encoders.

The 33 M-parameter models are only built (parameter counts) or run once on a tiny clip; shapes,
stage splitting, memory formats and FLOP counting use the small width/depth configurations.
"""

import math

import pytest
import torch
from torch import nn

import hcframe
from hcframe import EncoderOutput
from hcframe_backbones import R2Plus1D, R3D, S3D, BasicBlock3d, Conv2Plus1d, FeatureGate, r2plus1d_mid_channels

TINY = {"width": 8, "blocks": [1, 1, 1, 1]}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _deterministic_single_thread():
    # One intra-op thread: with other test processes on the same 2 cores, two OpenMP threads per
    # process spin against each other and run these small convolutions ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# --- published architectures: exact parameter counts ----------------------------------------------
@pytest.mark.parametrize(
    "cls, feature_dim, with_400_classes",
    [
        # Figures of the reference (torchvision) models with their 400-way Kinetics classifiers.
        (R3D, 512, 33_371_472),
        (R2Plus1D, 512, 31_505_325),
        (S3D, 1024, 8_320_048),
    ],
)
def test_published_parameter_counts(cls, feature_dim, with_400_classes):
    encoder = cls()
    assert encoder.feature_dim == feature_dim
    classifier = nn.Linear(encoder.feature_dim, 400)
    assert n_params(encoder) + n_params(classifier) == with_400_classes


def test_encoders_have_no_classifier():
    for encoder in (R3D(**TINY), R2Plus1D(**TINY), S3D(width=8)):
        assert not any(isinstance(m, nn.Linear) for m in encoder.modules())


def test_r2plus1d_middle_widths_follow_the_parameter_matching_formula():
    model = R2Plus1D()

    def expected(i, o):  # independent float evaluation of M = in*out*27 / (9*in + 3*out)
        return math.floor(i * o * 27 / (9 * i + 3 * o))

    assert r2plus1d_mid_channels(64, 64) == 144 == expected(64, 64)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock3d)]
    assert len(blocks) == 8
    for block in blocks:
        block_in = block.conv1[0][0].in_channels
        block_out = block.conv2[0][3].out_channels
        for conv in (block.conv1[0], block.conv2[0]):
            assert isinstance(conv, Conv2Plus1d)
            assert conv[0].out_channels == expected(block_in, block_out)
            assert conv[0].kernel_size == (1, 3, 3) and conv[3].kernel_size == (3, 1, 1)
    stem = model.stages["stem"]
    assert [stem[0].kernel_size, stem[0].out_channels, stem[3].kernel_size] == [(1, 7, 7), 45, (3, 1, 1)]


def test_s3d_gating_adds_one_gate_per_inception_branch_and_after_conv2c():
    plain, gated = S3D(width=16), S3D(width=16, gating=True)
    gates = [m for m in gated.modules() if isinstance(m, FeatureGate)]
    assert len(gates) == 1 + 9 * 4  # Conv_2c + four branches of nine Inception blocks
    extra = sum(g.fc.in_features * g.fc.out_features + g.fc.out_features for g in gates)
    assert n_params(gated) == n_params(plain) + extra
    assert not any(isinstance(m, FeatureGate) for m in plain.modules())


# --- stages and shapes ----------------------------------------------------------------------------
def test_stage_names():
    assert R3D(**TINY).stage_names() == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert R2Plus1D(**TINY).stage_names() == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert S3D(width=8).stage_names() == ["stem", "block2", "block3", "block4", "block5"]


def _down(n: int, times: int) -> int:
    # a stride-2 convolution with "same" padding maps n -> ceil(n / 2)
    for _ in range(times):
        n = -(-n // 2)
    return n


@pytest.mark.parametrize(
    "factory, kwargs, clip, fmap",
    [
        # default strides: stem /2 in space; layer2..4 /2 in time and space
        (R3D, TINY, (2, 3, 8, 32, 32), (2, 64, _down(8, 3), _down(32, 4), _down(32, 4))),
        (R2Plus1D, TINY, (2, 3, 8, 64, 64), (2, 64, 1, 4, 4)),
        (R2Plus1D, dict(TINY, width=4), (1, 3, 7, 40, 40), (1, 32, 1, _down(40, 4), _down(40, 4))),
        # explicit strides keep resolution for tiny clips
        (R2Plus1D, dict(TINY, stem_spatial_stride=1, temporal_strides=[1, 1, 1, 1]), (1, 3, 8, 32, 32), (1, 64, 8, 4, 4)),
        (R3D, dict(TINY, spatial_strides=[1, 1, 2, 2], temporal_strides=[1, 1, 1, 2]), (1, 3, 8, 32, 32), (1, 64, 4, 4, 4)),
        (R2Plus1D, {"width": 8, "blocks": [2, 1, 3, 1], "in_channels": 2}, (1, 2, 8, 32, 32), (1, 64, 1, 2, 2)),
        # S3D: time /2 stem, /2 MaxPool_4a, /2 MaxPool_5a; space /2 stem, 2a, 3a, 4a, 5a
        (S3D, {"width": 8}, (2, 3, 8, 32, 32), (2, 128, 1, 1, 1)),
        (S3D, {"width": 8, "gating": True}, (1, 3, 16, 64, 64), (1, 128, 2, 2, 2)),
        (S3D, {"width": 4, "stem_temporal_stride": 1, "stem_spatial_stride": 1}, (1, 3, 8, 32, 32), (1, 64, 2, 2, 2)),
    ],
)
def test_output_shapes_tiny(factory, kwargs, clip, fmap):
    encoder = factory(**kwargs)
    out = encoder(torch.randn(clip))
    assert isinstance(out, EncoderOutput)
    assert tuple(out.feature_map.shape) == fmap
    assert tuple(out.pooled.shape) == (clip[0], encoder.feature_dim)
    torch.testing.assert_close(out.pooled, out.feature_map.mean(dim=(2, 3, 4)))
    if hasattr(encoder, "total_strides"):
        t, s = encoder.total_strides()
        assert fmap[2:] == (math.ceil(clip[2] / t), math.ceil(clip[3] / s), math.ceil(clip[4] / s))


@pytest.mark.parametrize("factory, fmap", [(R3D, (1, 512, 1, 2, 2)), (R2Plus1D, (1, 512, 1, 2, 2)), (S3D, (1, 1024, 1, 1, 1))])
def test_output_shapes_standard(factory, fmap):
    encoder = factory().eval()
    with torch.no_grad():
        out = encoder(torch.randn(1, 3, 8, 32, 32))
    assert tuple(out.feature_map.shape) == fmap
    assert tuple(out.pooled.shape) == fmap[:2]


@pytest.mark.parametrize("factory, kwargs", [(R3D, TINY), (R2Plus1D, TINY), (S3D, {"width": 8, "gating": True})])
def test_running_stages_one_by_one_equals_forward(factory, kwargs):
    # Branching copies the stages after a split point: composing the pieces must be the model.
    encoder = factory(**kwargs).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        full = encoder(x).feature_map
        y = x
        for name in encoder.stage_names():
            y = encoder.stages[name](y)
        torch.testing.assert_close(y, full, rtol=0, atol=0)
        for split in encoder.stage_names()[1:]:
            trunk = encoder.run_stages(x, stop=split)
            torch.testing.assert_close(encoder.run_stages(trunk, start=split), full, rtol=0, atol=0)


# --- initialisation -----------------------------------------------------------------------------
def test_kaiming_fan_out_init_and_batch_norm_init():
    encoder = R3D(width=32, blocks=[1, 1, 1, 1])
    conv = encoder.stages["layer4"][0].conv1[0]  # 3x3x3, 128 -> 256: 884,736 weights
    fan_out = conv.out_channels * math.prod(conv.kernel_size)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.02)
    for m in encoder.modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_zero_init_residual_zeroes_only_the_last_batch_norm_of_each_block():
    encoder = R2Plus1D(**TINY, zero_init_residual=True).eval()
    last_bns = {id(b.last_bn) for b in encoder.modules() if isinstance(b, BasicBlock3d)}
    assert len(last_bns) == 4
    for m in encoder.modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.all(m.weight == (0 if id(m) in last_bns else 1))
    # then a block without a downsampling shortcut is the identity on non-negative inputs
    block = BasicBlock3d(8, 8, lambda i, o, s, t: nn.Conv3d(i, o, 3, padding=1, bias=False))
    nn.init.zeros_(block.last_bn.weight)
    x = torch.rand(1, 8, 2, 4, 4)
    torch.testing.assert_close(block.eval()(x), x)


# --- registration --------------------------------------------------------------------------------
def test_registered_through_the_entry_point():
    registry = hcframe.get_registry()
    for name in ("r3d_18", "r2plus1d_18", "s3d"):
        record = registry.get("encoder", name)
        assert record.provider == "hcframe-backbones"
    encoder = registry.create("encoder", "r2plus1d_18", width=8, blocks=[1, 1, 1, 1])
    assert isinstance(encoder, R2Plus1D) and isinstance(encoder, hcframe.Encoder)
    assert encoder.feature_dim == 64
    assert isinstance(registry.create("encoder", "s3d", width=4, gating=True), S3D)
    assert registry.get("encoder", "r3d_18").summary.startswith("R3D-18")


# --- argument validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory, kwargs, argument",
    [
        (R3D, {"width": 0}, "width"),
        (R3D, {"width": True}, "width"),
        (R3D, {"width": 8.0}, "width"),
        (R2Plus1D, {"blocks": [2, 2, 2]}, "blocks"),
        (R2Plus1D, {"blocks": [2, 0, 2, 2]}, "blocks"),
        (R2Plus1D, {"blocks": 2}, "blocks"),
        (R2Plus1D, {"in_channels": 0}, "in_channels"),
        (R3D, {"stem_spatial_stride": 3}, "stem_spatial_stride"),
        (R3D, {"spatial_strides": [1, 2, 2, 4]}, "spatial_strides"),
        (R2Plus1D, {"temporal_strides": [1, 2, 2]}, "temporal_strides"),
        (R2Plus1D, {"zero_init_residual": 1}, "zero_init_residual"),
        (S3D, {"width": -4}, "width"),
        (S3D, {"gating": "yes"}, "gating"),
        (S3D, {"stem_temporal_stride": 0}, "stem_temporal_stride"),
        (S3D, {"bn_momentum": 0.0}, "bn_momentum"),
        (S3D, {"bn_momentum": 1.5}, "bn_momentum"),
        (S3D, {"bn_eps": -1e-3}, "bn_eps"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(factory, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{factory.owner}: {argument} must be ") as info:
        factory(**kwargs)
    assert "\n" not in str(info.value)


# --- memory format, training, FLOPs --------------------------------------------------------------------
@pytest.mark.parametrize("factory, kwargs", [(R3D, TINY), (R2Plus1D, TINY), (S3D, {"width": 8, "gating": True})])
def test_channels_last_3d_matches_contiguous(factory, kwargs):
    encoder = factory(**kwargs).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        reference = encoder(x)
        encoder = encoder.to(memory_format=torch.channels_last_3d)
        out = encoder(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out.feature_map, reference.feature_map, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.pooled, reference.pooled, rtol=1e-4, atol=1e-4)
    # and gradients flow in that format
    encoder.train()
    encoder(x.contiguous(memory_format=torch.channels_last_3d)).pooled.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_tiny_r2plus1d_fits_a_small_batch():
    encoder = R2Plus1D(**TINY)
    head = nn.Linear(encoder.feature_dim, 2)
    clips = torch.randn(8, 3, 8, 32, 32)
    labels = torch.tensor([0, 1] * 4)
    opt = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(encoder(clips).pooled), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


class _TupleOutput(nn.Module):
    """fvcore traces with torch.jit, which only accepts tensors and (named) tuples as outputs."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, clips):
        out = self.encoder(clips)
        return out.feature_map, out.pooled


def _conv_macs_by_hooks(model: nn.Module, clip: torch.Tensor) -> int:
    """Independent reference: multiply-accumulates of every Conv3d, from its output size."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        total += output.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    with torch.no_grad():
        model(clip)
    for h in handles:
        h.remove()
    return total


# fvcore traces through torch.jit, which torch 2.13 flags as deprecated.
jit_deprecation = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

HARMLESS_UNCOUNTED = {"aten::add", "aten::add_", "aten::mean", "aten::max_pool3d", "aten::sigmoid", "aten::mul"}


@jit_deprecation
@pytest.mark.parametrize("factory, kwargs", [(R3D, TINY), (R2Plus1D, TINY), (S3D, {"width": 8, "gating": True})])
def test_fvcore_counts_every_convolution(factory, kwargs):
    from fvcore.nn import FlopCountAnalysis

    encoder = factory(**kwargs).eval()
    clip = torch.randn(1, 3, 8, 32, 32)
    analysis = FlopCountAnalysis(_TupleOutput(encoder), clip).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    assert by_op["conv"] == _conv_macs_by_hooks(encoder, clip)
    assert set(analysis.unsupported_ops()) <= HARMLESS_UNCOUNTED


@jit_deprecation
def test_fvcore_counts_the_encoder_directly():
    from fvcore.nn import FlopCountAnalysis

    encoder = R2Plus1D(**TINY).eval()
    clip = torch.randn(1, 3, 8, 32, 32)
    analysis = FlopCountAnalysis(encoder, clip).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert analysis.by_operator()["conv"] == _conv_macs_by_hooks(encoder, clip)


# --- use by the core's multi-task model (task-dependent branches) ---------------------------------
@pytest.mark.parametrize("factory, kwargs, split", [(R2Plus1D, TINY, "layer3"), (S3D, {"width": 8}, "block4")])
def test_split_into_trunk_and_branches_by_the_core_model(factory, kwargs, split):
    from hcframe.engine.model import MultiTaskModel
    from hcframe.heads import SupervisedClassification

    encoder = factory(**kwargs)
    tasks = {"a": SupervisedClassification(num_classes=3), "b": SupervisedClassification(num_classes=3)}
    model = MultiTaskModel(encoder, tasks, split=split)
    assert list(model.trunk.stages) == encoder.stage_names()[: encoder.stage_names().index(split)]
    batch = {"views": [torch.randn(2, 3, 8, 32, 32)], "label": torch.tensor([0, 2])}
    total, outputs, _ = model(batch)
    total.backward()
    assert set(outputs) == {"a", "b"}
    assert all(p.grad is not None for p in model.shared_parameters())
    model.eval()
    with torch.no_grad():
        assert model.encode(batch["views"][0]).shape == (2, 2 * encoder.feature_dim)
