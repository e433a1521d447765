"""TorchScript teacher, frame placement (letterbox / resize, channel order, normalisation), and
the ground-truth teacher's store checks."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

import hcframe
from hcframe_parsing.frames import logits_to_frame_grid, place_frames, sample_frame_grid
from hcframe_parsing.ground_truth import GroundTruthTeacher
from hcframe_parsing.torchscript_teacher import TorchScriptTeacher
from hcframe_video.partmaps import PartMapWriter, PartMapStore

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class PassThrough(nn.Module):
    """Returns its (normalised) input as 3 'class logits': exposes what the teacher feeds it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def _script(module: nn.Module, path) -> str:
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def test_torchscript_teacher_loads_and_identifies_the_file(tiny_parser_file):
    path = tiny_parser_file(num_classes=4)
    teacher = hcframe.get_registry().create(
        "teacher", "torchscript", path=str(path), label_names=["bg", "head", "body", "legs"], input_size=[16, 24]
    )
    assert isinstance(teacher, TorchScriptTeacher)
    ident = teacher.identity()
    assert ident["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ident["input_size"] == [16, 24] and ident["label_names"] == ["bg", "head", "body", "legs"]
    frames = torch.rand(3, 3, 20, 30)
    with torch.no_grad():
        out = teacher(frames)
        small = teacher(frames, output_size=(5, 6))
    assert out.shape == (3, 4, 20, 30) and small.shape == (3, 4, 5, 6)
    # Another input size is another identity (a cache keyed by it is invalidated).
    other = TorchScriptTeacher(str(path), ["bg", "head", "body", "legs"], [32, 48])
    assert other.identity_key() != teacher.identity_key()


def test_torchscript_teacher_rejects_bad_arguments_and_outputs(tmp_path, tiny_parser_file):
    path = str(tiny_parser_file(num_classes=4))
    with pytest.raises(ValueError, match="channel_order 'hsv'"):
        TorchScriptTeacher(path, ["a", "b", "c", "d"], [16, 16], channel_order="hsv")
    with pytest.raises(ValueError, match="input_size must be"):
        TorchScriptTeacher(path, ["a", "b", "c", "d"], [16])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TorchScriptTeacher(str(tmp_path / "missing.pt"), ["a", "b"], [16, 16])
    wrong_k = TorchScriptTeacher(path, ["a", "b", "c"], [16, 16])  # the file gives 4 channels
    with pytest.raises(ValueError, match=r"must return \[N, 3, h, w\] logits, got \[1, 4, 8, 8\]"):
        wrong_k(torch.rand(1, 3, 16, 16))


def test_channel_order_and_normalisation_reach_the_parser(tmp_path):
    path = _script(PassThrough(), tmp_path / "pass.pt")
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.125]
    teacher = TorchScriptTeacher(path, ["c0", "c1", "c2"], [12, 16], channel_order="bgr", mean=mean, std=std, resize_mode="resize")
    frames = torch.rand(2, 3, 12, 16, dtype=torch.float64).float()
    with torch.no_grad():
        out = teacher(frames)
    bgr = frames.double().flip(1)
    expected = (bgr - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(out.double(), expected, atol=1e-5)


def test_letterbox_places_the_frame_centred_and_maps_back():
    frames = torch.rand(1, 3, 10, 20)
    placed, where = place_frames(frames, (40, 40), "letterbox")
    assert placed.shape == (1, 3, 40, 40)
    assert (where.top, where.left, where.height, where.width) == (10, 0, 20, 40)
    assert placed[..., :10, :].abs().max() == 0 and placed[..., 30:, :].abs().max() == 0  # black bands
    # A pass-through "parser" at stride 1: mapping back recovers the frame exactly (2x down-up).
    back = logits_to_frame_grid(placed, where, (10, 20))
    expected = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(frames, size=(20, 40), mode="bilinear", align_corners=False),
        size=(10, 20), mode="bilinear", align_corners=False,
    )
    assert torch.allclose(back, expected, atol=1e-6)
    # Logits at stride 4 are upsampled to the input before cropping: same grid, same size.
    coarse = torch.rand(1, 5, 10, 10)
    assert logits_to_frame_grid(coarse, where, (7, 9)).shape == (1, 5, 7, 9)


def test_ground_truth_teacher_takes_the_dataset_store(tmp_path):
    writer = PartMapWriter(tmp_path / "gt", kind="labels", label_names=["bg", "person"], identity={"world": "test", "seed": 1})
    writer.write_video("a", {0: np.zeros((4, 4), np.uint8)})

    class WithParts:
        def ground_truth_parts(self):
            return PartMapStore(tmp_path / "gt")

    teacher = hcframe.get_registry().create("teacher", "synthetic_ground_truth", label_names=["bg", "person"])
    store = teacher.target_store(WithParts())
    assert isinstance(store, PartMapStore) and teacher.identity()["store_identity"] == {"world": "test", "seed": 1}
    with pytest.raises(ValueError, match="use labels \\['bg', 'person'\\], teacher.label_names is"):
        GroundTruthTeacher(["bg", "head", "body"]).target_store(WithParts())
    with pytest.raises(ValueError, match="needs a dataset with ground_truth_parts"):
        teacher.target_store(object())
    with pytest.raises(RuntimeError, match="no online mode"):
        teacher(torch.rand(1, 3, 4, 4))


def test_sample_frame_grid_is_exact_for_linear_maps():
    # A map linear in input-pixel coordinates, on a corner-aligned coarse grid: bilinear sampling
    # must return the linear function at the output cells' centres (in input pixels).
    _, where = place_frames(torch.zeros(1, 3, 10, 20), (40, 40), "letterbox")  # frame at rows 10..29
    gh, gw = 11, 9
    yy = torch.arange(gh, dtype=torch.float64).view(gh, 1) * 39 / (gh - 1)
    xx = torch.arange(gw, dtype=torch.float64).view(1, gw) * 39 / (gw - 1)
    coarse = (0.5 * yy - 0.25 * xx).float().view(1, 1, gh, gw)
    out = sample_frame_grid(coarse, where, (4, 5))
    ys = 10 + (torch.arange(4, dtype=torch.float64) + 0.5) * 20 / 4 - 0.5
    xs = 0 + (torch.arange(5, dtype=torch.float64) + 0.5) * 40 / 5 - 0.5
    expected = 0.5 * ys.view(4, 1) - 0.25 * xs.view(1, 5)
    assert torch.allclose(out[0, 0].double(), expected, atol=1e-4)
