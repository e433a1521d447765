"""The SCHP-compatible teacher: key-for-key layout, strict loading of the public checkpoint layout
through the registry, documented output shapes, and the mismatch error."""

from __future__ import annotations

import hashlib

import pytest
import torch

import hcframe
from hcframe_parsing.schp import AugmentCE2P, SCHPCheckpointError, SCHPTeacher
from parsing_helpers import random_schp_state, save_public_layout, schp_layout

NUM_CLASSES = {"lip": 20, "atr": 18, "pascal": 7}


@pytest.mark.parametrize("dataset", ["lip", "atr", "pascal"])
def test_state_dict_matches_fixture_key_for_key(dataset):
    model = AugmentCE2P(NUM_CLASSES[dataset])
    mine = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    assert mine == schp_layout(dataset)  # names, order and shapes; 603 entries
    assert len(mine) == 603
    assert not any("num_batches_tracked" in name for name, _ in mine)


def _file_sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lip_checkpoint_loads_strictly_and_gives_documented_shapes(tmp_path):
    state = random_schp_state("lip", seed=1)
    path = save_public_layout(state, tmp_path / "exp-schp-lip.pth")
    teacher = hcframe.get_registry().create("teacher", "schp", checkpoint=str(path), dataset="lip")
    assert isinstance(teacher, SCHPTeacher)
    loaded = teacher.model.state_dict()
    for key in ("conv1.weight", "layer3.22.bn3.running_var", "fushion.3.bias", "edge.conv5.weight"):
        assert torch.equal(loaded[key], state[key])
    assert teacher.label_names[0] == "Background" and len(teacher.label_names) == 20
    ident = teacher.identity()
    assert ident["checkpoint_sha256"] == _file_sha256(path)
    assert ident["input_size"] == [473, 473] and ident["dataset"] == "lip"
    assert not any(p.requires_grad for p in teacher.parameters())

    # One forward at the documented input size, through the Teacher contract: RGB frames of any
    # size are letterboxed into 473x473; the network's fusion logits are 119x119 (stride 4) and the
    # returned logits lie on the frame's own grid.
    seen = {}
    teacher.model.fushion.register_forward_hook(lambda m, i, o: seen.update(fusion=tuple(o.shape)))
    teacher.model.edge.register_forward_hook(lambda m, i, o: seen.update(edge=tuple(o[0].shape)))
    with torch.no_grad():
        logits, feats = teacher.forward_with_features(torch.rand(1, 3, 300, 473), feature_size=(5, 7))
    assert seen == {"fusion": (1, 20, 119, 119), "edge": (1, 2, 119, 119)}
    assert logits.shape == (1, 20, 300, 473) and feats.shape == (1, 512, 5, 7)
    assert torch.isfinite(logits).all()
    # forward() takes the same path; run it at a small input size to keep the test cheap.
    teacher.input_size = (64, 64)
    with torch.no_grad():
        small = teacher(torch.rand(2, 3, 30, 40), output_size=(6, 8))
    assert small.shape == (2, 20, 6, 8) and torch.isfinite(small).all()


@pytest.mark.parametrize("dataset", ["atr", "pascal"])
def test_atr_and_pascal_load_strictly(tmp_path, dataset):
    # Zeros are cheap to make; a few tensors get random values to prove they are copied.
    state = random_schp_state(dataset, zeros=True)
    for key in ("decoder.conv4.weight", "fushion.3.weight", "layer4.2.conv3.weight", "bn1.running_var"):
        state[key] = torch.rand(state[key].shape) + 0.1
    path = save_public_layout(state, tmp_path / f"{dataset}.pth")
    teacher = hcframe.get_registry().create("teacher", "schp", checkpoint=str(path), dataset=dataset)
    assert teacher.num_classes == NUM_CLASSES[dataset]
    assert teacher.identity()["input_size"] == [512, 512]
    loaded = teacher.model.state_dict()
    for key in ("decoder.conv4.weight", "fushion.3.weight", "layer4.2.conv3.weight", "bn1.running_var"):
        assert torch.equal(loaded[key], state[key])
    # The documented 128x128 at 512 is output stride 4; checked at a small input (same network,
    # a 512 forward costs seconds on CPU): 64x96 -> 16x24, and 512 = 4 * 128.
    with torch.no_grad():
        fusion, edge = teacher.model(torch.randn(1, 3, 64, 96))
    assert fusion.shape == (1, NUM_CLASSES[dataset], 16, 24) and edge.shape == (1, 2, 16, 24)


def test_wrong_variant_is_reported_with_the_likely_cause():
    lip_state = random_schp_state("lip", zeros=True)
    with pytest.raises(SCHPCheckpointError) as info:
        SCHPTeacher.from_state_dict({"state_dict": {f"module.{k}": v for k, v in lip_state.items()}}, dataset="pascal")
    message = str(info.value)
    assert "\n" not in message
    assert "fushion.3.weight [20, 256, 1, 1] vs [7, 256, 1, 1]" in message or "decoder.conv4.weight" in message
    assert "checkpoint has 20 classes" in message and "set dataset = 'lip'" in message


def test_unstripped_prefix_lists_missing_and_unexpected_keys():
    state = random_schp_state("pascal", zeros=True)
    prefixed = {f"model.{k}": v for k, v in state.items()}
    with pytest.raises(SCHPCheckpointError) as info:
        SCHPTeacher.from_state_dict(prefixed, dataset="pascal")
    message = str(info.value)
    assert "missing keys [conv1.weight, bn1.weight, bn1.bias, bn1.running_mean, ...] (603 in all)" in message
    assert "unexpected keys [model.conv1.weight," in message
    assert "prefix 'model.'" in message

    # A key dropped and one extra: listed, cause named as not an SCHP checkpoint layout.
    broken = dict(state)
    del broken["layer2.1.bn2.running_var"]
    broken["aux.weight"] = torch.zeros(1)
    with pytest.raises(SCHPCheckpointError, match=r"missing keys \[layer2.1.bn2.running_var\] \(1 in all\); unexpected keys \[aux.weight\]"):
        SCHPTeacher.from_state_dict(broken, dataset="pascal")


def test_registry_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="teacher.checkpoint is empty"):
        SCHPTeacher(checkpoint="", dataset="lip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SCHPTeacher(checkpoint=str(tmp_path / "nope.pth"), dataset="lip")
    (tmp_path / "x.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="teacher.dataset 'coco' is not one of lip, atr, pascal"):
        SCHPTeacher(checkpoint=str(tmp_path / "x.pth"), dataset="coco")
