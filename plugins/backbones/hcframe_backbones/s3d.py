"""S3D and S3D-G (Xie et al., "Rethinking Spatiotemporal Feature Learning: Speed-Accuracy
Trade-offs in Video Classification", ECCV 2018), as hcframe encoders.

S3D is Inception-v1 (I3D's layout) with every 3x3x3 convolution made separable: 1x3x3 spatial,
then 3x1x1 temporal, each followed by batch norm and ReLU. S3D-G adds feature gating
(``y = sigmoid(W mean(x) + b) * x``, a learned per-channel gate from the clip's global context)
after the ``Conv_2c`` separable convolution and on each branch of every Inception block.

The default S3D has 7,910,048 parameters; with a 400-way classifier on its 1024-d features,
8,320,048, the figure of the reference implementation. ``width`` rescales every channel count by
``width / 64`` (64 is the published stem width) for tests and CPU quickstarts.

Pooling is torchvision's S3D head's: a 2x7x7 average pool with stride 1 (the window of a 16x224x224
clip's feature map), then the mean of its windows. For 16x224x224 clips that is the global mean;
for longer or larger clips, positions near the border count less (at 32 frames the four time steps
weigh 1/6, 1/3, 1/3, 1/6). A kernel larger than the feature map is clamped to it, so smaller clips
(where torchvision's S3D refuses to run) get the global mean. The module layout is torchvision's
(:class:`~hcframe_backbones.torchvision_layout.TorchvisionS3DLayout` maps the keys).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcframe import Encoder, StateDictLayout

from hcframe_backbones.layers import (
    ConvBNReLU3d,
    check_bool,
    check_int_choice,
    check_int_list,
    check_positive_float,
    check_positive_int,
    init_video_weights,
    scale_channels,
)
from hcframe_backbones.torchvision_layout import TorchvisionS3DLayout

__all__ = ["FeatureGate", "INCEPTION_CHANNELS", "S3D", "SeparableConv3d", "SepInceptionBlock3d", "windowed_mean_pool"]

# Published Inception block widths, per block: (branch0 1x1, branch1 1x1, branch1 separable 3x3,
# branch2 1x1, branch2 separable 3x3, branch3 pool-projection 1x1). Input widths follow from the
# previous block's output (the sum of branch0, branch1, branch2 and branch3 outputs).
INCEPTION_CHANNELS: dict[str, list[tuple[int, int, int, int, int, int]]] = {
    "block3": [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)],  # Mixed_3b, 3c -> 480
    "block4": [
        (192, 96, 208, 16, 48, 64),  # Mixed_4b
        (160, 112, 224, 24, 64, 64),  # Mixed_4c
        (128, 128, 256, 24, 64, 64),  # Mixed_4d
        (112, 144, 288, 32, 64, 64),  # Mixed_4e
        (256, 160, 320, 32, 128, 128),  # Mixed_4f -> 832
    ],
    "block5": [(256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)],  # Mixed_5b, 5c -> 1024
}
STEM_CHANNELS = 64  # Conv_1a and Conv_2b
CONV_2C_CHANNELS = 192


def windowed_mean_pool(feature_map: Tensor, kernel: tuple[int, int, int]) -> Tensor:
    """``[B, D, t, h, w] -> [B, D]``: average pool with ``kernel`` (clamped to the map) and stride
    1, then the mean over the windows. A kernel covering the map is the global mean."""
    size = tuple(feature_map.shape[2:])
    clamped = tuple(min(k, n) for k, n in zip(kernel, size))
    if clamped != size:  # several windows: border positions are in fewer of them
        feature_map = F.avg_pool3d(feature_map, clamped, stride=1)
    return feature_map.mean(dim=(2, 3, 4))


class FeatureGate(nn.Module):
    """S3D-G feature gating: scale each channel by a sigmoid of a linear map of the global mean.

    The mean over time and space is the context; ``channels x channels`` weights plus a bias.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
        return x * gate[:, :, None, None, None]


