"""A compact C3D-style encoder (after Tran et al., "Learning Spatiotemporal Features with 3D
Convolutional Networks", ICCV 2015).

C3D is a plain stack of 3x3x3 convolutions and max-pooling: pool1 halves only the spatial size (so
early layers keep temporal detail), every later pool halves time, height and width. This version
keeps that layout with configurable width, optional batch norm (the original has none; it makes
training from scratch far less sensitive to the learning rate) and no fully connected layers: the
encoder ends at conv5 and :meth:`hcframe.Encoder.pool` averages the feature map.
"""

from __future__ import annotations

from torch import nn

import hcframe

__all__ = ["C3DSmall"]

#: Per stage: channel multiplier of ``width``, number of convolutions, pooling after the stage.
_LAYOUT: tuple[tuple[str, int, int, tuple[int, int, int] | None], ...] = (
    ("conv1", 1, 1, (1, 2, 2)),
    ("conv2", 2, 1, (2, 2, 2)),
    ("conv3", 4, 2, (2, 2, 2)),
    ("conv4", 8, 2, (2, 2, 2)),
    ("conv5", 8, 2, None),
)


def _conv_block(in_channels: int, out_channels: int, batch_norm: bool) -> list[nn.Module]:
    conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batch_norm)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers: list[nn.Module] = [conv]
    if batch_norm:
        layers.append(nn.BatchNorm3d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


class C3DSmall(hcframe.Encoder):
    """Compact C3D-style 3D CNN: stages conv1..conv5 of 3x3x3 convolutions with max-pooling.

    Arguments (all optional):

    - ``width`` (int, default 16): channels of conv1; later stages use 2x, 4x, 8x and 8x that.
      The original C3D corresponds to ``width = 64`` (without its fc layers).
    - ``num_stages`` (int, 1..5, default 5): keep only the first stages (a shallower trunk).
    - ``batch_norm`` (bool, default true): batch norm after every convolution.

    Pooling uses ``ceil_mode`` so that short or small clips (e.g. 4 frames at 32 px) still pass:
    a dimension of size 1 stays 1. ``feature_dim`` is the channel count of the last stage kept.
    """

    def __init__(self, width: int = 16, num_stages: int = 5, batch_norm: bool = True) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"c3d_small: width must be a positive integer, got {width!r}")
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or not 1 <= num_stages <= len(_LAYOUT):
            raise ValueError(f"c3d_small: num_stages must be between 1 and {len(_LAYOUT)}, got {num_stages!r}")
        self.width, self.num_stages, self.batch_norm = width, num_stages, batch_norm
        stages: dict[str, nn.Module] = {}
        in_channels = 3
        for name, multiplier, convs, pool in _LAYOUT[:num_stages]:
            out_channels = multiplier * width
            layers: list[nn.Module] = []
            for i in range(convs):
                layers += _conv_block(in_channels if i == 0 else out_channels, out_channels, batch_norm)
            # The last stage kept is not pooled: its map is the encoder's feature map.
            if pool is not None and name != _LAYOUT[num_stages - 1][0]:
                layers.append(nn.MaxPool3d(kernel_size=pool, stride=pool, ceil_mode=True))
            stages[name] = nn.Sequential(*layers)
            in_channels = out_channels
        self.stages = nn.ModuleDict(stages)
        self.feature_dim = in_channels
