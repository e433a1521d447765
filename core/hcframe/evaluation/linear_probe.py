"""Linear probe: a linear classifier fitted on frozen, standardised features.

:func:`fit_linear_classifier` solves multinomial logistic regression with an L2 penalty on the
weights, full-batch with L-BFGS: the problem is convex and the classifier starts at zero, so the
result depends on neither a learning rate nor a random seed (and is identical run after run on the
same device).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from hcframe.evaluation.features import FeatureSet
from hcframe.evaluation.metrics import topk_accuracy
from hcframe.heads import LinearHead

__all__ = ["LinearProbe", "Standardizer", "fit_linear_classifier", "linear_probe_metrics"]


@attrs.frozen
class Standardizer:
    """Per-dimension ``(x - mean) / std`` with the training set's statistics; dimensions that do
    not vary keep a std of 1 (they are constant, and must not blow up)."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, features: Tensor) -> "Standardizer":
        features = features.double()
        mean = features.mean(dim=0)
        std = features.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        return cls(mean.float(), std.float())

    def __call__(self, features: Tensor) -> Tensor:
        return (features.float() - self.mean.to(features.device)) / self.std.to(features.device)


@attrs.frozen
class LinearProbe:
    """A fitted probe: standardisation then a :class:`LinearHead`."""

    standardizer: Standardizer
    head: LinearHead

    @torch.no_grad()
    def scores(self, features: Tensor) -> Tensor:
        """Logits for features ``[..., D]``."""
        shape = features.shape
        flat = features.reshape(-1, shape[-1])
        return self.head(self.standardizer(flat)).reshape(*shape[:-1], -1)


def fit_linear_classifier(
    features: Tensor, labels: Tensor, num_classes: int, *, weight_decay: float = 1e-4, max_iter: int = 200
) -> LinearProbe:
    """Fit ``LinearHead(D, num_classes)`` on ``features`` ``[N, D]`` by minimising the mean
    cross-entropy plus ``weight_decay / 2 * ||W||^2`` (the bias is not penalised) with full-batch
    L-BFGS (strong-Wolfe line search, at most ``max_iter`` iterations), from a zero start."""
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}); got {int(labels.min())}..{int(labels.max())}")
    standardizer = Standardizer.fit(features)
    x = standardizer(features)
    y = labels.to(x.device)
    head = LinearHead(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.zero_()
    optimizer = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
        tolerance_change=1e-12, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * weight_decay * head.fc.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    head.eval()
    return LinearProbe(standardizer, head)


def num_classes_of(train: FeatureSet, test: FeatureSet) -> int:
    """The class count of the datasets (at least one more than the largest label seen)."""
    return max(train.num_classes, test.num_classes, int(train.labels.max()) + 1, int(test.labels.max()) + 1)


def linear_probe_metrics(train: FeatureSet, test: FeatureSet, *, weight_decay: float, max_iter: int, device: torch.device) -> dict[str, float | int]:
    """Fit on the training videos' view-averaged features; score the test videos' view-averaged
    features. Returns ``top1``, ``top5`` (video level) and the set sizes."""
    probe = fit_linear_classifier(train.video_features().to(device), train.labels, num_classes_of(train, test),
                                  weight_decay=weight_decay, max_iter=max_iter)
    scores = probe.scores(test.video_features().to(device)).cpu()
    train_scores = probe.scores(train.video_features().to(device)).cpu()
    return {
        "top1": topk_accuracy(scores, test.labels, 1),
        "top5": topk_accuracy(scores, test.labels, 5),
        "train_top1": topk_accuracy(train_scores, train.labels, 1),
        "num_train": len(train.video_ids),
        "num_test": len(test.video_ids),
        "test_views": test.num_views,
    }
