"""``synthetic_humans``: the synthetic human-action world as a registered video dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from hcframe.data import ClipShape, DatasetCheck

from hcframe_video.clips import VideoClipDataset, check_clip_arguments
from hcframe_video.partmaps import PartMapStore
from hcframe_video.synthetic.generate import (
    PARTS_DIR,
    SUBSETS,
    WorldSpec,
    build_world,
    check_world_root,
    default_cache_root,
    video_path,
)
from hcframe_video.synthetic.world import ACTION_NAMES, WorldConfig, video_label

__all__ = ["SyntheticHumans"]


class _WorldPlan(NamedTuple):
    spec: WorldSpec
    world_root: Path
    clip_arguments: dict[str, Any]
    subset: str
    workers: int


class SyntheticHumans(VideoClipDataset):
    """Humanoids doing 12 actions, generated deterministically from ``world_seed`` on first use.

    The world (both subsets) is written once as H.264 files plus ground-truth LIP part maps (see
    :mod:`hcframe_video.synthetic.generate`) and then read like any video dataset. Labels are the
    action indices (``class_names``: walk, run, jump, wave_one_hand, wave_both_hands, squat, clap,
    kick, punch, bend, jumping_jacks, march_in_place); every subset is balanced. Horizontal flips
    keep labels valid (one-sided actions use a random side per video).

    World arguments (a different value is a different world, in its own cache folder):
        root: where the world lives. Empty: ``$HCFRAME_CACHE`` (default ``~/.cache/hcframe``)
            ``/synthetic/<hash of the world arguments>``. A folder that already holds a world must
            hold this one (else ValueError listing the differences).
        num_train, num_test: videos per subset (train and test videos are disjoint).
        world_seed: seed of everything generated.
        height, width: frame size in pixels (even). num_frames: frames per video.
        shortcut_strength: 0..1, how strongly background, clothing and distractors identify a video.
        num_backgrounds: size of the background bank shared by all videos.
        max_distractors: moving non-human objects per video at full shortcut strength.
        jitter: camera shake in pixels. fps, crf: frame rate and H.264 quality of the files.
        workers: processes used to generate the world (0: up to 4, one per CPU).

    Reading arguments:
        subset: ``"train"`` or ``"test"``.
        clip_len, stride, short_side, crop_size, mode, num_clips, num_crops, seed, on_bad_video,
            part_size: as :class:`~hcframe_video.clips.VideoClipDataset`; ``short_side`` 0 means
            the frames' short side and ``crop_size`` 0 means ``short_side`` (whole frames).

    :meth:`ground_truth_parts` returns the world's part-map store (the ``synthetic_ground_truth``
    teacher's targets).
    """

    flip_preserves_label = True

    def __init__(
        self,
        root: str = "",
        subset: str = "train",
        num_train: int = 1000,
        num_test: int = 500,
        world_seed: int = 0,
        height: int = 32,
        width: int = 32,
        num_frames: int = 16,
        shortcut_strength: float = 1.0,
        num_backgrounds: int = 8,
        max_distractors: int = 3,
        jitter: int = 1,
        fps: int = 8,
        crf: int = 10,
        workers: int = 0,
        *,
        clip_len: int = 8,
        stride: int = 1,
        short_side: int = 0,
        crop_size: int = 0,
        mode: str = "train",
        num_clips: int = 2,
        num_crops: int = 1,
        seed: int = 0,
        on_bad_video: str = "skip",
        part_size: int = 0,
    ) -> None:
        plan = self._plan(
            root=root, subset=subset, num_train=num_train, num_test=num_test, world_seed=world_seed, height=height,
            width=width, num_frames=num_frames, shortcut_strength=shortcut_strength, num_backgrounds=num_backgrounds,
            max_distractors=max_distractors, jitter=jitter, fps=fps, crf=crf, workers=workers, clip_len=clip_len,
            stride=stride, short_side=short_side, crop_size=crop_size, mode=mode, num_clips=num_clips,
            num_crops=num_crops, seed=seed, on_bad_video=on_bad_video, part_size=part_size,
        )  # fmt: skip
        # Every argument is checked: only now is the world generated (once, on first use).
        self.world_root = build_world(plan.world_root, plan.spec, workers=plan.workers)
        self.spec = plan.spec
        self.subset = subset
        count = plan.spec.count(subset)
        paths = [video_path(subset, i) for i in range(count)]
        labels = [video_label(subset, i, len(ACTION_NAMES)) for i in range(count)]
        super().__init__(paths, labels, ACTION_NAMES, str(self.world_root), **plan.clip_arguments)

    @classmethod
    def check(cls, **args: Any) -> DatasetCheck:
        """Everything the constructor checks (arguments, a ``root`` holding another world), without
        generating the world: ``hcframe run --dry-run`` and ``hcframe info`` stay quick."""
        plan = cls._plan(**cls.arguments(**args))
        check_world_root(plan.world_root, plan.spec)
        return DatasetCheck(plan.spec.count(plan.subset), tuple(ACTION_NAMES))

    @classmethod
    def _plan(cls, **a: Any) -> _WorldPlan:
        """The checked arguments: the world, where it lives, the clip arguments."""
        if a["subset"] not in SUBSETS:
            raise ValueError(f"subset: expected one of {', '.join(SUBSETS)}, got {a['subset']!r}")
        if a["workers"] < 0:
            raise ValueError(f"workers: expected >= 0, got {a['workers']}")
        spec = WorldSpec(
            config=WorldConfig(
                height=a["height"], width=a["width"], num_frames=a["num_frames"], shortcut_strength=a["shortcut_strength"],
                num_backgrounds=a["num_backgrounds"], max_distractors=a["max_distractors"], jitter=a["jitter"],
            ),
            seed=a["world_seed"], num_train=a["num_train"], num_test=a["num_test"], fps=a["fps"], crf=a["crf"],
        )  # fmt: skip
        if spec.count(a["subset"]) == 0:
            raise ValueError(f"num_{a['subset']}: the {a['subset']} subset is empty; set num_{a['subset']} >= 1")
        short = a["short_side"] or min(a["height"], a["width"])
        clip_arguments = dict(
            clip_len=a["clip_len"], stride=a["stride"], short_side=short, crop_size=a["crop_size"] or short, mode=a["mode"],
            num_clips=a["num_clips"], num_crops=a["num_crops"], seed=a["seed"], on_bad_video=a["on_bad_video"],
            part_size=a["part_size"],
        )  # fmt: skip
        check_clip_arguments(**clip_arguments)
        root = a["root"]
        world_root = Path(root).expanduser() if root else default_cache_root() / "synthetic" / spec.key()
        if world_root.exists() and not world_root.is_dir():
            raise ValueError(f"root: {world_root} is a file; give a folder for the world (or leave root empty for the cache)")
        workers = a["workers"] or max(1, min(4, os.cpu_count() or 1))
        return _WorldPlan(spec, world_root, clip_arguments, a["subset"], workers)

    @classmethod
    def clip_shape(cls, **args: Any) -> ClipShape:
        """``clip_len`` frames; ``crop_size``, or ``short_side``, or the world's short side."""
        a = cls.arguments(**args)
        side = a["crop_size"] or a["short_side"] or min(a["height"], a["width"])
        return ClipShape(a["clip_len"], side, side)

    def ground_truth_parts(self) -> PartMapStore:
        """The world's per-frame LIP part labels (kind ``labels``, full frame resolution), checked
        to belong to this world."""
        return PartMapStore(self.world_root / PARTS_DIR, expected_identity=self.spec.parts_identity())
