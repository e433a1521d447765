"""Evaluation protocols against their definitions: the linear probe reaches the optimum of
scikit-learn's objective (checked against an independent float64 Newton solve) and says when its
iteration limit stops it; fine-tuning follows the published protocol by default (crop + flip,
lr per 16 clips scaled by the batch, 10 clips x 3 crops at test) and honours
``flip_preserves_label``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_toy import TEST_DATA, TRAIN_DATA, toy_raw

import hcframe
from hcframe.engine.trainer import Trainer, build_model
from hcframe.evaluation import finetune_metrics, linear_probe_metrics, run_evaluations
from hcframe.evaluation import finetune as finetune_module
from hcframe.evaluation import runner as runner_module
from hcframe.evaluation.features import FeatureSet
from hcframe.evaluation.linear_probe import fit_linear_classifier
from hcframe.eval_tables import FinetuneOptions
from hcframe.recipe import parse_recipe
from hcframe.registry import build_registry
from hcframe.transforms import Normalize

pytestmark = pytest.mark.usefixtures("testkit")


# --- linear probe -----------------------------------------------------------------------------------
def newton_optimum(x: np.ndarray, y: np.ndarray, num_classes: int, weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """The minimiser of mean cross-entropy + weight_decay / 2 * ||W||^2 (bias unpenalised) by
    Newton's method with the exact Hessian, float64. The bias is only defined up to a common
    shift; minimum-norm steps from zero pick the one whose entries sum to 0."""
    n, d = x.shape
    xt = np.hstack([x, np.ones((n, 1))])
    onehot = np.eye(num_classes)[y]
    theta = np.zeros((num_classes, d + 1))
    penalty = np.kron(np.eye(num_classes), np.diag([weight_decay] * d + [0.0]))
    for _ in range(100):
        logits = xt @ theta.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot).T @ xt / n
        grad[:, :d] += weight_decay * theta[:, :d]
        if np.abs(grad).max() < 1e-13:
            break
        hessian = sum(np.kron(np.diag(p[i]) - np.outer(p[i], p[i]), np.outer(xt[i], xt[i])) for i in range(n)) / n + penalty
        theta -= np.linalg.lstsq(hessian, grad.ravel(), rcond=None)[0].reshape(theta.shape)
    return theta[:, :d], theta[:, d]


def overlapping_classes(n_per_class: int, num_classes: int, dim: int, seed: int, spread: float = 1.5):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(num_classes, dim))
    x = np.repeat(centres, n_per_class, axis=0) + spread * g.normal(size=(n_per_class * num_classes, dim))
    y = np.repeat(np.arange(num_classes), n_per_class)
    return x * 4.0 + 2.0, y  # a scale and offset the standardiser removes


def test_linear_probe_reaches_the_newton_optimum():
    x, y = overlapping_classes(20, 3, 5, seed=0)
    features = torch.from_numpy(x).float()
    standardised = features.double().numpy()
    standardised = (standardised - standardised.mean(0)) / standardised.std(0)
    for weight_decay in (0.05, 1e-3):
        weight, bias = newton_optimum(standardised, y, 3, weight_decay)
        probe = fit_linear_classifier(features, torch.from_numpy(y), 3, weight_decay=weight_decay, tol=1e-7)
        assert probe.converged and probe.stop == "tolerance" and probe.gradient <= 1e-7
        np.testing.assert_allclose(probe.head.fc.weight.detach().double().numpy(), weight, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(probe.head.fc.bias.detach().double().numpy(), bias, atol=2e-5, rtol=1e-5)
        # With the default tolerance the predictions are already those of the optimum.
        default = fit_linear_classifier(features, torch.from_numpy(y), 3, weight_decay=weight_decay)
        expected = np.argmax(standardised @ weight.T + bias, axis=1)
        assert default.converged and (default.scores(features).argmax(1).numpy() == expected).all()


def test_linear_probe_warns_in_one_line_when_the_iteration_limit_stops_it():
    x, y = overlapping_classes(40, 5, 30, seed=1, spread=0.8)
    train = FeatureSet(torch.from_numpy(x).float()[:, None], torch.from_numpy(y), [str(i) for i in range(len(y))], 5)
    short = fit_linear_classifier(train.video_features(), train.labels, 5, max_iter=3)
    assert short.iterations == 3 and not short.converged and short.stop == "max_iter" and short.gradient > 1e-5
    messages = []
    metrics = linear_probe_metrics(train, train, weight_decay=1e-4, max_iter=3, device=torch.device("cpu"),
                                   where="eval[2] linear_probe/ucf101/concat/split1", log=messages.append)
    assert metrics["probe_iterations"] == 3
    assert len(messages) == 1 and "\n" not in messages[0]
    assert messages[0].startswith("warning: eval[2] linear_probe/ucf101/concat/split1: ")
    assert "max_iter = 3" in messages[0]
    # Iterated to the tolerance instead: converged, silent, and it needed more than the limit above.
    messages.clear()
    full = linear_probe_metrics(train, train, weight_decay=1e-4, max_iter=1000, device=torch.device("cpu"), log=messages.append)
    assert messages == [] and full["probe_iterations"] > 3
    probe = fit_linear_classifier(train.video_features(), train.labels, 5)
    assert probe.converged and probe.gradient <= 1e-5 and probe.iterations == full["probe_iterations"]


def test_run_names_the_evaluation_whose_probe_hit_the_limit(tmp_path):
    probe = {"protocol": "linear_probe", "train_data": TRAIN_DATA, "test_data": TEST_DATA, "max_iter": 1}
    multiview = {**probe, "protocol": "multiview"}
    recipe = parse_recipe(toy_raw(probe, multiview))
    torch.manual_seed(0)
    model = build_model(recipe)
    messages = []
    results = run_evaluations(recipe, model, tmp_path, device=torch.device("cpu"), log=messages.append)
    warnings = [m for m in messages if m.startswith("warning:")]
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: eval[0] linear_probe/moving_squares/concat: ")
    assert warnings[1].startswith("warning: eval[1] multiview/moving_squares/concat: ")
    assert all("max_iter = 1 " in w for w in warnings)
    assert results["linear_probe/moving_squares/concat"]["probe_iterations"] == 1


# --- fine-tuning ------------------------------------------------------------------------------------
def test_finetune_test_data_defaults_to_ten_clips_by_three_crops():
    test = {"name": "synthetic_humans", "subset": "test"}
    own = {"name": "synthetic_humans", "subset": "test", "num_clips": 2, "num_crops": 1}
    recipe = parse_recipe(toy_raw(
        {"protocol": "finetune", "train_data": {"name": "synthetic_humans"}, "test_data": test},
        {"protocol": "finetune", "train_data": {"name": "synthetic_humans"}, "test_data": own, "label": "own"},
        {"protocol": "finetune", "train_data": TRAIN_DATA, "test_data": TEST_DATA, "label": "squares"},
        {"protocol": "linear_probe", "train_data": {"name": "synthetic_humans"}, "test_data": test},
    ))
    protocol, explicit, squares, probe = recipe.evaluations
    assert (protocol["test_data"]["mode"], protocol["test_data"]["num_clips"], protocol["test_data"]["num_crops"]) == ("test", 10, 3)
    assert (explicit["test_data"]["mode"], explicit["test_data"]["num_clips"], explicit["test_data"]["num_crops"]) == ("test", 2, 1)
    assert protocol["train_data"]["mode"] == "train"
    assert "mode" not in squares["test_data"]  # a dataset without these arguments is left alone
    assert probe["test_data"]["mode"] == "train"  # only fine-tuning's protocol is changed


class MirroredSquares(hcframe.VideoDataset):
    """Moving squares whose labels change under mirroring (left/right directions)."""

    flip_preserves_label = False

    def __init__(self, num_videos: int = 16, seed: int = 0) -> None:
        import hcframe_testkit

        self.inner = hcframe_testkit.MovingSquares(num_videos=num_videos, seed=seed)
        self.class_names = self.inner.class_names

    def __len__(self):
        return len(self.inner)

    def video_id(self, i):
        return self.inner.video_id(i)

    def video_path(self, i):
        return self.inner.video_path(i)

    def __getitem__(self, key):
        self.inner.num_views = self.num_views
        return self.inner[key]


def test_finetune_scales_lr_by_batch_and_never_mirrors_a_label_changing_dataset(monkeypatch):
    from hcframe_video.transforms import VideoAugment

    recipe = parse_recipe(toy_raw())
    torch.manual_seed(0)
    model = build_model(recipe)
    rates, mirrors, messages = [], [], []
    original = finetune_module.set_learning_rate

    def spy(optimizer, base_lr, schedule, step, total_steps):
        result = original(optimizer, base_lr, schedule, step, total_steps)
        rates.extend(g["lr"] / g.get("lr_scale", 1.0) for g in optimizer.param_groups)
        return result

    monkeypatch.setattr(finetune_module, "set_learning_rate", spy)
    augment = VideoAugment(crop_size=16, flip_prob=1.0)
    draw = augment.sample_mirror
    augment.sample_mirror = lambda b, device: mirrors.append(draw(b, device)) or mirrors[-1]
    train = MirroredSquares()
    test = MirroredSquares(num_videos=8, seed=1)
    options = FinetuneOptions(epochs=1, lr=0.01, schedule="constant")
    finetune_metrics(model, "sup", train, test, options, augment, Normalize(), torch.device("cpu"), batch_size=8, log=messages.append)
    assert rates and all(r == pytest.approx(0.01 * 8 / 16) for r in rates)
    assert "finetune: lr 0.01 per 16 clips -> 0.005 at batch size 8" in messages
    assert augment.flip_allowed is False and mirrors and not any(bool(m.any()) for m in mirrors)


def test_finetune_without_train_transform_trains_with_crop_and_flip_only(monkeypatch, tmp_path):
    raw = toy_raw({"protocol": "finetune", "branch": "sup", "epochs": 1, "train_data": TRAIN_DATA, "test_data": TEST_DATA},
                  {"protocol": "finetune", "branch": "sup", "epochs": 1, "train_data": TRAIN_DATA, "test_data": TEST_DATA,
                   "label": "given", "train_transform": {"name": "video_augment", "crop_size": 16, "blur_prob": 1.0}})
    raw["transform"] = {"name": "video_augment", "crop_size": 16, "scale": [0.5, 1.0]}
    recipe = parse_recipe(raw)
    seen = []
    monkeypatch.setattr(runner_module, "finetune_metrics", lambda *args, **kw: seen.append(args[5]) or {})
    torch.manual_seed(0)
    run_evaluations(recipe, build_model(recipe), tmp_path, device=torch.device("cpu"), log=lambda m: None)
    default, given = seen
    assert (default.jitter_prob, default.grayscale_prob, default.blur_prob) == (0.0, 0.0, 0.0)
    assert default.scale == (0.5, 1.0) and default.crop_size == 16 and default.flip and default.flip_prob == 0.5
    assert given.blur_prob == 1.0 and given.jitter_prob == 0.8  # a given train_transform is used as given
    assert Normalize().finetune_transform().__class__ is Normalize


def test_pretraining_never_mirrors_a_label_changing_dataset(tmp_path):
    registry = build_registry(explicit=["hcframe_testkit"])
    registry.add("dataset", "mirrored_squares", MirroredSquares)
    raw = toy_raw()
    raw["data"] = {"name": "mirrored_squares"}
    raw["transform"] = {"name": "video_augment", "crop_size": 16, "flip_prob": 1.0}
    raw["train"] = {**raw["train"], "steps": 1, "checkpoint_every": 1}
    recipe = parse_recipe(raw, registry=registry)
    trainer = Trainer(recipe, tmp_path / "run", registry=registry, log=lambda m: None)
    trainer.train()
    assert trainer.transform.flip_allowed is False
