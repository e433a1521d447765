"""Metrics against independent computations (hand-made answers and float64 brute force)."""

import math

import numpy as np
import pytest
import torch

from hcframe.evaluation import (
    FeatureSet,
    clip_level_accuracy,
    fit_linear_classifier,
    linear_probe_metrics,
    multiview_metrics,
    multiview_probe_metrics,
    recall_at_k,
    retrieval_metrics,
    topk_accuracy,
    video_level_scores,
)


def test_topk_accuracy_hand_made():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])
    # top-1: rows 0 only (row 1 predicts 0, row 2 predicts 2, row 3 predicts 0)
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 4)
    # top-2: row 0 yes; row 1 {0,1} yes; row 2 {2,1} no; row 3 {0,1} no
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 4)
    assert topk_accuracy(scores, labels, 5) == 1.0  # k beyond the class count
    with pytest.raises(ValueError):
        topk_accuracy(scores, labels[:2], 1)


def test_video_level_aggregation_of_known_scores():
    # 2 videos x 3 views x 2 classes of logits.
    logits = torch.tensor(
        [
            [[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]],  # views vote 0,1,1; softmax mean favours 0 (2.0 is confident)
            [[0.0, 3.0], [1.0, 0.0], [0.0, 0.5]],
        ]
    )
    labels = torch.tensor([0, 0])
    # Independent: softmax by hand in float64.
    def softmax(row):
        e = [math.exp(v) for v in row]
        return [x / sum(e) for x in e]

    expected = [[sum(softmax(view)[c] for view in video.tolist()) / 3 for c in range(2)] for video in logits]
    assert torch.allclose(video_level_scores(logits).double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    # video 0: p0 = (0.8808 + 0.2689 + 0.2689) / 3 = 0.4729 < 0.5 -> predicts 1 (wrong);
    # video 1: p0 = (0.0474 + 0.7311 + 0.3775) / 3 = 0.3853 -> predicts 1 (wrong)
    assert expected[0][0] < 0.5 and expected[1][0] < 0.5
    # clip level: correct views are video 0 view 0 and video 1 view 1: 2 of 6
    assert clip_level_accuracy(logits, labels) == pytest.approx(2 / 6)
    metrics = multiview_metrics(logits, labels)
    assert metrics["top1"] == 0.0 and metrics["clip_top1"] == pytest.approx(2 / 6) and metrics["top5"] == 1.0
    metrics = multiview_metrics(logits, torch.tensor([1, 1]))
    assert metrics["top1"] == 1.0 and metrics["clip_top1"] == pytest.approx(4 / 6)


def test_recall_at_k_hand_made():
    # Gallery on the unit circle at angles 0, 10, 90, 180, 270 degrees (classes a, b, a, c, b).
    angles = np.deg2rad([0, 10, 90, 180, 270])
    gallery = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32) * torch.tensor([[1.0], [3.0], [0.5], [2.0], [1.0]])
    gallery_labels = torch.tensor([0, 1, 0, 2, 1])
    # Query at 4 degrees, class 1: neighbours by angle 0 (a), 10 (b), 90 (a), 270 (b)... -> hit at k=2
    # Query at 175 degrees, class 0: nearest 180 (c), then 90 (a) -> hit at k=2
    # Query at 300 degrees, class 2: 270 (b), 0 (a), 10 (b), 180 (c, at 120 deg) vs 90 (at 150 deg) -> hit at k=4
    q_angles = np.deg2rad([4, 175, 300])
    queries = torch.tensor(np.stack([np.cos(q_angles), np.sin(q_angles)], 1), dtype=torch.float32) * 7.0
    query_labels = torch.tensor([1, 0, 2])
    recalls = recall_at_k(queries, query_labels, gallery, gallery_labels, [1, 2, 3, 4, 5])
    assert recalls == pytest.approx({1: 0.0, 2: 2 / 3, 3: 2 / 3, 4: 1.0, 5: 1.0})
    with pytest.raises(ValueError):
        recall_at_k(queries, query_labels, gallery, gallery_labels, [6])


