"""The parsing task on the synthetic world: ground-truth targets and a teacher cache reach the
samples through task.target_store(dataset), as the engine wires them."""

from __future__ import annotations

import attrs
import pytest
import torch
from torch import nn

import hcframe
from hcframe.components import EncoderOutput, TaskInput
from hcframe.data import collate
from hcframe_parsing.cache import cache_teacher
from hcframe_parsing.torchscript_teacher import TorchScriptTeacher
from hcframe_video.partmaps import LIP_LABELS
from hcframe_video.synthetic.dataset import WORLD_CLIPS

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _world(root):
    return hcframe.get_registry().create(
        "dataset", "synthetic_humans", root=str(root), num_train=4, num_test=1, num_frames=8, workers=1,
        clips=attrs.evolve(WORLD_CLIPS, clip_len=4, num_clips=1),
    )


def _step(task, dataset):
    dataset.num_views = task.num_views
    dataset.target_store = task.target_store(dataset)  # what the engine does for needs={"parts"}
    batch = collate([dataset[(i, 0)] for i in range(len(dataset))])
    batch = hcframe.get_registry().create("transform", "normalize")(batch, train=False)
    task.setup(nn.Identity(), feature_dim=6)
    fmap = torch.randn(len(dataset), 6, 2, 4, 4)
    return batch, task(TaskInput(batch, [EncoderOutput(fmap, fmap.mean(dim=(2, 3, 4)))], nn.Identity(), 0, 1))


def test_ground_truth_and_cached_teacher_targets_on_the_synthetic_world(tmp_path, tiny_parser_file):
    dataset = _world(tmp_path / "world")
    registry = hcframe.get_registry()
    gt_task = registry.create("task", "parsing_distill", teacher=registry.create("teacher", "synthetic_ground_truth"))
    batch, out = _step(gt_task, dataset)
    parts = batch["parts"][0]
    assert parts.shape[:3] == (4, 20, 4)
    assert torch.allclose(parts.sum(dim=1), torch.ones(()))  # every pixel of the world is labelled
    assert (parts[:, 1:].sum(dim=1) > 0).any()  # some person pixels
    assert torch.isfinite(out.losses["distill"]) and 0 <= out.metrics["miou"] <= 1

    teacher = TorchScriptTeacher(str(tiny_parser_file(num_classes=20)), list(LIP_LABELS), [16, 16])
    report = cache_teacher(teacher, dataset, tmp_path / "cache", resolution=(8, 8), k=3, progress=False)
    assert len(report.written) == 4 and not report.failed
    cached_task = registry.create("task", "parsing_distill", teacher=teacher, cache=str(tmp_path / "cache"))
    batch, out = _step(cached_task, _world(tmp_path / "world"))
    parts = batch["parts"][0]
    assert parts.shape[:3] == (4, 20, 4)
    assert ((parts > 0).sum(dim=1) <= 3).all()  # top-3 targets
    assert torch.isfinite(out.losses["distill"])


def test_the_task_shows_the_middle_frame_the_teacher_and_the_student(tmp_path):
    """visualise: the middle frame of each clip as it was before normalisation, the target's
    argmax there (the world's ground truth: every pixel labelled) and the head's argmax at the
    feature cell covering that frame."""
    registry = hcframe.get_registry()
    task = registry.create("task", "parsing_distill", teacher=registry.create("teacher", "synthetic_ground_truth"))
    dataset = _world(tmp_path / "world")
    batch, _ = _step(task, dataset)
    fmap = torch.randn(len(dataset), 6, 2, 4, 4)
    shown = task.visualise(TaskInput(batch, [EncoderOutput(fmap, fmap.mean(dim=(2, 3, 4)))], nn.Identity(), 0, 1), max_clips=3)
    raw = torch.stack([dataset[(i, 0)]["views"][0] for i in range(3)])  # uint8 [3, 3, T, H, W]
    assert torch.equal(shown.frames, raw[:, :, 2].permute(0, 2, 3, 1))  # T = 4: frame 2 (normalize is exact here)
    assert list(shown.maps) == ["ground truth", "student"] and shown.label_names == LIP_LABELS
    truth = torch.stack([dataset[(i, 0)]["parts"][0][:, 2].float() for i in range(3)])
    assert torch.equal(shown.maps["ground truth"], truth.argmax(dim=1).to(torch.uint8))
    logits = task.head(fmap[:3])  # [3, 20, 2, 4, 4]: frame 2 of 4 lies in cell 1 of 2
    assert torch.equal(shown.maps["student"], logits[:, :, 1].argmax(dim=1).to(torch.uint8))


