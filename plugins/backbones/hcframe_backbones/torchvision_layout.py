"""torchvision's key layout for the video models (``torchvision.models.video``), key by key.

The encoders mirror torchvision's module structure, so only names differ:

- ``r3d_18``, ``r2plus1d_18`` and ``mc3_18`` (``VideoResNet``): torchvision's ``stem``,
  ``layer1``..``layer4`` are the encoder's stages of the same names, under ``stages.``;
- ``s3d``: torchvision's ``features`` is one ``nn.Sequential`` of 16 modules, the encoder's five
  stages hold the same modules in order (each stage starts with the max-pool torchvision puts
  between them); the 12 entries of :data:`S3D_FEATURES` with weights map one to one.

torchvision's classifier (``fc`` of the ResNets, ``classifier.1`` (a 1x1x1 convolution) of S3D) has
no counterpart in an encoder: :meth:`~hcframe.StateDictLayout.drops` accepts those keys when
loading, and exports leave them out. Nothing else is tolerated.
"""

from __future__ import annotations

from hcframe import StateDictLayout

__all__ = ["S3D_FEATURES", "TorchvisionS3DLayout", "TorchvisionVideoResNetLayout"]

VIDEO_RESNET_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

#: ``features.<index>`` of torchvision's S3D -> the encoder's module (``stage.index`` inside the
#: stage's ``nn.Sequential``, or the whole ``stem``). Indices 1, 4, 7 and 13 are max-pools.
S3D_FEATURES: dict[int, str] = {
    0: "stem",  # Conv_1a, separable 7x7x7
    2: "block2.1",  # Conv_2b 1x1x1
    3: "block2.2",  # Conv_2c separable 3x3x3
    5: "block3.1",  # Mixed_3b
    6: "block3.2",  # Mixed_3c
    8: "block4.1",  # Mixed_4b .. 4f
    9: "block4.2",
    10: "block4.3",
    11: "block4.4",
    12: "block4.5",
    14: "block5.1",  # Mixed_5b, 5c
    15: "block5.2",
}
_S3D_MODULE_TO_INDEX = {module: index for index, module in S3D_FEATURES.items()}


class TorchvisionVideoResNetLayout(StateDictLayout):
    """torchvision ``r3d_18`` / ``mc3_18`` / ``r2plus1d_18``: ``stem.…``, ``layerN.…``, ``fc.…``."""

    name = "torchvision"

    def to_encoder_key(self, key: str) -> str | None:
        return f"stages.{key}" if key.split(".", 1)[0] in VIDEO_RESNET_STAGES and "." in key else None

    def from_encoder_key(self, key: str) -> str:
        return key.removeprefix("stages.")

    def drops(self, key: str) -> bool:
        return key in ("fc.weight", "fc.bias")


class TorchvisionS3DLayout(StateDictLayout):
    """torchvision ``s3d``: ``features.<i>.…`` (see :data:`S3D_FEATURES`), ``classifier.1.…``."""

    name = "torchvision"

    def to_encoder_key(self, key: str) -> str | None:
        parts = key.split(".")
        if len(parts) < 3 or parts[0] != "features" or not parts[1].isdigit() or int(parts[1]) not in S3D_FEATURES:
            return None
        return ".".join(["stages", S3D_FEATURES[int(parts[1])], *parts[2:]])

    def from_encoder_key(self, key: str) -> str:
        parts = key.removeprefix("stages.").split(".")
        width = 1 if parts[0] == "stem" else 2  # "stem" is one module; "block4.3" names one inside a stage
        module = ".".join(parts[:width])
        if module not in _S3D_MODULE_TO_INDEX:
            raise KeyError(f"s3d: {key} has no counterpart in torchvision's S3D")
        return ".".join(["features", str(_S3D_MODULE_TO_INDEX[module]), *parts[width:]])

    def drops(self, key: str) -> bool:
        return key in ("classifier.1.weight", "classifier.1.bias")
