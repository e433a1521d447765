"""Video ResNets: R3D-18 and R(2+1)D-18 (Tran et al., "A Closer Look at Spatiotemporal
Convolutions for Action Recognition", CVPR 2018), as hcframe encoders.

With the defaults the architectures are the published ones: stage widths 64/128/256/512, two basic
blocks per stage, stride 2 in time and space at the start of ``layer2``..``layer4``, no stem
max-pool, and a (2+1)D factorisation whose middle width keeps the parameter count of the full 3D
convolution it replaces. With a 400-way linear classifier on top, R3D-18 has 33,371,472 parameters
and R(2+1)D-18 31,505,325, the figures of the reference implementations.

MC3-18 (mixed convolutions: 3x3x3 in the stem and ``layer1``, spatial 1x3x3 in ``layer2``..``layer4``,
no temporal downsampling) is the third model of that paper; 11,695,440 parameters with the classifier.

``width`` (base channels) and ``blocks`` (basic blocks per stage) shrink the same design for tests
and CPU quickstarts: ``R2Plus1D(width=8, blocks=[1, 1, 1, 1])`` has 196,598 parameters.

The module layout (``stem`` = conv/BN/ReLU sequence; blocks with ``conv1``, ``conv2``,
``downsample``) is torchvision's (``torchvision.models.video.resnet``): a torchvision state dict is
ours with ``stages.`` prefixed and the ``fc`` classifier removed
(:class:`~hcframe_backbones.torchvision_layout.TorchvisionVideoResNetLayout`).
"""

import abc
from functools import partial
from typing import Callable

from torch import Tensor, nn

from hcframe import Encoder, StateDictLayout

from hcframe_backbones.layers import (
    check_bool,
    check_int_choice,
    check_int_list,
    check_positive_int,
    init_video_weights,
    scale_channels,
    triple,
)
from hcframe_backbones.torchvision_layout import TorchvisionVideoResNetLayout

__all__ = [
    "BasicBlock3d",
    "Conv2Plus1d",
    "MC3",
    "R2Plus1D",
    "R3D",
    "VideoResNet",
    "r2plus1d_mid_channels",
]

STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
# Width of stage i is width * 2**i, as in every ResNet.
STAGE_MULTIPLIERS = (1, 2, 4, 8)
# The R(2+1)D stem's middle width in the published model (45 for 64 output channels); it is not
# given by the parameter-matching formula, so it is rescaled with the base width instead.
R2PLUS1D_STEM_MID = 45

# (in, out, spatial_stride, temporal_stride) -> conv module, for one 3x3x3-sized convolution of a block.
ConvFactory = Callable[[int, int, int, int], nn.Module]


