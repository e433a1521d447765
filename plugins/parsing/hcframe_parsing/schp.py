"""An SCHP-compatible human parser: the AugmentCE2P ResNet-101 of Self-Correction Human Parsing
(Li et al.), re-implemented here so that the public LIP / ATR / Pascal-Person-Part checkpoints load
**key for key** (names, order and shapes as listed in ``shared/fixtures/schp/*.tsv``).

Architecture (inference only):

- stem: three 3x3 convs (64 s2, 64, 128), each followed by a norm layer and ReLU, then a 3x3/s2
  max-pool (stride 4);
- ResNet-101 bottlenecks (3, 4, 23, 3 blocks; stride on the 3x3 conv); ``layer4`` has stride 1 and
  dilation 2 (multi-grid 1, 1, 1), so the backbone's output stride is 16;
- ``context_encoding``: a PSP module (adaptive average pools 1, 2, 3, 6 -> 1x1 conv 512 -> norm),
  upsampled and concatenated with the backbone output, then a 3x3 conv bottleneck to 512;
- ``edge``: 1x1 convs on layer1/2/3 outputs to 256 channels each, a shared 3x3 conv to 2 edge
  logits per level, fused by a 1x1 conv; its 3x256 features are kept for the fusion head;
- ``decoder``: context (512 -> 256, upsampled to stride 4) concatenated with layer1 (256 -> 48),
  two 1x1 conv layers to 256, a 1x1 classifier (``decoder.conv4``);
- ``fushion`` (the original spelling, kept for the checkpoint keys): decoder features (256) +
  edge features (768) -> 1x1 conv 256 -> norm -> Dropout2d -> 1x1 classifier. Its output at stride 4
  (119x119 for a 473 input, 128x128 for 512) is SCHP's final parsing result.

Norm layers. SCHP uses InPlaceABNSync (mapillary/inplace_abn's fused batch-norm + activation,
CUDA only) whose state is ``weight``, ``bias``, ``running_mean``, ``running_var`` and no
``num_batches_tracked``. Its affine scale is **not** the stored weight: the forward kernels (CPU and
CUDA, in SCHP's bundled copy and in later InPlace-ABN releases alike) scale by ``|weight| + eps``,
so in inference a layer computes::

    y = (x - running_mean) / sqrt(running_var + eps) * (|weight| + eps) + bias,   eps = 1e-5

then its activation. A checkpoint's stored weights may be negative (training only ever sees their
magnitude), so reading them as plain batch-norm weights silently changes the outputs.
:class:`ABNStandIn` holds exactly those four tensors and computes the formula above. The activation
follows SCHP's per-layer choice: the backbone (stem ``bn1..3``, every bottleneck ``bn1..3`` and
``downsample.1``) builds its norms with ``activation="none"`` and applies ReLU explicitly where
ResNet does, while every norm in the context, edge, decoder and fusion heads is a default
InPlaceABNSync, i.e. leaky ReLU with slope 0.01. Getting this wrong would not change any key but
would change every output, so it is a fixed property of each layer, not an option.

Precision: the teacher runs in float32 by default (SCHP is a float32 model); ``precision="bf16"``
opts into bfloat16 autocast (see :mod:`hcframe_parsing.precision`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hcframe
from hcframe_parsing.frames import RESIZE_MODES, logits_to_frame_grid, normalise, place_frames, sample_frame_grid
from hcframe_parsing.precision import check_precision, teacher_precision

__all__ = [
    "ABNStandIn",
    "AugmentCE2P",
    "SCHPCheckpointError",
    "SCHP_VARIANTS",
    "SCHPTeacher",
    "SCHPVariant",
    "load_schp_state_dict",
    "read_schp_checkpoint",
]


class SCHPVariant:
    """The conventions of one public SCHP checkpoint (from the fixture README)."""

    def __init__(self, name: str, label_names: Sequence[str], input_size: tuple[int, int], checkpoint_file: str) -> None:
        self.name = name
        self.label_names = tuple(label_names)
        self.input_size = input_size
        self.checkpoint_file = checkpoint_file

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


SCHP_VARIANTS: dict[str, SCHPVariant] = {
    "lip": SCHPVariant(
        "lip",
        ("Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks", "Pants",
         "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe",
         "Right-shoe"),
        (473, 473),
        "exp-schp-201908261155-lip.pth",
    ),
    "atr": SCHPVariant(
        "atr",
        ("Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
         "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf"),
        (512, 512),
        "exp-schp-201908301523-atr.pth",
    ),
    "pascal": SCHPVariant(
        "pascal",
        ("Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs"),
        (512, 512),
        "exp-schp-201908270938-pascal-person-part.pth",
    ),
}

#: SCHP normalises in BGR order (images are read with OpenCV).
SCHP_BGR_MEAN = (0.406, 0.456, 0.485)
SCHP_BGR_STD = (0.225, 0.224, 0.229)
SCHP_OUTPUT_STRIDE = 4


# --- building blocks ------------------------------------------------------------------------------
class ABNStandIn(nn.Module):
    """Inference form of InPlace-ABN(Sync): batch-norm with running statistics and the affine scale
    ``|weight| + eps`` (InPlace-ABN's, not plain batch-norm's ``weight``), then the activation.

    ``activation``: ``"none"`` or ``"leaky_relu"`` (slope ``slope``). State: ``weight``, ``bias``
    (parameters), ``running_mean``, ``running_var`` (buffers), nothing else. The output does not
    depend on the sign of ``weight``.
    """

    def __init__(self, num_features: int, activation: str = "leaky_relu", slope: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        if activation not in ("none", "leaky_relu"):
            raise ValueError(f"activation {activation!r} is not one of none, leaky_relu")
        self.activation = activation
        self.slope = slope
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        # The same eps enters twice, as in InPlace-ABN's kernels: in the variance and in the scale.
        scale = self.weight.abs() + self.eps
        x = F.batch_norm(x, self.running_mean, self.running_var, scale, self.bias, training=False, eps=self.eps)
        if self.activation == "leaky_relu":
            x = F.leaky_relu(x, self.slope)
        return x


def backbone_norm(channels: int) -> ABNStandIn:
    return ABNStandIn(channels, activation="none")


def head_norm(channels: int) -> ABNStandIn:
    return ABNStandIn(channels, activation="leaky_relu", slope=0.01)


def conv_norm(in_ch: int, out_ch: int) -> nn.Sequential:
    """1x1 conv (no bias) + head norm: keys ``0.weight``, ``1.*``."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), head_norm(out_ch))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 with stride/dilation, 1x1 x4), ReLU after the residual sum."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = backbone_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = backbone_norm(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = backbone_norm(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), backbone_norm(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def make_layer(in_ch: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    layers = [Bottleneck(in_ch, planes, stride, dilation)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def upsample_to(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class PSPContext(nn.Module):
    """Pyramid pooling (bins 1, 2, 3, 6) + 3x3 bottleneck; keys ``stages.i.1/2``, ``bottleneck.0/1``."""

    def __init__(self, in_ch: int = 2048, out_ch: int = 512, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_ch, out_ch, 1, bias=False), head_norm(out_ch)) for b in bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_ch + len(bins) * out_ch, out_ch, 3, padding=1, bias=False), head_norm(out_ch)
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        priors = [upsample_to(stage(x), size) for stage in self.stages] + [x]
        return self.bottleneck(torch.cat(priors, dim=1))


class EdgeBranch(nn.Module):
    """Edge logits (2 channels) from layer1/2/3 and the 3x256 features the fusion head consumes."""

    def __init__(self, in_chs: Sequence[int] = (256, 512, 1024), mid_ch: int = 256, out_ch: int = 2) -> None:
        super().__init__()
        self.conv1 = conv_norm(in_chs[0], mid_ch)
        self.conv2 = conv_norm(in_chs[1], mid_ch)
        self.conv3 = conv_norm(in_chs[2], mid_ch)
        self.conv4 = nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=True)  # shared across the three levels
        self.conv5 = nn.Conv2d(out_ch * 3, out_ch, 1, bias=True)

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> tuple[Tensor, Tensor]:
        size = x1.shape[-2:]
        feats = [self.conv1(x1), self.conv2(x2), self.conv3(x3)]
        edges = [self.conv4(f) for f in feats]
        feats = [feats[0]] + [upsample_to(f, size) for f in feats[1:]]
        edges = [edges[0]] + [upsample_to(e, size) for e in edges[1:]]
        return self.conv5(torch.cat(edges, dim=1)), torch.cat(feats, dim=1)


class ParsingDecoder(nn.Module):
    """Context (stride 16) + layer1 (stride 4) -> 256-channel features and decoder logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = conv_norm(512, 256)
        self.conv2 = conv_norm(256, 48)
        self.conv3 = nn.Sequential(
            nn.Conv2d(304, 256, 1, bias=False), head_norm(256), nn.Conv2d(256, 256, 1, bias=False), head_norm(256)
        )
        self.conv4 = nn.Conv2d(256, num_classes, 1, bias=True)

    def forward(self, context: Tensor, low: Tensor) -> tuple[Tensor, Tensor]:
        top = upsample_to(self.conv1(context), low.shape[-2:])
        feats = self.conv3(torch.cat([top, self.conv2(low)], dim=1))
        return self.conv4(feats), feats


class AugmentCE2P(nn.Module):
    """SCHP's AugmentCE2P ResNet-101. ``forward`` returns :meth:`parse`'s fusion logits and edge logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = backbone_norm(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = backbone_norm(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = backbone_norm(128)
        self.layer1 = make_layer(128, 64, 3)
        self.layer2 = make_layer(256, 128, 4, stride=2)
        self.layer3 = make_layer(512, 256, 23, stride=2)
        self.layer4 = make_layer(1024, 512, 3, stride=1, dilation=2)
        self.context_encoding = PSPContext(2048, 512)
        self.edge = EdgeBranch((256, 512, 1024), 256, 2)
        self.decoder = ParsingDecoder(num_classes)
        self.fushion = nn.Sequential(
            nn.Conv2d(1024, 256, 1, bias=False), head_norm(256), nn.Dropout2d(0.1), nn.Conv2d(256, num_classes, 1, bias=True)
        )

    def parse(self, x: Tensor) -> dict[str, Tensor]:
        """Normalised BGR input ``[N, 3, H, W]`` -> ``fusion`` logits (stride 4), ``decoder`` logits
        (stride 4), ``edge`` logits (stride 4), ``context`` features (512 channels, stride 16)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        context = self.context_encoding(x4)
        decoder_logits, decoder_feats = self.decoder(context, x1)
        edge_logits, edge_feats = self.edge(x1, x2, x3)
        fusion_logits = self.fushion(torch.cat([decoder_feats, edge_feats], dim=1))
        return {"fusion": fusion_logits, "decoder": decoder_logits, "edge": edge_logits, "context": context}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.parse(x)
        return out["fusion"], out["edge"]


# --- checkpoints ----------------------------------------------------------------------------------
class SCHPCheckpointError(ValueError):
    """A checkpoint that does not match the AugmentCE2P ResNet-101 layout of the chosen variant."""


def _first(items: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)} in all)"


def _shared_prefix_problem(expected: set[str], given: Sequence[str]) -> str | None:
    """If the given keys are the expected ones under an extra prefix, name it."""
    for key in given:
        for exp in ("conv1.weight", "fushion.3.weight"):
            if key.endswith(exp) and key != exp:
                prefix = key[: -len(exp)]
                stripped = {k[len(prefix):] for k in given if k.startswith(prefix)}
                if len(stripped & expected) >= len(expected) // 2:
                    return f"keys carry the prefix {prefix!r} (strip it before loading)"
    return None


def _variant_for_classes(num_classes: int) -> str | None:
    for name, variant in SCHP_VARIANTS.items():
        if variant.num_classes == num_classes:
            return name
    return None


def read_schp_checkpoint(path: str) -> dict[str, Tensor]:
    """Load an SCHP checkpoint file (``weights_only=True``) and return its bare state dict: the
    ``'state_dict'`` entry when present, and the DataParallel ``module.`` prefix removed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SCHP checkpoint {path!r} does not exist; set teacher.checkpoint to a downloaded SCHP .pth file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SCHPCheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({type(exc).__name__}: {exc})") from exc
    return unwrap_schp_state_dict(obj, source=path)


def unwrap_schp_state_dict(obj: Any, source: str = "<state dict>") -> dict[str, Tensor]:
    """``{'state_dict': {...}}`` or a plain state dict -> a plain state dict without ``module.``."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise SCHPCheckpointError(f"{source}: expected a state dict (or a dict with 'state_dict'), got {type(obj).__name__}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_schp_state_dict(model: AugmentCE2P, state: Mapping[str, Tensor], variant: str, source: str = "<state dict>") -> None:
    """Strictly load ``state`` into ``model``; on any mismatch raise :class:`SCHPCheckpointError`
    with one line naming the first missing / unexpected / wrongly shaped keys and the likely cause."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        causes = []
        head = state.get("fushion.3.weight")
        if head is not None and head.shape[0] != model.num_classes:
            other = _variant_for_classes(int(head.shape[0]))
            hint = f"the {other!r} variant; set dataset = {other!r}" if other else "no known SCHP variant"
            causes.append(f"checkpoint has {head.shape[0]} classes (fushion.3.weight), {variant!r} needs {model.num_classes}: {hint}")
        prefix = _shared_prefix_problem(set(expected), list(state))
        if prefix:
            causes.append(prefix)
        if not causes:
            causes.append("not an SCHP AugmentCE2P ResNet-101 checkpoint")
        parts = []
        if missing:
            parts.append(f"missing keys {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_first(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatches {_first(wrong_shape, 2)}")
        raise SCHPCheckpointError(
            f"{source}: does not match SCHP AugmentCE2P ResNet-101 ({variant}): {'; '.join(parts)}; likely cause: {'; '.join(causes)}"
        )
    model.load_state_dict(state, strict=True)


def sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_state_dict(state: Mapping[str, Tensor]) -> str:
    """A content hash of an in-memory state dict (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{list(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# --- the teacher ----------------------------------------------------------------------------------
class SCHPTeacher(hcframe.Teacher):
    """SCHP AugmentCE2P ResNet-101 human parser as a frozen teacher (LIP, ATR or Pascal-Person-Part).

    Args:
        checkpoint: path of a public SCHP checkpoint (e.g. ``exp-schp-201908261155-lip.pth``); loaded
            with ``weights_only=True``, ``'state_dict'`` unwrapped, ``module.`` stripped, strictly.
        dataset: which label set the checkpoint was trained on: ``"lip"`` (20 labels, 473x473),
            ``"atr"`` (18, 512x512) or ``"pascal"`` (Pascal-Person-Part, 7, 512x512).
        resize_mode: ``"letterbox"`` (default; aspect kept, centred, black padding, as SCHP's own
            inference) or ``"resize"`` (plain resize to the input size).
        precision: ``"fp32"`` (default: float32, as SCHP; an enclosing autocast is switched off and
            CUDA convolutions avoid TF32) or ``"bf16"`` (bfloat16 autocast, an opt-in meant for
            CUDA; it changes the outputs, see the plugin README). Part of :meth:`identity`, so a
            cache made at one precision is refused at the other.
        input_size: ``[h, w]`` the frames are placed into; empty (default) = the variant's own
            (473x473 LIP, 512x512 ATR/Pascal), what the checkpoints were trained at. A smaller
            size is cheaper (cost grows with its area) and changes the outputs (see the plugin
            README for the measured agreement); it is part of :meth:`identity`.

    ``forward(frames)`` takes RGB ``[N, 3, H, W]`` in ``[0, 1]``; frames are placed at the input size,
    flipped to BGR and normalised with SCHP's BGR mean/std; the fusion logits (stride 4) are
    upsampled to the input size, the padding removed, and returned at ``output_size`` (default: the
    frame size). :meth:`forward_with_features` also returns the 512-channel PSP context features on
    a grid of ``feature_size`` over the frame, for feature-level distillation. Use
    :meth:`from_state_dict` to build one from an in-memory state dict (tests, converted weights).
    """

    feature_dim = 512

    def __init__(
        self,
        checkpoint: str,
        dataset: str = "lip",
        resize_mode: str = "letterbox",
        precision: Literal["fp32", "bf16"] = "fp32",
        input_size: list[int] = [],  # noqa: B006 - never mutated; empty = the variant's size
    ) -> None:
        super().__init__()
        if not checkpoint:
            raise ValueError("teacher.checkpoint is empty; give the path of an SCHP .pth checkpoint")
        self._build(dataset, resize_mode, precision, input_size)
        state = read_schp_checkpoint(checkpoint)
        load_schp_state_dict(self.model, state, dataset, source=checkpoint)
        self.checkpoint = checkpoint
        self.checkpoint_sha256 = sha256_of_file(checkpoint)
        self.freeze()

    def _build(self, dataset: str, resize_mode: str, precision: str, input_size: Sequence[int] = ()) -> None:
        self.precision = check_precision(precision)
        if dataset not in SCHP_VARIANTS:
            raise ValueError(f"teacher.dataset {dataset!r} is not one of {', '.join(SCHP_VARIANTS)}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"teacher.resize_mode {resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if len(input_size) not in (0, 2) or any(int(s) < 1 for s in input_size):
            raise ValueError(f"teacher.input_size must be [height, width] >= 1, or [] for the variant's own size; got {list(input_size)}")
        self.variant = SCHP_VARIANTS[dataset]
        self.resize_mode = resize_mode
        self.label_names = self.variant.label_names
        self.input_size = (int(input_size[0]), int(input_size[1])) if input_size else self.variant.input_size
        # Built without initialising (every tensor is overwritten by the strict load that follows;
        # initialising 66 M random weights would cost about a second for nothing).
        with torch.device("meta"):
            model = AugmentCE2P(self.variant.num_classes)
        self.model = model.to_empty(device="cpu")

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Tensor],
        dataset: str = "lip",
        resize_mode: str = "letterbox",
        source: str = "<state dict>",
        precision: str = "fp32",
        input_size: Sequence[int] = (),
    ) -> "SCHPTeacher":
        """Build from an in-memory state dict (checkpoint layout or bare); the identity's hash is a
        content hash of the tensors instead of a file hash."""
        teacher = cls.__new__(cls)
        hcframe.Teacher.__init__(teacher)
        teacher._build(dataset, resize_mode, precision, input_size)
        bare = unwrap_schp_state_dict(state, source=source)
        load_schp_state_dict(teacher.model, bare, dataset, source=source)
        teacher.checkpoint = source
        teacher.checkpoint_sha256 = "tensors:" + sha256_of_state_dict(bare)
        teacher.freeze()
        return teacher

    def identity(self) -> dict[str, Any]:
        return {
            "architecture": "schp-augmentce2p-resnet101",
            # Names the norm formula: caches made before the |weight| + eps fix are refused.
            "norm": "inplace_abn",
            "dataset": self.variant.name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "input_size": list(self.input_size),
            "resize_mode": self.resize_mode,
            "channel_order": "bgr",
            "mean": list(SCHP_BGR_MEAN),
            "std": list(SCHP_BGR_STD),
            "label_names": list(self.label_names),
            "precision": self.precision,
        }

    def _prepare(self, frames: Tensor):
        placed, placement = place_frames(frames.float(), self.input_size, self.resize_mode)
        return normalise(placed, SCHP_BGR_MEAN, SCHP_BGR_STD, channel_order="bgr"), placement

    def forward(self, frames: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        with teacher_precision(frames.device, self.precision):
            x, placement = self._prepare(frames)
            logits = self.model.parse(x)["fusion"].float()
            return logits_to_frame_grid(logits, placement, output_size or frames.shape[-2:])

    def forward_with_features(
        self, frames: Tensor, output_size: Sequence[int] | None = None, feature_size: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits as :meth:`forward`, and the PSP context features ``[N, 512, *feature_size]``
        (default ``output_size``) sampled over the frame (see :func:`~hcframe_parsing.frames.sample_frame_grid`)."""
        with teacher_precision(frames.device, self.precision):
            x, placement = self._prepare(frames)
            out = self.model.parse(x)
            size = output_size or frames.shape[-2:]
            fusion, context = out["fusion"].float(), out["context"].float()
            return logits_to_frame_grid(fusion, placement, size), sample_frame_grid(context, placement, feature_size or size)
