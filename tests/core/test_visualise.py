"""Part maps over frames: SCHP's palette, the overlay, the grid the loggers and ``hcframe show``
draw, and what a training step hands to it (``MultiTaskModel.visualise``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hcframe import LabelMaps
from hcframe.visualise import UNKNOWN_COLOUR, label_map_grid, overlay, schp_palette

# PASCAL VOC's colour map, which SCHP's get_palette produces (class 0 .. 19).
VOC = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128), (128, 128, 128),
    (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128),
    (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0),
]  # fmt: skip


def _palette_from_bits(num):
    """The definition again, read off the binary digits: class c = ...b5 b4 b3 b2 b1 b0; red gets
    b0, b3, b6 ... from its top bit down, green b1, b4, ..., blue b2, b5, ..."""
    out = []
    for c in range(num):
        bits = format(c, "b")[::-1]  # b0 first
        channels = []
        for channel in range(3):
            mine = bits[channel::3]
            channels.append(int(mine.ljust(8, "0")[:8], 2))
        out.append(tuple(channels))
    return out


def test_schp_palette_is_the_voc_colour_map():
    assert [tuple(int(v) for v in c) for c in schp_palette(20)] == VOC
    assert [tuple(int(v) for v in c) for c in schp_palette(256)] == _palette_from_bits(256)


def test_overlay_blends_classes_and_leaves_background_alone():
    frames = np.array([[[[100, 100, 100], [200, 0, 0]], [[0, 0, 0], [10, 20, 30]]]], dtype=np.uint8)  # [1, 2, 2, 3]
    labels = np.array([[[0, 1], [255, 2]]])
    palette = schp_palette(3)
    out = overlay(frames, labels, palette, alpha=0.5)
    assert out[0, 0, 0].tolist() == [100, 100, 100]  # background: the frame
    assert out[0, 0, 1].tolist() == [164, 0, 0]  # (200 + 128) / 2
    assert out[0, 1, 0].tolist() == [round(c / 2) for c in UNKNOWN_COLOUR]  # no class: void colour
    assert out[0, 1, 1].tolist() == [5, 74, 15]  # (10 + 0) / 2, (20 + 128) / 2, (30 + 0) / 2
    # Maps of another resolution are resized to the frame (nearest): one label over all 4 pixels.
    out = overlay(frames, np.array([[[1]]]), palette, alpha=1.0)
    assert (out[0] == [128, 0, 0]).all()


def test_the_grid_has_a_row_of_frames_then_one_per_source_and_a_legend():
    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    frames[1] = 250
    teacher = np.zeros((2, 8, 8), dtype=np.uint8)
    teacher[:, :4] = 5  # upper-clothes in the top half
    student = np.full((2, 4, 4), 13, dtype=np.uint8)  # face everywhere, at half resolution
    names = [f"class{i}" for i in range(20)]
    image = label_map_grid(LabelMaps(torch.from_numpy(frames), {"teacher": torch.from_numpy(teacher), "student": torch.from_numpy(student)}, names))
    assert image.dtype == np.uint8 and image.shape[2] == 3
    palette = schp_palette(20)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    blended = lambda frame, k: tuple(int(round(0.4 * frame + 0.6 * c)) for c in palette[k])  # noqa: E731
    # Each source's classes over each frame, and both frames as they are.
    for frame in (0, 250):
        assert (frame, frame, frame) in colours
        assert blended(frame, 5) in colours and blended(frame, 13) in colours
    # The legend: a swatch of each class present (not the background).
    assert tuple(palette[5]) in colours and tuple(palette[13]) in colours
    with pytest.raises(ValueError, match=r"maps\['teacher'\]: expected \[2, h, w\]"):
        label_map_grid(LabelMaps(torch.from_numpy(frames), {"teacher": torch.from_numpy(teacher[:1])}, names))


def test_model_visualise_runs_in_eval_mode_and_changes_nothing():
    """A task that shows its batch gets the first clips' features in eval mode, without
    gradients; the model's mode, weights and batch-norm statistics are as before."""
    import hcframe
    from hcframe.components import TaskOutput
    from hcframe.engine.model import MultiTaskModel
    from torch import nn

    class Encoder(hcframe.Encoder):
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleDict({"stem": nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4)), "layer1": nn.Conv3d(4, 4, 1)})
            self.feature_dim = 4

    seen = {}

    class Shows(hcframe.PretextTask):
        def forward(self, inp):
            return TaskOutput({"zero": inp.features[0].pooled.sum() * 0})

        def visualise(self, inp, max_clips=4):
            seen["training"] = self.training
            seen["grad"] = torch.is_grad_enabled()
            seen["clips"] = inp.features[0].feature_map.shape[0]
            seen["labels"] = inp.batch["label"].tolist()
            frames = torch.zeros(seen["clips"], 2, 2, 3, dtype=torch.uint8)
            return LabelMaps(frames, {"x": torch.zeros(seen["clips"], 2, 2, dtype=torch.uint8)}, ["bg"])

    class Silent(hcframe.PretextTask):
        def forward(self, inp):
            return TaskOutput({"zero": inp.features[0].pooled.sum() * 0})

    model = MultiTaskModel(Encoder(), {"a": Shows(), "b": Silent()}, split="layer1")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"views": [torch.randn(6, 3, 2, 4, 4)], "label": torch.arange(6), "pixel_mean": torch.zeros(3)}
    out = model.visualise(batch, max_clips=3)
    assert list(out) == ["a"] and seen == {"training": False, "grad": False, "clips": 3, "labels": [0, 1, 2]}
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.can_visualise() and not MultiTaskModel(Encoder(), {"b": Silent()}).can_visualise()