def test_an_online_teacher_is_run_on_the_clips_it_shows(tmp_path, tiny_parser_file):
    registry = hcframe.get_registry()
    teacher = TorchScriptTeacher(str(tiny_parser_file(num_classes=20)), list(LIP_LABELS), [16, 16])
    task = registry.create("task", "parsing_distill", teacher=teacher)  # no cache: online
    dataset = _world(tmp_path / "world")
    batch, _ = _step(task, dataset)
    assert "parts" not in batch
    fmap = torch.randn(len(dataset), 6, 2, 4, 4)
    shown = task.visualise(TaskInput(batch, [EncoderOutput(fmap, fmap.mean(dim=(2, 3, 4)))], nn.Identity(), 0, 1), max_clips=2)
    assert list(shown.maps) == ["teacher", "student"]
    # The teacher's argmax on the middle frame (2 of 4) of the first two clips.
    probs, _ = task.online_targets({k: (v[:2] if k == "views" else v) for k, v in batch.items()} | {"views": [batch["views"][0][:2]]})
    assert torch.equal(shown.maps["teacher"], probs[:, :, 2].argmax(dim=1).to(torch.uint8))
    assert shown.maps["teacher"].shape == (2, *batch["views"][0].shape[-2:])


def test_probe_on_ground_truth_part_targets_pools_the_world_s_own_maps(tmp_path):
    """[[eval]] source = "targets": the features are the task's part targets pooled on the grid,
    equal to one-hot cell fractions recomputed from the world's rendered label maps."""
    import numpy as np

    from hcframe.engine.trainer import build_model
    from hcframe.evaluation import run_evaluations
    from hcframe.recipe import parse_recipe
    from hcframe_video.synthetic.world import WorldConfig, render_video

    world = {"name": "synthetic_humans", "root": str(tmp_path / "world"), "num_train": 12, "num_test": 6,
             "num_frames": 8, "workers": 1, "clips": {"clip_len": 4, "mode": "test", "num_clips": 1, "num_crops": 1}}
    raw = {
        "data": {**world, "clips": {"clip_len": 4}},
        "transform": {"name": "normalize"},
        "model": {"encoder": {"name": "r2plus1d_18", "width": 4, "blocks": [1, 1, 1, 1]}},
        "tasks": {"parsing": {"name": "parsing_distill", "teacher": {"name": "synthetic_ground_truth"}}},
        "train": {"steps": 0, "device": "cpu"},
        "eval": [{"protocol": "linear_probe", "branch": "parsing", "source": "targets", "pool": "grid", "grid": [1, 2, 2],
                  "train_data": {**world, "subset": "train"}, "test_data": {**world, "subset": "test"}}],
    }
    recipe = parse_recipe(raw)
    model = build_model(recipe)
    results = run_evaluations(recipe, model, tmp_path / "run", device=torch.device("cpu"), log=lambda m: None)
    metrics = results["linear_probe/synthetic_humans/parsing/targets/grid1x2x2"]
    assert metrics["num_train"] == 12 and metrics["num_test"] == 6 and 0.0 <= metrics["top1"] <= 1.0
    cached = [torch.load(p, weights_only=True) for p in (tmp_path / "run" / "features").glob("*.pt")]
    test = next(c for c in cached if len(c["video_ids"]) == 6)
    assert test["features"].shape == (6, 1, 20 * 4)
    config = WorldConfig(num_frames=8)  # the world's look: defaults, as in the dataset table
    for i in range(6):
        labels = render_video(config, 0, "test", i).labels[2:6]  # the centre 4-frame clip of 8 frames
        onehot = (labels[None] == np.arange(20)[:, None, None, None]).astype(np.float64)  # [K, T, H, W]
        cells = onehot.reshape(20, 4, 2, 16, 2, 16).mean(axis=(1, 3, 5))  # [K, 2, 2] quadrant fractions
        np.testing.assert_allclose(test["features"][i, 0].double().numpy(), cells.reshape(-1), atol=1e-6)
