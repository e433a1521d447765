"""The data contract between dataset plugins and the engine.

A dataset is a map-style :class:`torch.utils.data.Dataset` (it has ``__len__``, so samplers,
DistributedSampler and worker counts behave). The engine's samplers ask for ``dataset[(i, epoch)]``
(research code may ask for ``dataset[i]``, meaning epoch 0): every random draw for that sample (clip
start, any spatial crop the dataset draws) comes from a generator seeded by ``(dataset seed, epoch,
i)``, so a sample does not depend on which worker or rank loads it, and an epoch replays identically
after a resume even with persistent workers. ``dataset[...]`` returns either a sample dict or a
:class:`BadVideo` record; the engine's :func:`collate` drops bad records from the batch and hands
them to the run, which reports each once and counts them in ``summary.json``. Nothing is ever
silently replaced by another video.

Sample keys (all tensors are CPU tensors; the batch transform does the per-pixel work later):

``views``          uint8 ``[V, 3, T, H, W]``: ``V`` clips of one video (``V`` = ``num_views``)
``label``          int64 scalar, the class index, or ``-1`` when the dataset has no labels
``index``          int64 scalar, the dataset index ``i``
``frame_indices``  int64 ``[V, T]``: the decoded frame number of every frame of every view
``parts``          float16 ``[V, K, T, h, w]`` (only when a target store is set): per-frame part
                   probabilities aligned with the pixels of each view; cells whose values sum to 0
                   are unknown and ignored by losses

Train-mode views may be whole frames, whose size differs between videos of other aspect ratios.
:func:`collate` then pads ``views`` (and ``parts``) to the largest height and width in the batch by
repeating each sample's last row and column, and records each sample's own size as int64 ``[B, 2]``
(height, width) under ``views_hw`` (``parts_hw``); a batch transform that crops draws its boxes
inside those sizes. Batches whose frames agree have neither key.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, NamedTuple, Sequence

import attrs
import torch
from torch.utils.data import Dataset, default_collate

__all__ = ["BadVideo", "ClipShape", "DatasetCheck", "TargetStore", "VideoDataset", "collate", "pad_picture", "sample_generator", "split_key"]

VIEWS = "views"
LABEL = "label"
INDEX = "index"
FRAME_INDICES = "frame_indices"
PARTS = "parts"
BAD = "bad_videos"
#: Picture keys padded to a common size by :func:`collate`, and the keys of their true sizes.
PADDED_SIZES = {VIEWS: "views_hw", PARTS: "parts_hw"}


class DatasetCheck(NamedTuple):
    """What :meth:`VideoDataset.check` tells of a dataset without building it."""

    num_videos: int
    class_names: tuple[str, ...]


class ClipShape(NamedTuple):
    """Frames, height and width of the clips a dataset returns (or a transform makes of them)."""

    frames: int
    height: int
    width: int


@attrs.frozen
class BadVideo:
    """A video that could not be read: returned by ``dataset[i]`` instead of a sample."""

    index: int
    path: str
    reason: str


class TargetStore(abc.ABC):
    """Per-frame soft part targets for the videos of a dataset (a teacher cache, or ground truth).

    ``read`` returns float ``[K, len(frame_indices), h, w]`` probabilities for one video, at the
    store's own resolution, covering the whole frame; the dataset crops and resizes them with the
    same box as the pixels.
    """

    label_names: tuple[str, ...]

    @abc.abstractmethod
    def read(self, video_id: str, frame_indices: Sequence[int]) -> torch.Tensor: ...


class VideoDataset(Dataset, abc.ABC):
    """Base of registered datasets.

    ``class_names`` lists the label names (empty when unlabelled). ``num_views`` and
    ``target_store`` are set by the engine before loading starts, from what the tasks declare.
    ``video_id(i)`` is a stable key for video ``i`` (its path relative to the dataset root), used by
    caches. ``video_path(i)`` is where it lives on disk, for error messages and ``check-videos``.
    """

    class_names: tuple[str, ...] = ()
    num_views: int = 1
    target_store: TargetStore | None = None
    #: False when horizontal flipping changes the label (e.g. wave-left vs wave-right).
    flip_preserves_label: bool = True

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | BadVideo:
        """``key`` is ``i`` or ``(i, epoch)``; see :func:`split_key` and :func:`sample_generator`."""

    @abc.abstractmethod
    def video_id(self, index: int) -> str: ...

    @abc.abstractmethod
    def video_path(self, index: int) -> str: ...

    @classmethod
    def clip_shape(cls, **args: Any) -> ClipShape | None:
        """The shape of the clips ``cls(**args)`` returns, worked out from the constructor
        arguments alone (``hcframe info`` does not build datasets: that may read or generate a
        whole dataset). ``None`` (the default): it cannot be told that way."""
        return None

    @classmethod
    def check(cls, **args: Any) -> DatasetCheck | None:
        """Check ``cls(**args)`` without building it, for a dataset whose construction does slow
        work (generating a world, indexing a large tree): raise what the constructor would raise
        for these arguments and files (``ValueError`` naming the argument, ``FileNotFoundError``
        naming the path), and return how many videos and which classes it would hold. ``None``
        (the default): building it is the check, and it is built. ``hcframe run --dry-run`` and
        ``hcframe info`` check datasets so; ``hcframe run`` builds them."""
        return None

    @classmethod
    def arguments(cls, **args: Any) -> dict[str, Any]:
        """``args`` with the constructor's defaults filled in (for :meth:`clip_shape`)."""
        bound = inspect.signature(cls).bind_partial(**args)
        bound.apply_defaults()
        return dict(bound.arguments)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels(self) -> list[int]:
        """Labels of all videos in index order, without decoding (for evaluation protocols)."""
        raise NotImplementedError(f"{type(self).__name__} does not list labels")


def split_key(key: int | tuple[int, int]) -> tuple[int, int]:
    """``dataset[i]`` or ``dataset[(i, epoch)]`` -> ``(i, epoch)``."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), 0


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for every random draw of one sample (see the module docstring)."""
    # Large odd multipliers keep (seed, epoch, index) triples from colliding for realistic ranges.
    mixed = (seed * 1_000_003 + epoch) * 2_147_483_647 + index
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


def pad_picture(picture: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``picture [..., h, w]`` grown to ``[..., height, width]`` by repeating its last row and
    column (so bilinear sampling at the true frame's edge sees the edge, not a false border)."""
    rows = torch.arange(height).clamp(max=picture.shape[-2] - 1)
    cols = torch.arange(width).clamp(max=picture.shape[-1] - 1)
    return picture[..., rows[:, None], cols[None, :]]


def _pad_to_common_size(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for key, size_key in PADDED_SIZES.items():
        sizes = [tuple(s[key].shape[-2:]) for s in samples if key in s]
        if len(sizes) != len(samples) or len(set(sizes)) <= 1:
            continue
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        samples = [
            {**s, key: pad_picture(s[key], height, width), size_key: torch.tensor(s[key].shape[-2:], dtype=torch.int64)}
            for s in samples
        ]
    return samples


def collate(samples: list[dict[str, Any] | BadVideo]) -> dict[str, Any]:
    """Default-collate the good samples (pictures of different sizes padded, see the module
    docstring); list the bad ones under ``bad_videos``."""
    good = _pad_to_common_size([s for s in samples if not isinstance(s, BadVideo)])
    bad = [s for s in samples if isinstance(s, BadVideo)]
    batch: dict[str, Any] = default_collate(good) if good else {}
    batch[BAD] = bad
    return batch
