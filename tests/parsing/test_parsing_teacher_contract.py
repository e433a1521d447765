"""The Teacher contract (hcframe.Teacher): capabilities are declared, checked when a teacher class is
defined, and are all the parsing task and the cache look at; a teacher written elsewhere, with no
relation to the shipped classes, is handled by what it declares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hcframe
from hcframe_parsing.cache import cache_teacher, run_teacher
from hcframe_parsing.distill import ParsingDistillation
from hcframe_parsing.ground_truth import GroundTruthTeacher
from hcframe_parsing.schp import SCHPTeacher
from hcframe_parsing.torchscript_teacher import TorchScriptTeacher
from hcframe_video.partmaps import PartMapStore, PartMapWriter
from parsing_helpers import FolderVideos

LABELS = ("bg", "person")


class StoredMapsTeacher(hcframe.Teacher):
    """A third-party teacher made of stored maps (not a GroundTruthTeacher)."""

    online = False

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root, self.label_names = root, LABELS

    def identity(self):
        return {"architecture": "stored-maps-test"}

    def forward(self, frames, output_size=None):
        raise RuntimeError("not run on frames")

    def target_store(self, dataset):
        return PartMapStore(self.root)


class WrongGrid(hcframe.Teacher):
    """Breaks the contract: ignores output_size."""

    def __init__(self) -> None:
        super().__init__()
        self.label_names = LABELS

    def identity(self):
        return {"architecture": "wrong-grid-test"}

    def forward(self, frames, output_size=None):
        return torch.zeros(frames.shape[0], 2, 3, 3)


def test_declared_capabilities_of_the_shipped_teachers():
    assert (GroundTruthTeacher.online, GroundTruthTeacher.feature_dim) == (False, None)
    assert (TorchScriptTeacher.online, TorchScriptTeacher.feature_dim) == (True, None)
    assert (SCHPTeacher.online, SCHPTeacher.feature_dim) == (True, 512)


def test_a_capability_without_its_method_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match="Broken sets feature_dim but does not implement forward_with_features"):
        type("Broken", (WrongGrid,), {"feature_dim": 8})
    with pytest.raises(TypeError, match="Broken sets online = False but does not implement target_store"):
        type("Broken", (WrongGrid,), {"online": False})
    with pytest.raises(NotImplementedError, match="WrongGrid exposes no features"):
        WrongGrid().forward_with_features(torch.zeros(1, 3, 4, 4))
    assert WrongGrid().target_store(object()) is None  # online teachers have no store


def test_a_stored_maps_teacher_is_used_by_what_it_declares(tmp_path, video_folder):
    PartMapWriter(tmp_path / "maps", "labels", LABELS, {}).write_video("a", {0: np.ones((2, 2), np.uint8)})
    teacher = StoredMapsTeacher(str(tmp_path / "maps"))
    task = ParsingDistillation(teacher, cache=str(tmp_path / "ignored"))
    assert task.target_store(object()).root == tmp_path / "maps"  # its own store, not the cache
    with pytest.raises(RuntimeError, match="StoredMapsTeacher \\(stored targets, not run on frames\\) found no 'parts'"):
        task.online_targets({"views": [torch.zeros(1, 3, 1, 2, 2)], "pixel_mean": [0.0] * 3, "pixel_std": [1.0] * 3})
    with pytest.raises(ValueError, match="feature_distill_weight > 0 needs an online teacher"):
        ParsingDistillation(teacher, feature_distill_weight=1.0)
    with pytest.raises(ValueError, match="StoredMapsTeacher is not run on frames .*nothing to cache"):
        cache_teacher(teacher, FolderVideos(str(video_folder)), tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_run_teacher_refuses_logits_off_the_asked_grid():
    with pytest.raises(ValueError, match=r"teacher WrongGrid returned logits \[2, 2, 3, 3\] for output_size \[5, 6\]; .* must return \[2, 2, 5, 6\]"):
        run_teacher(WrongGrid(), torch.zeros(2, 3, 8, 8), (5, 6))