def r2plus1d_mid_channels(in_channels: int, out_channels: int) -> int:
    """Middle width M of a (2+1)D block that replaces ``in -> out`` 3x3x3 convolutions.

    ``M = floor(in*out*27 / (in*9 + 3*out))`` makes the 1x3x3 + 3x1x1 pair cost about as many
    parameters as one 3x3x3 convolution (Tran et al. 2018, eq. 1). Both convolutions of a block use
    the M of the block's input and output widths, as in the reference implementation.
    """
    return max(1, (in_channels * out_channels * 3 * 3 * 3) // (in_channels * 3 * 3 + 3 * out_channels))


class Conv2Plus1d(nn.Sequential):
    """A 3x3x3 convolution factorised into spatial 1x3x3 -> BN -> ReLU -> temporal 3x1x1.

    The trailing batch norm and ReLU belong to the enclosing block, as for a plain convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, spatial_stride: int = 1, temporal_stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, mid_channels, (1, 3, 3), stride=(1, spatial_stride, spatial_stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid_channels, out_channels, (3, 1, 1), stride=(temporal_stride, 1, 1), padding=(1, 0, 0), bias=False),
        )


def conv3x3x3(in_channels: int, out_channels: int, spatial_stride: int = 1, temporal_stride: int = 1) -> nn.Conv3d:
    """The full 3D convolution of R3D blocks."""
    return nn.Conv3d(in_channels, out_channels, 3, stride=triple(temporal_stride, spatial_stride), padding=1, bias=False)


class BasicBlock3d(nn.Module):
    """Two 3x3x3-sized convolutions with a residual connection (He et al. 2016, basic block).

    ``make_conv(in, out, spatial_stride, temporal_stride)`` builds each convolution, so the same
    block serves R3D (full 3D) and R(2+1)D (factorised). The first convolution carries the strides;
    when the shape changes, the shortcut is a strided 1x1x1 convolution + batch norm.
    """

    def __init__(self, in_channels: int, out_channels: int, make_conv: ConvFactory, spatial_stride: int = 1, temporal_stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            make_conv(in_channels, out_channels, spatial_stride, temporal_stride),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            make_conv(out_channels, out_channels, 1, 1),
            nn.BatchNorm3d(out_channels),
        )
        self.downsample: nn.Module | None = None
        if spatial_stride != 1 or temporal_stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=triple(temporal_stride, spatial_stride), bias=False),
                nn.BatchNorm3d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm3d:
        """The batch norm ending the residual branch (zeroed by ``zero_init_residual``)."""
        return self.conv2[1]

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        return self.relu(out + shortcut)


class VideoResNet(Encoder):
    """A video ResNet trunk: ``stem``, then ``layer1``..``layer4`` of :class:`BasicBlock3d`.

    Subclasses choose the stem (:meth:`make_stem`) and the block convolution (:meth:`make_conv`);
    everything else (widths, depths, strides, init) is shared. Arguments are documented on
    :class:`R3D`; ``owner`` names the model in error messages.
    """

    owner = "video_resnet"

    def __init__(
        self,
        width: int = 64,
        blocks: list[int] = [2, 2, 2, 2],  # noqa: B006 - copied, never mutated; TOML-style default
        in_channels: int = 3,
        stem_spatial_stride: int = 2,
        spatial_strides: list[int] = [1, 2, 2, 2],  # noqa: B006
        temporal_strides: list[int] = [1, 2, 2, 2],  # noqa: B006
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        o = self.owner
        self.width = check_positive_int(o, "width", width)
        self.blocks = check_int_list(o, "blocks", blocks, length=4, minimum=1)
        self.in_channels = check_positive_int(o, "in_channels", in_channels)
        self.stem_spatial_stride = check_int_choice(o, "stem_spatial_stride", stem_spatial_stride, (1, 2))
        self.spatial_strides = check_int_list(o, "spatial_strides", spatial_strides, length=4, allowed=(1, 2))
        self.temporal_strides = check_int_list(o, "temporal_strides", temporal_strides, length=4, allowed=(1, 2))
        self.zero_init_residual = check_bool(o, "zero_init_residual", zero_init_residual)

        widths = [self.width * m for m in STAGE_MULTIPLIERS]
        stages: dict[str, nn.Module] = {"stem": self.make_stem(self.in_channels, self.width, self.stem_spatial_stride)}
        in_ch = self.width
        for i, (out_ch, depth) in enumerate(zip(widths, self.blocks)):
            layer = []
            for b in range(depth):
                first = b == 0
                make_conv = partial(self.make_conv, block_in=in_ch, block_out=out_ch)
                layer.append(
                    BasicBlock3d(
                        in_ch,
                        out_ch,
                        make_conv,
                        spatial_stride=self.spatial_strides[i] if first else 1,
                        temporal_stride=self.temporal_strides[i] if first else 1,
                    )
                )
                in_ch = out_ch
            stages[STAGE_NAMES[i + 1]] = nn.Sequential(*layer)
        self.stages = nn.ModuleDict(stages)
        self.feature_dim = widths[-1]

        init_video_weights(self)
        if self.zero_init_residual:
            # Each residual block starts as the identity: helps early optimisation (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, BasicBlock3d):
                    nn.init.zeros_(m.last_bn.weight)

    @abc.abstractmethod
    def make_stem(self, in_channels: int, out_channels: int, spatial_stride: int) -> nn.Module:
        """The stem: ``in_channels -> out_channels`` with spatial stride ``spatial_stride``."""

    @abc.abstractmethod
    def make_conv(self, in_channels: int, out_channels: int, spatial_stride: int, temporal_stride: int, *, block_in: int, block_out: int) -> nn.Module:
        """One 3x3x3-sized convolution of a block whose input/output widths are ``block_in/out``."""

    def total_strides(self) -> tuple[int, int]:
        """(temporal, spatial) downsampling factor from input clip to feature map."""
        t, s = 1, self.stem_spatial_stride
        for ts, ss in zip(self.temporal_strides, self.spatial_strides):
            t, s = t * ts, s * ss
        return t, s

    def state_dict_layouts(self) -> tuple[StateDictLayout, ...]:
        """torchvision's video ResNet keys (``stem.…``, ``layer1.…``; its ``fc`` is dropped)."""
        return (TorchvisionVideoResNetLayout(),)

    def extra_repr(self) -> str:
        return f"width={self.width}, blocks={self.blocks}, feature_dim={self.feature_dim}"


class R3D(VideoResNet):
    """R3D-18 (3x3x3 convolutions throughout); 33.2 M parameters without a classifier by default.

    Arguments:
        width: base channels; stages have ``width * (1, 2, 4, 8)`` channels (published: 64).
        blocks: basic blocks in ``layer1``..``layer4`` (published R3D-18: ``[2, 2, 2, 2]``).
        in_channels: input channels (3 for RGB; 2 for optical flow, 1 for grey).
        stem_spatial_stride: 1 or 2, spatial stride of the stem (published: 2). 1 keeps small
            inputs (e.g. 32x32) from shrinking below one pixel.
        spatial_strides: 1 or 2 per stage, applied by the first block of ``layer1``..``layer4``
            (published: ``[1, 2, 2, 2]``).
        temporal_strides: 1 or 2 per stage (published: ``[1, 2, 2, 2]``, 16 frames -> 2). Use 1s to
            keep temporal resolution for short clips.
        zero_init_residual: start each residual branch's last batch norm at 0 (identity blocks).

    Stages: ``stem`` (3x7x7 conv, stride (1, s, s)) and ``layer1``..``layer4``; ``feature_dim`` is
    ``8 * width``. Output stride with the defaults: 8 in time, 16 in space.
    """

    owner = "r3d_18"

    def make_stem(self, in_channels: int, out_channels: int, spatial_stride: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv3d(in_channels, out_channels, (3, 7, 7), stride=(1, spatial_stride, spatial_stride), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )

    def make_conv(self, in_channels: int, out_channels: int, spatial_stride: int, temporal_stride: int, *, block_in: int, block_out: int) -> nn.Module:
        return conv3x3x3(in_channels, out_channels, spatial_stride, temporal_stride)


class R2Plus1D(VideoResNet):
    """R(2+1)D-18 (every 3x3x3 convolution factorised); 31.3 M parameters without a classifier.

    Arguments are those of :class:`R3D`. The stem is a 1x7x7 convolution to ``round(45 * width /
    64)`` channels (45 in the published model) followed by a 3x1x1 convolution to ``width``; block
    convolutions are :class:`Conv2Plus1d` with the middle width of :func:`r2plus1d_mid_channels`.
    """

    owner = "r2plus1d_18"

    def make_stem(self, in_channels: int, out_channels: int, spatial_stride: int) -> nn.Module:
        mid = scale_channels(R2PLUS1D_STEM_MID, out_channels)
        return nn.Sequential(
            nn.Conv3d(in_channels, mid, (1, 7, 7), stride=(1, spatial_stride, spatial_stride), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, out_channels, (3, 1, 1), stride=1, padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )

    def make_conv(self, in_channels: int, out_channels: int, spatial_stride: int, temporal_stride: int, *, block_in: int, block_out: int) -> nn.Module:
        mid = r2plus1d_mid_channels(block_in, block_out)
        return Conv2Plus1d(in_channels, out_channels, mid, spatial_stride, temporal_stride)


class MC3(R3D):
    """MC3-18 (mixed convolutions); 11.5 M parameters without a classifier by default.

    The stem and ``layer1`` are those of :class:`R3D` (3x3x3); ``layer2``..``layer4`` convolve in
    space only (1x3x3), so nothing downsamples time: ``temporal_strides`` defaults to
    ``[1, 1, 1, 1]`` (a 2 there subsamples frames with the stride of the block's first 1x3x3
    convolution and of its shortcut). Other arguments are those of :class:`R3D`.
    """

    owner = "mc3_18"

    def __init__(
        self,
        width: int = 64,
        blocks: list[int] = [2, 2, 2, 2],  # noqa: B006 - copied, never mutated; TOML-style default
        in_channels: int = 3,
        stem_spatial_stride: int = 2,
        spatial_strides: list[int] = [1, 2, 2, 2],  # noqa: B006
        temporal_strides: list[int] = [1, 1, 1, 1],  # noqa: B006
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(width, blocks, in_channels, stem_spatial_stride, spatial_strides, temporal_strides, zero_init_residual)

    def make_conv(self, in_channels: int, out_channels: int, spatial_stride: int, temporal_stride: int, *, block_in: int, block_out: int) -> nn.Module:
        if block_out == self.width:  # layer1 (the only stage of base width): full 3D
            return conv3x3x3(in_channels, out_channels, spatial_stride, temporal_stride)
        return nn.Conv3d(in_channels, out_channels, (1, 3, 3), stride=triple(temporal_stride, spatial_stride), padding=(0, 1, 1), bias=False)
