"""A procedural world of articulated humanoids doing actions: frames and their part-label maps.

Everything is numpy and deterministic: video ``(split, index)`` of a world with seed ``seed`` is drawn
from ``numpy.random.default_rng([seed, split code, index])`` and the shared background bank from
``default_rng([seed, BANK_STREAM])``, so any one video regenerates alone, bit-identically, without
generating the others. Bit-identical means: same numpy version (numpy does not promise that a
``Generator``'s streams never change between releases; ``world.json`` records the versions used).
Geometry is snapped to 1/1024 pixel before rasterising, so last-bit differences of sin/cos between
CPUs do not move pixels.

The figure
    A humanoid is 13 capsules (a line segment with a radius; a circle when both ends coincide) in
    body units (standing height ~1): hair, face, torso, and per side upper arm, forearm, thigh,
    shin and shoe. Each action is a function of the cycle phase that sets limb angles, torso lean,
    pelvis height and horizontal travel. Left/right limbs get LIP's Left-*/Right-* labels. Actions
    that use one side (wave one hand, kick, punch) pick the side at random per video and travel
    direction / facing is random, so a horizontal flip keeps every label valid (the part maps'
    left/right labels must be swapped, 14<->15, 16<->17, 18<->19, when the pixels are flipped).

Rendering
    Frames and labels come from one rasterisation: every pixel centre is tested against every
    capsule of a layer inside the layer's per-frame bounding window only (that window is what
    makes generation fast), and the last-drawn covering capsule wins, for the colour and the label
    alike. Layers, back to front: background texture, distractors behind, the humanoid (far limbs,
    torso, near limbs, head, in an order that depends on the view), distractors in front (label
    Background). There is no anti-aliasing and clothing colours are flat, so in the raw frames a
    pixel labelled torso has exactly that video's shirt colour.

Camera
    An integer per-frame offset (slow pan + jitter) shifts the whole scene; backgrounds are drawn
    with a margin so the shifted view never leaves the texture.

Identity shortcuts (``shortcut_strength`` s in [0, 1])
    Clothing/skin colours are ``(1-s) * uniform + s * random`` (s=0: everyone wears the same
    uniform), backgrounds are ``(1-s) * one shared plain texture + s * a texture from the bank``,
    and each of ``max_distractors`` distractors is present with probability s. At s=1 background,
    clothing and distractors identify a video well, which a contrastive objective can exploit
    instead of learning the motion; none of these depends on the action.
"""

from __future__ import annotations

import math
from typing import Callable

import attrs
import numpy as np

from hcframe_video.partmaps import LIP_LABELS

__all__ = [
    "ACTIONS",
    "BANK_STREAM",
    "SPLIT_CODES",
    "RenderedVideo",
    "WorldConfig",
    "background_bank",
    "render_video",
    "video_label",
    "video_rng",
]

# LIP label ids used by the humanoid.
BACKGROUND, HAIR, UPPER_CLOTHES, FACE = 0, 2, 5, 13
LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG, LEFT_SHOE, RIGHT_SHOE = 14, 15, 16, 17, 18, 19
assert LIP_LABELS[UPPER_CLOTHES] == "Upper-clothes" and LIP_LABELS[RIGHT_SHOE] == "Right-shoe"

SPLIT_CODES = {"train": 1, "test": 2}
BANK_STREAM = 99  # rng stream id of the shared background bank (splits use 1, 2)


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


