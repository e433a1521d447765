"""Multi-view testing: every test view scored alone, and the views' scores averaged per video.

A test-mode dataset returns ``num_clips x num_crops`` views of each video (``views`` ``[V, 3, T, H,
W]``). ``clip_top1`` scores every view alone; video-level ``top1`` / ``top5`` average the views'
softmax probabilities (:func:`hcframe.evaluation.metrics.video_level_scores`). The ``multiview``
protocol applies it to the linear probe; fine-tuning always reports it for its classifier.
"""

from __future__ import annotations

from typing import Callable

import torch

from hcframe.evaluation.features import FeatureSet
from hcframe.evaluation.linear_probe import DEFAULT_TOL, fit_linear_classifier, num_classes_of, probe_warning
from hcframe.evaluation.metrics import multiview_metrics

__all__ = ["multiview_probe_metrics"]


def multiview_probe_metrics(
    train: FeatureSet,
    test: FeatureSet,
    *,
    weight_decay: float,
    max_iter: int,
    device: torch.device,
    tol: float = DEFAULT_TOL,
    where: str = "multi-view probe",
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, float | int]:
    """The linear probe of :func:`linear_probe_metrics`, applied to every test view alone:
    ``clip_top1``, and video-level ``top1`` / ``top5`` of the views' averaged softmax scores."""
    probe = fit_linear_classifier(train.video_features().to(device), train.labels, num_classes_of(train, test),
                                  weight_decay=weight_decay, max_iter=max_iter, tol=tol)
    warning = probe_warning(probe, where, max_iter, tol)
    if warning:
        log(warning)
    view_scores = probe.scores(test.features.to(device)).cpu()  # [N, V, C]
    return {
        **multiview_metrics(view_scores, test.labels),
        "num_train": len(train.video_ids),
        "num_test": len(test.video_ids),
        "test_views": test.num_views,
        "probe_iterations": probe.iterations,
    }
