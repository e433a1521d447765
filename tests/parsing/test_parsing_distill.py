"""The parsing_distill task: loss against an independent float64 computation, ignored cells,
metrics by hand, target-store wiring, and online vs cached targets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import hcframe
from hcframe.components import EncoderOutput, TaskInput
from hcframe_parsing.cache import cache_teacher, run_teacher
from hcframe_parsing.distill import ParsingDistillation, distill_loss, parsing_metrics
from hcframe_parsing.ground_truth import GroundTruthTeacher
from hcframe_parsing.torchscript_teacher import TorchScriptTeacher
from hcframe_video.decode import decode_frames, probe_video
from hcframe_video.partmaps import PartMapError, PartMapStore, PartMapWriter
from parsing_helpers import FolderVideos

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

LABELS = ["bg", "head", "body", "legs"]
MEAN = torch.tensor([0.45, 0.45, 0.45])
STD = torch.tensor([0.225, 0.225, 0.225])


def _task(parser_path, **kwargs) -> ParsingDistillation:
    teacher = TorchScriptTeacher(str(parser_path), LABELS, [16, 24])
    task = hcframe.get_registry().create("task", "parsing_distill", teacher=teacher, hidden_dim=8, **kwargs)
    task.setup(nn.Identity(), feature_dim=6)
    return task.eval()  # batch norm on running statistics: the head is a fixed function here


def _input(batch, fmap) -> TaskInput:
    return TaskInput(batch=batch, features=[EncoderOutput(fmap, fmap.mean(dim=(2, 3, 4)))], encoder=nn.Identity(), step=0, max_steps=1)


def _reference_loss(logits, parts, loss, temperature):
    """float64, loop over cells: block-average the targets, skip cells without mass."""
    logits = logits.double()
    parts = parts.double()
    b, k, t, h, w = logits.shape
    _, _, T, H, W = parts.shape
    ft, fh, fw = T // t, H // h, W // w
    terms = []
    for n, i, y, x in itertools.product(range(b), range(t), range(h), range(w)):
        block = parts[n, :, i * ft : (i + 1) * ft, y * fh : (y + 1) * fh, x * fw : (x + 1) * fw]
        p = block.reshape(k, -1).mean(dim=1)
        if p.sum() <= 1e-3:
            continue
        p = p / p.sum()
        z = logits[n, :, i, y, x]
        if loss == "ce":
            terms.append(-torch.log_softmax(z, 0)[p.argmax()])
            continue
        q = p ** (1 / temperature)
        q = q / q.sum()
        s = torch.log_softmax(z / temperature, 0)
        terms.append(temperature**2 * sum(q[c] * (torch.log(q[c]) - s[c]) for c in range(k) if q[c] > 0))
    return torch.stack(terms).mean()


def _parts(b=2, k=4, T=4, H=8, W=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    parts = torch.softmax(3 * torch.randn(b, k, T, H, W, generator=g), dim=1)
    parts[0, :, :, :4, :4] = 0  # a whole 4x4 area unknown in every frame: cells ignored
    parts[1, :, 0, :, 6:] = 0  # half of the frames unknown: those cells average the other frames
    return parts


@pytest.mark.parametrize("loss,temperature", [("kl", 1.0), ("kl", 2.5), ("ce", 1.0)])
def test_loss_equals_float64_reference(tiny_parser_file, loss, temperature):
    task = _task(tiny_parser_file(), loss=loss, temperature=temperature)
    parts = _parts()
    fmap = torch.randn(2, 6, 2, 2, 3, requires_grad=True)  # t=2 over T=4, 2x3 over 8x12
    out = task(_input({"parts": [parts]}, fmap))
    with torch.no_grad():
        logits = task.head(fmap)
    assert torch.allclose(out.losses["distill"].double(), _reference_loss(logits, parts, loss, temperature), rtol=1e-5, atol=1e-6)
    assert out.metrics["valid_fraction"] == pytest.approx(11 / 12)
    out.total.backward()
    assert fmap.grad is not None and fmap.grad.abs().sum() > 0


def test_ignored_cells_do_not_contribute():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 2, 3, 3, generator=g)
    target = torch.softmax(torch.randn(2, 5, 2, 3, 3, generator=g), dim=1)
    valid = torch.rand(2, 2, 3, 3, generator=g) > 0.4
    base = {kind: distill_loss(logits, target, valid, kind, 2.0) for kind in ("kl", "ce")}
    changed_logits = torch.where(valid.unsqueeze(1), logits, torch.randn_like(logits) * 10)
    changed_target = torch.where(valid.unsqueeze(1), target, torch.rand_like(target))
    for kind in ("kl", "ce"):
        assert distill_loss(changed_logits, changed_target, valid, kind, 2.0) == pytest.approx(base[kind].item(), rel=1e-6)
    # ... while a valid cell does count.
    flipped = valid.clone()
    flipped[0, 0, 0, 0] = not bool(valid[0, 0, 0, 0])
    assert distill_loss(changed_logits, changed_target, flipped, "kl", 2.0) != pytest.approx(base["kl"].item(), rel=1e-6)


def test_metrics_match_a_hand_computation():
    # 6 cells, 3 classes. target argmax: [0, 0, 1, 1, 2, 0]; student argmax: [0, 1, 1, 1, 0, 0];
    # the last cell is invalid (ignored).
    target_ids = torch.tensor([0, 0, 1, 1, 2, 0])
    student_ids = torch.tensor([0, 1, 1, 1, 0, 0])
    target = torch.nn.functional.one_hot(target_ids, 3).T.float().reshape(1, 3, 1, 2, 3)
    logits = torch.nn.functional.one_hot(student_ids, 3).T.float().reshape(1, 3, 1, 2, 3) * 5
    valid = torch.tensor([True, True, True, True, True, False]).reshape(1, 1, 2, 3)
    m = parsing_metrics(logits, target, valid)
    # valid cells: (t,s) = (0,0) (0,1) (1,1) (1,1) (2,0): 3 of 5 right.
    assert m["pixel_acc"].item() == pytest.approx(3 / 5)
    # class 0: inter 1, union |{0,1,4}| = 3; class 1: inter 2, union |{1,2,3}| = 3; class 2: inter 0, union 1
    assert m["miou"].item() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_target_store_wiring(tmp_path, tiny_parser_file, video_folder):
    path = tiny_parser_file()
    online = _task(path)
    assert online.target_store(object()) is None  # the teacher runs on the batch

    teacher = TorchScriptTeacher(str(path), LABELS, [16, 24])
    cache_teacher(teacher, FolderVideos(str(video_folder)), tmp_path / "cache", resolution=(6, 8), progress=False)
    cached = _task(path, cache=str(tmp_path / "cache"))
    store = cached.target_store(object())
    assert isinstance(store, PartMapStore) and store.identity["teacher"] == teacher.identity()
    other = TorchScriptTeacher(str(path), LABELS, [32, 24])
    with pytest.raises(PartMapError, match="stale"):
        ParsingDistillation(other, cache=str(tmp_path / "cache")).target_store(object())

    writer = PartMapWriter(tmp_path / "gt", kind="labels", label_names=LABELS, identity={"world": "test"})
    writer.write_video("a", {0: np.ones((4, 4), np.uint8)})

    class SyntheticLike:
        def ground_truth_parts(self):
            return PartMapStore(tmp_path / "gt")

    gt = ParsingDistillation(GroundTruthTeacher(LABELS))
    assert gt.target_store(SyntheticLike()).root == tmp_path / "gt"
    with pytest.raises(ValueError, match="feature_distill_weight > 0 needs an online teacher"):
        ParsingDistillation(GroundTruthTeacher(LABELS), feature_distill_weight=1.0)
    with pytest.raises(ValueError, match="feature_distill_weight > 0 needs an online teacher"):
        ParsingDistillation(teacher, feature_distill_weight=1.0)  # TorchScript parsers expose no features


@pytest.mark.parametrize("kind,tol", [("topk", 2e-2), ("logits", 2e-3)])
def test_online_and_cached_targets_give_the_same_loss(tmp_path, tiny_parser_file, video_folder, kind, tol):
    path = tiny_parser_file()
    dataset = FolderVideos(str(video_folder))
    teacher = TorchScriptTeacher(str(path), LABELS, [16, 24])
    cache_teacher(teacher, dataset, tmp_path / "c", resolution=(24, 32), kind=kind, k=4, progress=False)
    store = PartMapStore(tmp_path / "c")

    frame_ids = [1, 2, 3, 4]
    clips, parts = [], []
    for i in range(2):
        rgb, _ = decode_frames(dataset.video_path(i), frame_ids, info=probe_video(dataset.video_path(i)))
        clip = torch.from_numpy(rgb).permute(3, 0, 1, 2).float() / 255.0  # [3, T, H, W]
        clips.append((clip - MEAN.view(3, 1, 1, 1)) / STD.view(3, 1, 1, 1))
        parts.append(store.read(dataset.video_id(i), frame_ids))
    views = [torch.stack(clips)]
    fmap = torch.randn(2, 6, 2, 3, 4)
    base = {"views": views, "pixel_mean": MEAN, "pixel_std": STD}

    online_task = _task(path)
    cached_task = _task(path, cache=str(tmp_path / "c"))
    cached_task.load_state_dict(online_task.state_dict())
    online = online_task(_input(dict(base), fmap))
    cached = cached_task(_input({**base, "parts": [torch.stack(parts)]}, fmap))
    assert online.losses["distill"].item() == pytest.approx(cached.losses["distill"].item(), rel=tol)
    # The online targets are the teacher's own outputs on these frames.
    probs, _ = online_task.online_targets(base)
    frames = (views[0] * STD.view(1, 3, 1, 1, 1) + MEAN.view(1, 3, 1, 1, 1)).permute(0, 2, 1, 3, 4).reshape(-1, 3, 24, 32)
    direct = torch.softmax(run_teacher(teacher, frames, (24, 32)), dim=1).reshape(2, 4, 4, 24, 32).permute(0, 2, 1, 3, 4)
    assert torch.allclose(probs, direct, atol=1e-6)


class FeatureTeacher(hcframe.Teacher):
    """A tiny parser that also exposes 5-channel features (like SCHP's context features)."""

    feature_dim = 5

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.label_names = tuple(LABELS)
        self.features = nn.Conv2d(3, 5, 3, padding=1)
        self.classifier = nn.Conv2d(5, 4, 1)
        self.freeze()

    def identity(self):
        return {"architecture": "feature-test"}

    def forward_with_features(self, frames, output_size=None, feature_size=None):
        f = self.features(frames)  # full resolution whatever feature_size says: the task pools
        return self.classifier(f), f

    def forward(self, frames, output_size=None):
        return self.forward_with_features(frames, output_size)[0]


def test_feature_distillation_term():
    task = ParsingDistillation(FeatureTeacher(), feature_distill_weight=0.5, hidden_dim=8)
    task.setup(nn.Identity(), feature_dim=6)
    task.eval()
    views = [torch.randn(1, 3, 2, 8, 8)]
    fmap = torch.randn(1, 6, 1, 2, 2, requires_grad=True)
    out = task(_input({"views": views, "pixel_mean": MEAN, "pixel_std": STD}, fmap))
    frames = (views[0] * STD.view(1, 3, 1, 1, 1) + MEAN.view(1, 3, 1, 1, 1)).clamp(0, 1)[0].transpose(0, 1)  # [T, 3, H, W]
    with torch.no_grad():
        feats = task.teacher.features(frames).double()  # [2, 5, 8, 8]
        pooled = feats.mean(dim=(0,)).reshape(5, 2, 4, 2, 4).mean(dim=(2, 4))  # [5, 2, 2]
        student = task.adapter(fmap).double()[0, :, 0]
    ref = 0.5 * ((student / student.norm(dim=0) - pooled / pooled.norm(dim=0)) ** 2).sum(dim=0).mean()
    assert out.losses["feature"].double().item() == pytest.approx(ref.item(), rel=1e-5)
    out.total.backward()
    assert task.adapter.weight.grad is not None and fmap.grad is not None
    _assert_declared(task, out)


def _assert_declared(task, out):
    """Every term the task emits is declared, losses as losses, and nothing else is."""
    kinds = {i.name: i.kind for i in task.metric_info()}
    assert set(kinds) == set(out.losses) | set(out.metrics)
    assert {n for n, k in kinds.items() if k == "loss"} == set(out.losses)


def test_metric_declarations_match_what_the_task_emits(tiny_parser_file):
    task = _task(tiny_parser_file())
    out = task(_input({"parts": [_parts()]}, torch.randn(2, 6, 2, 2, 3)))
    _assert_declared(task, out)
    assert {i.name for i in task.metric_info() if i.progress} == {"distill", "miou"}