@attrs.frozen
class WorldConfig:
    """What the world looks like (everything a generated video depends on, besides the seed).

    height, width: frame size in pixels (even, for H.264 4:2:0), 16..512.
    num_frames: frames per video (>= 2).
    shortcut_strength: 0..1, how strongly background, clothing and distractors identify a video.
    num_backgrounds: textures in the shared bank (>= 1).
    max_distractors: moving non-human objects per video at full shortcut strength (0..8).
    jitter: camera shake amplitude in pixels (0..8); the camera also pans up to ``jitter`` px/frame / 2.
    min_person, max_person: person height as a fraction of the frame height.
    """

    height: int = 32
    width: int = 32
    num_frames: int = 16
    shortcut_strength: float = 1.0
    num_backgrounds: int = 8
    max_distractors: int = 3
    jitter: int = 1
    min_person: float = 0.55
    max_person: float = 0.85

    def __attrs_post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if not (16 <= v <= 512 and v % 2 == 0):
                raise ValueError(f"{name} must be an even number of pixels in 16..512, got {v}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        _check_range("shortcut_strength", self.shortcut_strength, 0.0, 1.0)
        if self.num_backgrounds < 1:
            raise ValueError(f"num_backgrounds must be >= 1, got {self.num_backgrounds}")
        _check_range("max_distractors", self.max_distractors, 0, 8)
        _check_range("jitter", self.jitter, 0, 8)
        _check_range("min_person", self.min_person, 0.2, 1.0)
        _check_range("max_person", self.max_person, self.min_person, 1.0)

    @property
    def margin(self) -> int:
        """Texture margin around the view, enough for the largest pan + jitter."""
        return self.jitter + (self.jitter * self.num_frames + 1) // 2 + 1


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator all of video ``index`` of ``split`` is drawn from."""
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])


def video_label(split: str, index: int, num_classes: int) -> int:
    """Actions cycle through the classes, so every split is balanced (counts differ by <= 1)."""
    del split
    return index % num_classes


# --- poses -----------------------------------------------------------------------------------------
# A pose is a dict of arrays over frames (angles in radians, lengths in body units):
#   arm_up[s], arm_fore[s], leg_up[s], leg_low[s]  absolute limb angles, 0 = pointing down,
#       positive = rotated towards +x (image right); s = 0 left, 1 right
#   lean      torso angle from vertical (positive leans towards +x)
#   drop      how far the pelvis is below standing height
#   travel    horizontal displacement of the whole body
# A side view ("side") puts both shoulders/hips near the body axis with the far limbs behind the
# torso; a front view ("front") spreads them and draws both arms in front.
Pose = dict[str, np.ndarray]
DEG = math.pi / 180.0


def _standing(n: int) -> Pose:
    z = np.zeros(n)
    return {
        "arm_up": np.stack([z + 8 * DEG, z - 8 * DEG]),
        "arm_fore": np.stack([z + 5 * DEG, z - 5 * DEG]),
        "leg_up": np.stack([z + 4 * DEG, z - 4 * DEG]),
        "leg_low": np.stack([z + 2 * DEG, z - 2 * DEG]),
        "lean": z.copy(),
        "drop": z.copy(),
        "travel": z.copy(),
    }


def _stride(u: np.ndarray, d: float, hip: float, knee: float, knee_lag: float, arm: float, elbow: float) -> Pose:
    """The legs and arms of a walking or running stride: thighs swing by ``hip`` degrees in
    counter-phase, each knee bends up to ``knee`` degrees ``knee_lag`` radians after its thigh,
    the arms swing ``arm`` times the thighs' swing against them, elbows bent by ``elbow`` degrees."""
    w = 2 * math.pi * u
    p = _standing(len(u))
    swing = hip * DEG * np.sin(w)
    p["leg_up"] = np.stack([d * swing, -d * swing])
    bend = knee * DEG * np.clip(-np.sin(w - knee_lag), 0, None), knee * DEG * np.clip(np.sin(w - knee_lag), 0, None)
    p["leg_low"] = np.stack([p["leg_up"][0] - d * bend[0], p["leg_up"][1] - d * bend[1]])
    p["arm_up"] = np.stack([-arm * d * swing, arm * d * swing])
    p["arm_fore"] = p["arm_up"] + d * elbow * DEG
    return p


def _walk(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    p = _stride(u, d, hip=25, knee=25, knee_lag=0.6, arm=0.8, elbow=15)
    p["drop"] = 0.015 * (1 - np.cos(2 * (2 * math.pi * u)))
    p["travel"] = d * 0.35 * cycles
    return p


def _run(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    p = _stride(u, d, hip=42, knee=70, knee_lag=0.4, arm=0.9, elbow=85)
    p["lean"] = d * 12 * DEG + 0 * u
    p["drop"] = 0.05 * np.abs(np.cos(2 * math.pi * u))
    p["travel"] = d * 0.5 * cycles
    return p


def _jump(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    air = np.clip(np.sin(w), 0, None)  # 0..1 while airborne
    crouch = np.clip(-np.sin(w), 0, None)  # 0..1 while crouching before take-off / after landing
    p["drop"] = 0.14 * crouch - 0.30 * air
    thigh = (6 + 40 * crouch) * DEG
    p["leg_up"] = np.stack([thigh, -thigh])
    p["leg_low"] = np.stack([thigh - 70 * DEG * crouch, -thigh + 70 * DEG * crouch])
    arm = (15 + 140 * air) * DEG
    p["arm_up"] = np.stack([arm, -arm])
    p["arm_fore"] = np.stack([arm + 10 * DEG, -arm - 10 * DEG])
    return p


def _wave_one(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    s = 1.0 if side == 0 else -1.0
    p["arm_up"][side] = s * 125 * DEG + 0 * u
    p["arm_fore"][side] = s * (165 * DEG + 35 * DEG * np.sin(w))
    return p


def _wave_both(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    fore = 165 * DEG + 35 * DEG * np.sin(w)
    p["arm_up"] = np.stack([125 * DEG + 0 * u, -125 * DEG + 0 * u])
    p["arm_fore"] = np.stack([fore, -fore])
    return p


def _squat(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    depth = 0.5 * (1 - np.cos(w))
    p["drop"] = 0.17 * depth
    thigh = (6 + 62 * depth) * DEG
    p["leg_up"] = np.stack([thigh, -thigh])
    p["leg_low"] = np.stack([thigh - 80 * DEG * depth, -thigh + 80 * DEG * depth])
    arm = (10 + 78 * depth) * DEG
    p["arm_up"] = np.stack([arm, -arm])
    p["arm_fore"] = np.stack([arm, -arm])
    return p


def _clap(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    opened = 0.5 * (1 + np.cos(w))
    upper = (28 + 22 * opened) * DEG
    fore = (-95 + 75 * opened) * DEG
    p["arm_up"] = np.stack([upper, -upper])
    p["arm_fore"] = np.stack([fore, -fore])
    return p


def _kick(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    lift = np.clip(np.sin(w), 0, None) ** 1.5
    p["leg_up"][side] = d * 85 * DEG * lift
    p["leg_low"][side] = d * (85 * DEG * lift - 35 * DEG * (1 - lift) * np.clip(np.sin(w), 0, None))
    p["arm_up"] = np.stack([35 * DEG + 0 * u, -35 * DEG + 0 * u])
    p["arm_fore"] = p["arm_up"].copy()
    p["lean"] = -d * 10 * DEG * lift
    return p


def _punch(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    ext = [np.clip(np.sin(w), 0, None), np.clip(-np.sin(w), 0, None)]
    if side == 1:
        ext.reverse()
    for s in (0, 1):
        p["arm_up"][s] = d * (25 + 65 * ext[s]) * DEG
        p["arm_fore"][s] = d * (150 - 60 * ext[s]) * DEG
    p["leg_up"] = np.stack([d * 14 * DEG + 0 * u, -d * 10 * DEG + 0 * u])
    p["leg_low"] = p["leg_up"].copy()
    return p


def _bend(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    bend = 0.5 * (1 - np.cos(w))
    p["lean"] = d * 80 * DEG * bend
    p["arm_up"] = np.stack([d * 20 * DEG * bend + 4 * DEG, d * 20 * DEG * bend - 4 * DEG])
    p["arm_fore"] = p["arm_up"].copy()
    p["leg_up"] = np.stack([-d * 8 * DEG * bend, -d * 8 * DEG * bend])
    p["leg_low"] = p["leg_up"].copy()
    p["drop"] = 0.02 * bend
    return p


def _jumping_jacks(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    o = 0.5 * (1 - np.cos(w))
    arm = (15 + 145 * o) * DEG
    leg = (4 + 22 * o) * DEG
    p["arm_up"] = np.stack([arm, -arm])
    p["arm_fore"] = np.stack([arm + 8 * DEG * o, -arm - 8 * DEG * o])
    p["leg_up"] = np.stack([leg, -leg])
    p["leg_low"] = p["leg_up"].copy()
    p["drop"] = -0.07 * np.sin(w) ** 2
    return p


def _march(u: np.ndarray, cycles: np.ndarray, d: float, side: int) -> Pose:
    w = 2 * math.pi * u
    p = _standing(len(u))
    lift = [np.clip(np.sin(w), 0, None), np.clip(-np.sin(w), 0, None)]
    for s in (0, 1):
        p["leg_up"][s] = d * 80 * DEG * lift[s]
        p["leg_low"][s] = d * 5 * DEG * lift[s]
        p["arm_up"][s] = -d * 40 * DEG * lift[s] + d * 30 * DEG * lift[1 - s]
        p["arm_fore"][s] = p["arm_up"][s] + d * 60 * DEG * (lift[1 - s])
    return p


@attrs.frozen
class Action:
    name: str
    pose: Callable[[np.ndarray, np.ndarray, float, int], Pose]
    cycles_per_frame: float  # at speed 1
    view: str  # "side" or "front"


ACTIONS: tuple[Action, ...] = (
    Action("walk", _walk, 1 / 12, "side"),
    Action("run", _run, 1 / 7, "side"),
    Action("jump", _jump, 1 / 10, "front"),
    Action("wave_one_hand", _wave_one, 1 / 6, "front"),
    Action("wave_both_hands", _wave_both, 1 / 6, "front"),
    Action("squat", _squat, 1 / 12, "front"),
    Action("clap", _clap, 1 / 6, "front"),
    Action("kick", _kick, 1 / 10, "side"),
    Action("punch", _punch, 1 / 6, "side"),
    Action("bend", _bend, 1 / 14, "side"),
    Action("jumping_jacks", _jumping_jacks, 1 / 8, "front"),
    Action("march_in_place", _march, 1 / 10, "side"),
)
ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in ACTIONS)

# Body proportions (standing height ~1).
TORSO_LEN, TORSO_R = 0.31, 0.075
HEAD_R, NECK_TO_HEAD = 0.08, 0.11
UPPER_ARM, FOREARM, ARM_R = 0.16, 0.15, 0.032
THIGH, SHIN, LEG_R = 0.23, 0.22, 0.042
SHOE_LEN, SHOE_R = 0.06, 0.028
HIP_TO_FLOOR = THIGH + SHIN + SHOE_R


def _direction(angle: np.ndarray) -> np.ndarray:
    """Unit vector (x, y-up) of a limb angle (0 = down, positive towards +x); [..., 2]."""
    return np.stack([np.sin(angle), -np.cos(angle)], axis=-1)


def humanoid_capsules(pose: Pose, view: str, facing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Capsules of the figure in body units (x right, y up, origin = pelvis at standing height).

    Returns (segments [T, P, 2, 2], radii [P], labels [P]) in drawing order (last drawn on top).
    """
    lean = pose["lean"]
    pelvis = np.stack([pose["travel"], -pose["drop"]], axis=-1)  # [T, 2]
    up = -_direction(lean)  # torso axis
    across = np.stack([np.cos(lean), np.sin(lean)], axis=-1)  # perpendicular, towards +x at lean 0
    neck = pelvis + TORSO_LEN * up
    head = neck + NECK_TO_HEAD * up
    spread_sh, spread_hip = (0.085, 0.055) if view == "front" else (0.02, 0.015)
    parts: dict[str, tuple[np.ndarray, np.ndarray, float, int]] = {}
    for s, sign in ((0, 1.0), (1, -1.0)):
        # front view: the person faces the camera, so their left side is at image right (+x)
        offset = sign if view == "front" else sign * facing
        shoulder = neck - 0.03 * up + offset * spread_sh * across
        elbow = shoulder + UPPER_ARM * _direction(pose["arm_up"][s])
        hand = elbow + FOREARM * _direction(pose["arm_fore"][s])
        hip = pelvis + offset * spread_hip * np.stack([np.ones_like(lean), np.zeros_like(lean)], -1)
        knee = hip + THIGH * _direction(pose["leg_up"][s])
        ankle = knee + SHIN * _direction(pose["leg_low"][s])
        toe_dir = facing if view == "side" else sign * 0.6
        toe = ankle + np.array([toe_dir * SHOE_LEN, 0.0])
        arm_label, leg_label, shoe_label = (LEFT_ARM, LEFT_LEG, LEFT_SHOE) if s == 0 else (RIGHT_ARM, RIGHT_LEG, RIGHT_SHOE)
        parts[f"upper_arm{s}"] = (shoulder, elbow, ARM_R, arm_label)
        parts[f"forearm{s}"] = (elbow, hand, ARM_R * 0.9, arm_label)
        parts[f"thigh{s}"] = (hip, knee, LEG_R, leg_label)
        parts[f"shin{s}"] = (knee, ankle, LEG_R * 0.85, leg_label)
        parts[f"shoe{s}"] = (ankle, toe, SHOE_R, shoe_label)
    parts["torso"] = (pelvis + 0.02 * up, neck - 0.01 * up, TORSO_R, UPPER_CLOTHES)
    parts["hair"] = (head + 0.025 * up, head + 0.025 * up, HEAD_R, HAIR)
    parts["face"] = (head - 0.012 * up, head - 0.012 * up, HEAD_R * 0.9, FACE)
    if view == "front":
        order = ["thigh0", "thigh1", "shin0", "shin1", "shoe0", "shoe1", "torso", "hair", "face",
                 "upper_arm0", "upper_arm1", "forearm0", "forearm1"]  # fmt: skip
    else:
        # the side nearer the camera: the person's left when facing +x
        near, far = (0, 1) if facing > 0 else (1, 0)
        order = [f"upper_arm{far}", f"forearm{far}", f"thigh{far}", f"shin{far}", f"shoe{far}", "torso",
                 f"thigh{near}", f"shin{near}", f"shoe{near}", "hair", "face", f"upper_arm{near}", f"forearm{near}"]  # fmt: skip
    segments = np.stack([np.stack([parts[n][0], parts[n][1]], axis=1) for n in order], axis=1)  # [T, P, 2, 2]
    radii = np.array([parts[n][2] for n in order])
    labels = np.array([parts[n][3] for n in order], dtype=np.uint8)
    return segments, radii, labels


# --- rasterisation ---------------------------------------------------------------------------------
def _snap(values: np.ndarray) -> np.ndarray:
    """Round geometry to 1/1024 pixel before rasterising. The poses use sin/cos, whose last bit may
    differ between CPUs (numpy dispatches to different SIMD code); snapping absorbs that, so which
    pixel a capsule covers does not depend on the machine. Snapped values are exact in float32."""
    return np.round(np.asarray(values, dtype=np.float64) * 1024.0) / 1024.0


def rasterise_capsules(segments: np.ndarray, radii: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Which capsule covers each pixel, inside each frame's bounding window.

    segments: [T, P, 2, 2] endpoints in pixel coordinates (x right, y down); radii: [P] pixels.
    Returns (origin [T, 2] (y0, x0) of each frame's window, winner [T, hb, wb] int) where winner is
    1 + the index of the last capsule covering the pixel centre, 0 where none does. The window may
    extend beyond the frame; callers clip when pasting.
    """
    lo = np.floor((segments.min(axis=2) - radii[None, :, None]).min(axis=1)).astype(np.int64)  # [T, 2] (x, y)
    hi = np.ceil((segments.max(axis=2) + radii[None, :, None]).max(axis=1)).astype(np.int64)
    lo = np.clip(lo, [-1, -1], [width, height])  # nothing outside the frame is ever pasted
    hi = np.clip(hi, lo + 1, [width + 1, height + 1])
    size = (hi - lo).max(axis=0)  # (wb, hb)
    wb, hb = int(size[0]), int(size[1])
    # float32 is exact enough here (coordinates < 1000 px) and halves the work
    seg = segments.astype(np.float32)
    a = seg[:, :, 0]  # [T, P, 2]
    ab = seg[:, :, 1] - a
    len2 = np.maximum((ab**2).sum(-1), np.float32(1e-12))  # [T, P]
    ys = (lo[:, 1, None] + np.arange(hb)[None]).astype(np.float32) + np.float32(0.5)  # [T, hb]
    xs = (lo[:, 0, None] + np.arange(wb)[None]).astype(np.float32) + np.float32(0.5)  # [T, wb]
    px = xs[:, None, None, :] - a[..., 0, None, None]  # [T, P, 1, wb]
    py = ys[:, None, :, None] - a[..., 1, None, None]  # [T, P, hb, 1]
    abx, aby = ab[..., 0, None, None], ab[..., 1, None, None]
    t = np.clip((px * abx + py * aby) / len2[:, :, None, None], 0.0, 1.0)
    dx = px - t * abx
    dy = py - t * aby
    covered = dx * dx + dy * dy <= (radii.astype(np.float32) ** 2)[None, :, None, None]  # [T, P, hb, wb]
    # the last covering capsule wins: index of the last True along P, plus one (0 = none)
    num = segments.shape[1]
    last = num - np.argmax(covered[:, ::-1], axis=1)
    winner = np.where(covered.any(axis=1), last, 0)
    return lo[:, ::-1].copy(), winner


def _paste(frames: np.ndarray, labels: np.ndarray | None, origin: np.ndarray, winner: np.ndarray,
           colours: np.ndarray, part_labels: np.ndarray | None) -> None:
    """Paint ``colours[w-1]`` (and ``part_labels[w-1]``) where winner w > 0, clipped to the frame."""
    num_frames, height, width = frames.shape[:3]
    t, i, j = np.nonzero(winner)
    y = origin[t, 0] + i
    x = origin[t, 1] + j
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    t, y, x = t[inside], y[inside], x[inside]
    which = winner[t, i[inside], j[inside]] - 1
    frames[t, y, x] = colours[which]
    if labels is not None and part_labels is not None:
        labels[t, y, x] = part_labels[which]


# --- backgrounds -----------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid: smooth blobs in [0, 1]."""
    grid = rng.random((cells + 2, cells + 2))
    ys = np.linspace(0, cells, height)
    xs = np.linspace(0, cells, width)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx)


def _texture(rng: np.random.Generator, height: int, width: int, contrast: float) -> np.ndarray:
    """A float [height, width, 3] texture in 0..255: floor/wall split, stripes and blobs."""
    base = rng.uniform(40, 200, size=3)
    floor = rng.uniform(40, 200, size=3)
    horizon = rng.uniform(0.45, 0.8) * height
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.where((yy < horizon)[..., None], base, floor)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(4, 12) * height / 32
    stripes = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    stripe_colour = rng.normal(0, 1, size=3)
    blobs = _smooth_noise(rng, height, width, cells=int(rng.integers(2, 6))) - 0.5
    blob_colour = rng.normal(0, 1, size=3)
    img = img + contrast * (28 * stripes[..., None] * stripe_colour + 90 * blobs[..., None] * blob_colour)
    return np.clip(img, 0, 255)


def background_bank(config: WorldConfig, seed: int) -> np.ndarray:
    """The shared textures, uint8 [num_backgrounds, H + 2m, W + 2m, 3] (m = ``config.margin``),
    already mixed with the plain shared texture by ``shortcut_strength``."""
    rng = np.random.default_rng([int(seed), BANK_STREAM])
    m = config.margin
    h, w = config.height + 2 * m, config.width + 2 * m
    plain = _texture(rng, h, w, contrast=0.25)
    s = config.shortcut_strength
    bank = [(1 - s) * plain + s * _texture(rng, h, w, contrast=1.0) for _ in range(config.num_backgrounds)]
    return np.round(np.stack(bank)).astype(np.uint8)


# --- a whole video ---------------------------------------------------------------------------------
UNIFORM_COLOURS = {  # what everyone wears at shortcut_strength 0
    "skin": (200, 160, 130), "hair": (60, 45, 35), "shirt": (40, 70, 160), "pants": (70, 70, 80), "shoes": (30, 30, 30),
}  # fmt: skip


@attrs.frozen
class RenderedVideo:
    """One generated video. ``frames`` uint8 [T, H, W, 3] RGB; ``labels`` uint8 [T, H, W] LIP ids;
    ``label`` the action index; ``details`` what was drawn (for tests and inspection)."""

    frames: np.ndarray
    labels: np.ndarray
    label: int
    details: dict


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated random colour (float RGB 0..255) from random hue, saturation and value."""
    hue, sat, val = rng.uniform(0, 6), rng.uniform(0.45, 1.0), rng.uniform(110, 245)
    rgb = np.clip(np.abs((hue + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)  # the HSV hexcone
    return np.round(val * (1 - sat + sat * rgb)).clip(0, 255)


def render_video(config: WorldConfig, seed: int, split: str, index: int, bank: np.ndarray | None = None) -> RenderedVideo:
    """Generate video ``index`` of ``split`` (deterministic in ``config``, ``seed``, ``split``, ``index``).

    ``bank`` is :func:`background_bank` of the same config and seed (pass it to avoid recomputing).
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_CODES)}, got {split!r}")
    if bank is None:
        bank = background_bank(config, seed)
    rng = video_rng(seed, split, index)
    H, W, T = config.height, config.width, config.num_frames
    s = config.shortcut_strength
    label = video_label(split, index, len(ACTIONS))
    action = ACTIONS[label]

    # --- who, where, how fast (drawn in a fixed order: never reorder these draws) ---
    speed = rng.uniform(0.75, 1.35)
    phase = rng.uniform(0, 1)
    facing = 1.0 if rng.random() < 0.5 else -1.0
    side = int(rng.integers(0, 2))
    person = rng.uniform(config.min_person, config.max_person) * H  # pixels per body unit
    x_mid = rng.uniform(0.3, 0.7) * W
    feet_y = rng.uniform(0.88, 0.98) * H
    colours = {}
    for part in ("skin", "hair", "shirt", "pants", "shoes"):
        uniform = np.array(UNIFORM_COLOURS[part], dtype=np.float64)
        colours[part] = np.round((1 - s) * uniform + s * _random_colour(rng)).clip(0, 255).astype(np.uint8)
    long_sleeves = bool(rng.random() < 0.5)
    background_id = int(rng.integers(0, config.num_backgrounds))
    pan = rng.uniform(-0.5, 0.5, size=2) * config.jitter
    shake = rng.integers(-config.jitter, config.jitter + 1, size=(T, 2)) if config.jitter else np.zeros((T, 2), int)
    n_distractors = int((rng.random(config.max_distractors) < s).sum())
    distractors = []
    for _ in range(n_distractors):
        distractors.append({
            "start": rng.uniform([0, 0], [W, H]),
            "velocity": rng.uniform(-1.2, 1.2, size=2) * W / 32,
            "wobble": rng.uniform(0, 2 * math.pi),
            "length": rng.uniform(0, 4) * W / 32,
            "radius": rng.uniform(1.0, 2.6) * W / 32,
            "spin": rng.uniform(-0.5, 0.5),
            "colour": _random_colour(rng).astype(np.uint8),
            "in_front": bool(rng.random() < 0.3),
        })  # fmt: skip

    # --- the figure ---
    frame_no = np.arange(T, dtype=np.float64)
    cycles = speed * action.cycles_per_frame * (frame_no - (T - 1) / 2)  # 0 in the middle of the video
    u = (phase + cycles) % 1.0
    pose = action.pose(u, cycles, facing, side)
    segments, radii, part_labels = humanoid_capsules(pose, action.view, facing)
    camera = np.round(pan[None] * frame_no[:, None] + shake).astype(np.int64)  # [T, 2] (x, y) scene shift
    pelvis_px = np.array([x_mid, feet_y - HIP_TO_FLOOR * person])
    seg_px = np.empty_like(segments)
    seg_px[..., 0] = pelvis_px[0] + person * segments[..., 0] - camera[:, None, None, 0]
    seg_px[..., 1] = pelvis_px[1] - person * segments[..., 1] - camera[:, None, None, 1]
    radii_px = np.maximum(radii * person, 0.75)
    arm_colour = colours["shirt"] if long_sleeves else colours["skin"]
    by_label = {HAIR: colours["hair"], FACE: colours["skin"], UPPER_CLOTHES: colours["shirt"],
                LEFT_ARM: arm_colour, RIGHT_ARM: arm_colour, LEFT_LEG: colours["pants"], RIGHT_LEG: colours["pants"],
                LEFT_SHOE: colours["shoes"], RIGHT_SHOE: colours["shoes"]}  # fmt: skip
    part_colours = np.stack([by_label[int(lab)] for lab in part_labels])

    # --- compose ---
    m = config.margin
    tex = bank[background_id]
    frames = np.empty((T, H, W, 3), dtype=np.uint8)
    for t in range(T):
        y0, x0 = m + camera[t, 1], m + camera[t, 0]
        frames[t] = tex[y0 : y0 + H, x0 : x0 + W]
    labels = np.zeros((T, H, W), dtype=np.uint8)

    def draw_distractor(d: dict) -> None:
        centre = d["start"][None] + d["velocity"][None] * frame_no[:, None]
        centre += 1.5 * np.stack([np.sin(0.7 * frame_no + d["wobble"]), np.cos(0.5 * frame_no + d["wobble"])], -1)
        centre = np.mod(centre + 4, [W + 8, H + 8]) - 4  # wrap around, leaving/entering the view
        angle = d["wobble"] + d["spin"] * frame_no
        half = 0.5 * d["length"] * np.stack([np.cos(angle), np.sin(angle)], -1)
        seg = np.stack([centre - half, centre + half], axis=1)[:, None] - camera[:, None, None]
        origin, winner = rasterise_capsules(_snap(seg), _snap(np.array([d["radius"]])), H, W)
        _paste(frames, labels if d["in_front"] else None, origin, winner, d["colour"][None],
               np.array([BACKGROUND], dtype=np.uint8))

    for d in distractors:
        if not d["in_front"]:
            draw_distractor(d)
    origin, winner = rasterise_capsules(_snap(seg_px), _snap(radii_px), H, W)
    _paste(frames, labels, origin, winner, part_colours, part_labels)
    for d in distractors:
        if d["in_front"]:
            draw_distractor(d)

    details = {
        "action": action.name, "speed": speed, "phase": phase, "facing": facing, "side": side,
        "person_px": person, "colours": colours, "long_sleeves": long_sleeves, "background_id": background_id,
        "camera": camera, "distractors": distractors, "label_colours": by_label,
    }  # fmt: skip
    return RenderedVideo(frames=frames, labels=labels, label=label, details=details)
