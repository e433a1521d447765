"""hcframe encoder plugin: R3D-18, MC3-18, R(2+1)D-18 and S3D / S3D-G trunks with width and depth
options, reading and writing torchvision's state-dict layout.

Registered encoders (``hcframe.get_registry().create("encoder", name, **kwargs)``):
``r3d_18`` -> :class:`R3D`, ``mc3_18`` -> :class:`MC3`, ``r2plus1d_18`` -> :class:`R2Plus1D`,
``s3d`` -> :class:`S3D`.
"""

from hcframe_backbones.resnet3d import MC3, BasicBlock3d, Conv2Plus1d, R2Plus1D, R3D, VideoResNet, r2plus1d_mid_channels
from hcframe_backbones.s3d import S3D, FeatureGate, SepInceptionBlock3d, SeparableConv3d, windowed_mean_pool
from hcframe_backbones.torchvision_layout import TorchvisionS3DLayout, TorchvisionVideoResNetLayout

__version__ = "0.1.0"

__all__ = [
    "BasicBlock3d",
    "Conv2Plus1d",
    "FeatureGate",
    "MC3",
    "R2Plus1D",
    "R3D",
    "S3D",
    "SepInceptionBlock3d",
    "SeparableConv3d",
    "TorchvisionS3DLayout",
    "TorchvisionVideoResNetLayout",
    "VideoResNet",
    "r2plus1d_mid_channels",
    "windowed_mean_pool",
]