class SeparableConv3d(nn.Sequential):
    """A ``k x k x k`` convolution made separable: ``1 x k x k`` (in -> out) then ``k x 1 x 1``
    (out -> out), each with batch norm and ReLU; ``stride`` applies to both factors' own axes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        spatial_stride: int = 1,
        temporal_stride: int = 1,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
    ) -> None:
        pad = kernel_size // 2
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        super().__init__(
            ConvBNReLU3d(in_channels, out_channels, (1, kernel_size, kernel_size), (1, spatial_stride, spatial_stride), (0, pad, pad), **bn),
            ConvBNReLU3d(out_channels, out_channels, (kernel_size, 1, 1), (temporal_stride, 1, 1), (pad, 0, 0), **bn),
        )


class SepInceptionBlock3d(nn.Module):
    """An Inception block with separable 3x3x3 convolutions; its four branches are concatenated.

    Branches: 1x1x1; 1x1x1 -> separable 3x3x3; 1x1x1 -> separable 3x3x3; 3x3x3 max-pool -> 1x1x1.
    ``channels`` is ``(b0, b1_mid, b1, b2_mid, b2, b3)``; the output width is ``b0 + b1 + b2 + b3``.
    With ``gating`` each branch output goes through its own :class:`FeatureGate`.
    """

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int], gating: bool = False, bn_eps: float = 1e-3, bn_momentum: float = 0.1) -> None:
        super().__init__()
        b0, b1_mid, b1, b2_mid, b2, b3 = channels
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.branch0 = ConvBNReLU3d(in_channels, b0, (1, 1, 1), **bn)
        self.branch1 = nn.Sequential(ConvBNReLU3d(in_channels, b1_mid, (1, 1, 1), **bn), SeparableConv3d(b1_mid, b1, 3, **bn))
        self.branch2 = nn.Sequential(ConvBNReLU3d(in_channels, b2_mid, (1, 1, 1), **bn), SeparableConv3d(b2_mid, b2, 3, **bn))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), ConvBNReLU3d(in_channels, b3, (1, 1, 1), **bn))
        widths = (b0, b1, b2, b3)
        self.gates = nn.ModuleList(FeatureGate(w) for w in widths) if gating else None
        self.out_channels = sum(widths)

    def forward(self, x: Tensor) -> Tensor:
        outs = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        if self.gates is not None:
            outs = [gate(o) for gate, o in zip(self.gates, outs)]
        return torch.cat(outs, dim=1)


class S3D(Encoder):
    """S3D (``gating=False``) or S3D-G (``gating=True``) trunk; 7.9 M parameters by default.

    Arguments:
        width: rescales every channel count by ``width / 64`` (published: 64; ``feature_dim`` is
            1024 then). Widths are rounded to the nearest integer, at least 1.
        in_channels: input channels (3 for RGB, 2 for optical flow).
        gating: S3D-G feature gating after ``Conv_2c`` and on every Inception branch.
        stem_spatial_stride: 1 or 2, spatial stride of the first convolution (published: 2).
        stem_temporal_stride: 1 or 2, temporal stride of the first convolution (published: 2).
        bn_eps: batch-norm epsilon (published: 1e-3).
        bn_momentum: batch-norm running-average momentum in (0, 1]. The reference implementation
            uses 0.001 (TensorFlow decay 0.999), which suits fine-tuning pretrained weights; the
            default 0.1 lets running statistics follow weights trained from scratch.
        pool_kernel: ``[t, h, w]`` of the pooling's average-pool window (stride 1; clamped to
            the feature map), whose windows are then averaged (published head: ``[2, 7, 7]``).
            ``[1, 1, 1]`` is the plain global mean at every clip size.

    Stages, named after the Inception-v1 resolution levels:
    ``stem`` (Conv_1a: separable 7x7x7, stride (2, 2, 2)),
    ``block2`` (MaxPool_2a 1x3x3 /(1,2,2), Conv_2b 1x1x1, Conv_2c separable 3x3x3),
    ``block3`` (MaxPool_3a 1x3x3 /(1,2,2), Mixed_3b, Mixed_3c),
    ``block4`` (MaxPool_4a 3x3x3 /2, Mixed_4b..4f),
    ``block5`` (MaxPool_5a 2x2x2 /2, Mixed_5b, Mixed_5c).
    Output stride with the defaults: 8 in time, 32 in space (224x224 -> 7x7).
    """

    owner = "s3d"

    def __init__(
        self,
        width: int = 64,
        in_channels: int = 3,
        gating: bool = False,
        stem_spatial_stride: int = 2,
        stem_temporal_stride: int = 2,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        pool_kernel: list[int] = [2, 7, 7],  # noqa: B006 - copied, never mutated; TOML-style default
    ) -> None:
        super().__init__()
        o = self.owner
        self.width = check_positive_int(o, "width", width)
        self.in_channels = check_positive_int(o, "in_channels", in_channels)
        self.gating = check_bool(o, "gating", gating)
        self.stem_spatial_stride = check_int_choice(o, "stem_spatial_stride", stem_spatial_stride, (1, 2))
        self.stem_temporal_stride = check_int_choice(o, "stem_temporal_stride", stem_temporal_stride, (1, 2))
        bn = {"bn_eps": check_positive_float(o, "bn_eps", bn_eps), "bn_momentum": check_positive_float(o, "bn_momentum", bn_momentum, upper=1.0)}
        self.pool_kernel = tuple(check_int_list(o, "pool_kernel", pool_kernel, length=3, minimum=1))

        def ch(n: int) -> int:
            return scale_channels(n, self.width)

        stem_ch, conv2c_ch = ch(STEM_CHANNELS), ch(CONV_2C_CHANNELS)
        stages: dict[str, nn.Module] = {
            "stem": SeparableConv3d(self.in_channels, stem_ch, 7, self.stem_spatial_stride, self.stem_temporal_stride, **bn),
        }
        block2: list[nn.Module] = [
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            ConvBNReLU3d(stem_ch, stem_ch, (1, 1, 1), **bn),
            SeparableConv3d(stem_ch, conv2c_ch, 3, **bn),
        ]
        if self.gating:
            block2.append(FeatureGate(conv2c_ch))
        stages["block2"] = nn.Sequential(*block2)

        pools = {
            "block3": nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            "block4": nn.MaxPool3d(3, stride=2, padding=1),
            "block5": nn.MaxPool3d(2, stride=2),
        }
        in_ch = conv2c_ch
        for name, configs in INCEPTION_CHANNELS.items():
            layers: list[nn.Module] = [pools[name]]
            for config in configs:
                block = SepInceptionBlock3d(in_ch, tuple(ch(c) for c in config), gating=self.gating, **bn)
                layers.append(block)
                in_ch = block.out_channels
            stages[name] = nn.Sequential(*layers)
        self.stages = nn.ModuleDict(stages)
        self.feature_dim = in_ch
        init_video_weights(self)

    def pool(self, feature_map: Tensor) -> Tensor:
        """torchvision's S3D head's pooling (see the module docstring): :func:`windowed_mean_pool`."""
        return windowed_mean_pool(feature_map, self.pool_kernel)

    def state_dict_layouts(self) -> tuple[StateDictLayout, ...]:
        """torchvision's S3D keys (``features.<i>.…``; its ``classifier`` is dropped). S3D-G's
        gates have no counterpart there, so a gated encoder reads no other layout."""
        return () if self.gating else (TorchvisionS3DLayout(),)

    def extra_repr(self) -> str:
        return f"width={self.width}, gating={self.gating}, pool_kernel={list(self.pool_kernel)}, feature_dim={self.feature_dim}"
