"""Entry point of the ``hcframe-backbones`` distribution: registers its encoders."""

import hcframe
from hcframe.registry import Registry

from hcframe_backbones.resnet3d import MC3, R2Plus1D, R3D
from hcframe_backbones.s3d import S3D


@hcframe.hookimpl
def hcframe_register(registry: Registry) -> None:
    registry.add("encoder", "r3d_18", R3D)
    registry.add("encoder", "r2plus1d_18", R2Plus1D)
    registry.add("encoder", "mc3_18", MC3)
    registry.add("encoder", "s3d", S3D)
