"""Small building blocks shared by the backbones: argument checks, conv-BN-ReLU units, weight init.

Everything here takes explicit arguments so research code can reuse it without a recipe.
"""

from typing import Sequence

from torch import nn

__all__ = [
    "ConvBNReLU3d",
    "check_bool",
    "check_int_choice",
    "check_int_list",
    "check_positive_float",
    "check_positive_int",
    "init_video_weights",
    "scale_channels",
    "triple",
]


def triple(temporal: int, spatial: int) -> tuple[int, int, int]:
    """A ``(t, h, w)`` size from one temporal and one spatial value."""
    return (temporal, spatial, spatial)


# --- argument checks (one-line ValueErrors that name the argument) -------------------------------
def check_positive_int(owner: str, name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``; bools and floats are refused (TOML ``true`` is not a width)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_int_choice(owner: str, name: str, value: object, allowed: Sequence[int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ValueError(f"{owner}: {name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_positive_float(owner: str, name: str, value: object, upper: float | None = None) -> float:
    """``value`` as a float in ``(0, upper]`` (ints are accepted: TOML writes ``1`` for ``1.0``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or (upper is not None and value > upper):
        allowed = f"in (0, {upper}]" if upper is not None else "> 0"
        raise ValueError(f"{owner}: {name} must be a number {allowed}, got {value!r}")
    return float(value)


def check_bool(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be true or false, got {value!r}")
    return value


def check_int_list(owner: str, name: str, value: object, length: int, allowed: Sequence[int] | None = None, minimum: int = 1) -> list[int]:
    """``value`` as a list of ``length`` ints, each in ``allowed`` (or ``>= minimum`` when not given)."""
    what = f"a list of {length} integers " + (f"from {sorted(set(allowed))}" if allowed is not None else f">= {minimum}")
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
    for v in value:
        bad_type = isinstance(v, bool) or not isinstance(v, int)
        if bad_type or (allowed is not None and v not in allowed) or (allowed is None and v < minimum):
            raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
    return list(value)


def scale_channels(published: int, width: int, published_width: int = 64) -> int:
    """A published channel count rescaled to a base width (``width == published_width`` is exact)."""
    return max(1, round(published * width / published_width))


# --- layers -------------------------------------------------------------------------------------
class ConvBNReLU3d(nn.Sequential):
    """``Conv3d`` (no bias: the batch norm has one) -> ``BatchNorm3d`` -> ``ReLU``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
        padding: tuple[int, int, int] = (0, 0, 0),
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(inplace=True),
        )


def init_video_weights(module: nn.Module) -> None:
    """The published video-ResNet initialisation, applied to every submodule.

    Convolutions: Kaiming normal with ``fan_out`` for ReLU (He et al. 2015), bias 0; batch norms:
    weight 1, bias 0; linear layers (S3D-G gates): normal(0, 0.01), bias 0, so a gate starts near
    ``sigmoid(0) = 0.5`` for every channel instead of at a random per-channel value.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