def _brute_force_recall(q, ql, g, gl, k):
    """float64, loops, no torch: rank the gallery by cosine similarity."""
    hits = 0
    for qi in range(len(q)):
        sims = [float(np.dot(q[qi], g[j]) / (np.linalg.norm(q[qi]) * np.linalg.norm(g[j]))) for j in range(len(g))]
        order = sorted(range(len(g)), key=lambda j: -sims[j])
        hits += any(gl[j] == ql[qi] for j in order[:k])
    return hits / len(q)


def test_recall_at_k_matches_brute_force_and_retrieval_averages_views():
    g = torch.Generator().manual_seed(3)
    train = FeatureSet(torch.randn(40, 2, 6, generator=g), torch.randint(0, 5, (40,), generator=g), [f"t{i}" for i in range(40)], 5)
    test = FeatureSet(torch.randn(15, 3, 6, generator=g), torch.randint(0, 5, (15,), generator=g), [f"q{i}" for i in range(15)], 5)
    result = retrieval_metrics(train, test, [1, 5, 10, 20, 50])
    assert "R@50" not in result and result["num_train"] == 40
    qv = test.features.double().mean(1).numpy()
    gv = train.features.double().mean(1).numpy()
    for k in (1, 5, 10, 20):
        assert result[f"R@{k}"] == pytest.approx(_brute_force_recall(qv, test.labels.numpy(), gv, train.labels.numpy(), k))


def _separable(n_per_class, num_classes, dim, generator, offset=0):
    centres = torch.eye(num_classes, dim) * 6.0
    feats = centres.repeat_interleave(n_per_class, 0) + torch.randn(n_per_class * num_classes, dim, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return feats + offset, labels


def test_linear_probe_reaches_100_percent_on_separable_features():
    g = torch.Generator().manual_seed(0)
    x_train, y_train = _separable(30, 6, 16, g, offset=5.0)  # an offset and scale the standardiser removes
    x_test, y_test = _separable(10, 6, 16, g, offset=5.0)
    # Linearly separable by construction: the true centres are 6 apart, noise is N(0, 1) in 16 dims;
    # check separability independently with the nearest-centre rule (a linear classifier).
    centres = torch.stack([x_train[y_train == c].mean(0) for c in range(6)])
    assert (torch.cdist(x_test, centres).argmin(1) == y_test).all()
    probe = fit_linear_classifier(x_train * 3.0, y_train, 6, weight_decay=1e-4, max_iter=100)
    assert topk_accuracy(probe.scores(x_train * 3.0), y_train, 1) == 1.0
    assert topk_accuracy(probe.scores(x_test * 3.0), y_test, 1) == 1.0
    # Through the FeatureSet path (features averaged over views), with a constant dimension.
    pad = torch.zeros(len(x_train), 1)
    train = FeatureSet(torch.cat([x_train, pad], 1).unsqueeze(1), y_train, [str(i) for i in range(len(y_train))], 6)
    test_views = torch.cat([x_test, torch.zeros(len(x_test), 1)], 1).unsqueeze(1).repeat(1, 2, 1)  # 2 equal views
    test = FeatureSet(test_views, y_test, [str(i) for i in range(len(y_test))], 6)
    metrics = linear_probe_metrics(train, test, weight_decay=1e-4, max_iter=100, device=torch.device("cpu"))
    assert metrics["top1"] == 1.0 and metrics["top5"] == 1.0 and metrics["test_views"] == 2
    mv = multiview_probe_metrics(train, test, weight_decay=1e-4, max_iter=100, device=torch.device("cpu"))
    assert mv["top1"] == 1.0 and mv["clip_top1"] == 1.0


def test_linear_probe_is_deterministic_and_not_seeded_by_global_rng():
    g = torch.Generator().manual_seed(1)
    x, y = _separable(8, 3, 5, g)
    x = x + 3.0 * torch.randn(x.shape, generator=g)  # overlapping classes: the optimum is not trivial
    torch.manual_seed(0)
    a = fit_linear_classifier(x, y, 3).scores(x)
    torch.manual_seed(123)
    b = fit_linear_classifier(x, y, 3).scores(x)
    assert torch.equal(a, b)


def test_fit_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must be in"):
        fit_linear_classifier(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), 3)
