"""Linear probe: a linear classifier fitted on frozen, standardised features.

:func:`fit_linear_classifier` solves multinomial logistic regression with an L2 penalty on the
weights (scikit-learn's ``LogisticRegression(solver="lbfgs")`` objective: mean cross-entropy plus
``weight_decay / 2 * ||W||^2`` is theirs with ``C = 1 / (weight_decay * N)``), full-batch with
L-BFGS in float64 from a zero start. Like scikit-learn it iterates until the largest absolute
component of the objective's gradient is at most ``tol`` (their ``tol``, L-BFGS-B's ``gtol``;
the default here is tighter, see :data:`DEFAULT_TOL`), or until ``max_iter`` iterations;
stopping at the limit is reported (scikit-learn's ``ConvergenceWarning``), because the accuracies
of a probe short of its optimum depend on the limit. The problem is convex, so the result
depends on neither a learning rate nor a random seed (and is identical run after run on the same
device).
"""

from __future__ import annotations

import math
from typing import Callable

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from hcframe.evaluation.features import FeatureSet
from hcframe.evaluation.metrics import topk_accuracy
from hcframe.heads import LinearHead

__all__ = ["LinearProbe", "Standardizer", "fit_linear_classifier", "linear_probe_metrics", "probe_warning"]

#: The default gradient tolerance: scikit-learn's criterion, 10x tighter than its default 1e-4,
#: which on the quickstart's features still left 0.6-1.0 % of test predictions (and up to 0.4
#: points of top-1) away from the optimum; 1e-5 left none, for 1.5x the iterations.
DEFAULT_TOL = 1e-5
#: The default iteration limit (the quickstart's features need 110-420 iterations at 1e-5).
DEFAULT_MAX_ITER = 2000


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
    """A fitted probe: standardisation then a :class:`LinearHead`. ``iterations``: L-BFGS
    iterations used; ``gradient``: the largest absolute gradient component at the end;
    ``converged``: whether that is within the tolerance; ``stop``: why L-BFGS stopped
    (``"tolerance"``, ``"max_iter"`` or ``"no progress"``)."""

    standardizer: Standardizer
    head: LinearHead
    iterations: int = 0
    gradient: float = math.nan
    converged: bool = True
    stop: str = "tolerance"

    @torch.no_grad()
    def scores(self, features: Tensor) -> Tensor:
        """Logits for features ``[..., D]``."""
        shape = features.shape
        flat = features.reshape(-1, shape[-1])
        return self.head(self.standardizer(flat)).reshape(*shape[:-1], -1)


def _objective(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, weight_decay: float) -> Tensor:
    return F.cross_entropy(x @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()


def fit_linear_classifier(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
) -> LinearProbe:
    """Fit ``LinearHead(D, num_classes)`` on ``features`` ``[N, D]`` (standardised) by minimising
    the mean cross-entropy plus ``weight_decay / 2 * ||W||^2`` (the bias is not penalised) with
    full-batch L-BFGS in float64 (strong-Wolfe line search) from zero, until the largest absolute
    gradient component is at most ``tol`` or ``max_iter`` iterations are used (see
    :class:`LinearProbe` for how it stopped)."""
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}); got {int(labels.min())}..{int(labels.max())}")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"expected max_iter >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")
    standardizer = Standardizer.fit(features)
    device = features.device if features.device.type != "mps" else torch.device("cpu")  # MPS has no float64
    x = standardizer(features).to(device=device, dtype=torch.float64)
    y = labels.to(device)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=device, requires_grad=True)
    # tolerance_grad is L-BFGS's test on the largest absolute gradient component (scikit-learn's
    # gtol); tolerance_change just above float64 resolution only stops a search that can no
    # longer move; max_eval leaves room for line searches, so max_iter is the limit that counts.
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, max_eval=25 * max_iter, history_size=20, tolerance_grad=tol,
        tolerance_change=64 * torch.finfo(torch.float64).eps, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = _objective(x, y, weight, bias, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
        optimizer.zero_grad()
        _objective(x, y, weight, bias, weight_decay).backward()
    gradient = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    converged = gradient <= tol
    stop = "tolerance" if converged else ("max_iter" if iterations >= max_iter else "no progress")
    head = LinearHead(x.shape[1], num_classes).to(features.device)
    with torch.no_grad():
        head.fc.weight.copy_(weight.detach().to(head.fc.weight.dtype))
        head.fc.bias.copy_(bias.detach().to(head.fc.bias.dtype))
    head.eval()
    return LinearProbe(standardizer, head, iterations, gradient, converged, stop)


def probe_warning(probe: LinearProbe, where: str, max_iter: int, tol: float) -> str | None:
    """One line saying that ``probe`` (of the evaluation ``where``) stopped short of the
    tolerance, or ``None`` when it converged."""
    if probe.converged:
        return None
    if probe.stop == "max_iter":
        why = f"stopped at its iteration limit max_iter = {max_iter}"
        fix = "raise max_iter"
    else:
        why = f"stopped making progress after {probe.iterations} iterations"
        fix = "raise tol"
    return (
        f"warning: {where}: the linear probe's L-BFGS {why} with a largest gradient of {probe.gradient:.2e} > tol = {tol:g}; "
        f"its accuracies are not those of the optimum ({fix})"
    )


def num_classes_of(train: FeatureSet, test: FeatureSet) -> int:
    """The class count of the datasets (at least one more than the largest label seen)."""
    return max(train.num_classes, test.num_classes, int(train.labels.max()) + 1, int(test.labels.max()) + 1)


def linear_probe_metrics(
    train: FeatureSet,
    test: FeatureSet,
    *,
    weight_decay: float,
    max_iter: int,
    device: torch.device,
    tol: float = DEFAULT_TOL,
    where: str = "linear probe",
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, float | int]:
    """Fit on the training videos' view-averaged features; score the test videos' view-averaged
    features. Returns ``top1``, ``top5`` (video level), ``train_top1``, the set sizes and
    ``probe_iterations``; logs a one-line warning naming ``where`` when the fit stopped short of
    ``tol`` (:func:`probe_warning`)."""
    probe = fit_linear_classifier(train.video_features().to(device), train.labels, num_classes_of(train, test),
                                  weight_decay=weight_decay, max_iter=max_iter, tol=tol)
    warning = probe_warning(probe, where, max_iter, tol)
    if warning:
        log(warning)
    scores = probe.scores(test.video_features().to(device)).cpu()
    train_scores = probe.scores(train.video_features().to(device)).cpu()
    return {
        "top1": topk_accuracy(scores, test.labels, 1),
        "top5": topk_accuracy(scores, test.labels, 5),
        "train_top1": topk_accuracy(train_scores, train.labels, 1),
        "num_train": len(train.video_ids),
        "num_test": len(test.video_ids),
        "test_views": test.num_views,
        "probe_iterations": probe.iterations,
    }
