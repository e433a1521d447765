"""The synthetic world's stored part maps as a teacher (perfect targets, no network)."""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

import hcframe
from hcframe_video.partmaps import LIP_LABELS, PartMapStore

__all__ = ["GroundTruthTeacher"]


class GroundTruthTeacher(hcframe.Teacher):
    """Targets read from a dataset's own stored part maps instead of a network's outputs.

    The dataset must have a ``ground_truth_parts()`` method returning a
    :class:`hcframe_video.partmaps.PartMapStore` (the ``synthetic_humans`` dataset does). In the
    :class:`hcframe.Teacher` contract this teacher is not ``online``: its :meth:`target_store`
    gives that store, which the distillation task hands to the dataset, so data workers load the
    maps with the clips exactly as they would load a teacher cache. ``forward`` raises, because the
    maps depend on the video, not on the pixels.

    Args:
        label_names: the class names the stored maps use, index order (default: the 20 LIP labels,
            which the synthetic world renders). Checked against the store when it is attached.
    """

    online = False

    def __init__(self, label_names: list[str] = list(LIP_LABELS)) -> None:  # noqa: B006 - copied below
        super().__init__()
        if len(label_names) < 2:
            raise ValueError(f"teacher.label_names must list at least 2 classes, got {list(label_names)}")
        self.label_names = tuple(label_names)
        self.store_identity: dict[str, Any] | None = None

    def target_store(self, dataset: Any) -> PartMapStore:
        """The dataset's ground-truth store, checked to use this teacher's label names."""
        getter = getattr(dataset, "ground_truth_parts", None)
        if getter is None:
            raise ValueError(
                f"teacher 'synthetic_ground_truth' needs a dataset with ground_truth_parts() "
                f"(e.g. synthetic_humans); {type(dataset).__name__} has none: use a parser teacher"
            )
        store = getter()
        if tuple(store.label_names) != self.label_names:
            raise ValueError(
                f"ground-truth part maps at {getattr(store, 'root', '?')} use labels {list(store.label_names)}, "
                f"teacher.label_names is {list(self.label_names)}; set teacher.label_names to the store's labels"
            )
        self.store_identity = dict(store.identity)
        return store

    def identity(self) -> dict[str, Any]:
        return {
            "architecture": "synthetic_ground_truth",
            "label_names": list(self.label_names),
            "store_identity": self.store_identity,
        }

    def forward(self, frames: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        raise RuntimeError(
            "teacher 'synthetic_ground_truth' has no online mode: its targets come from the dataset's "
            "stored part maps (target_store); make sure the engine set dataset.target_store from the task"
        )
