"""Evaluation metrics: top-k accuracy, video-level aggregation of view scores, retrieval recall@k.

All functions take CPU or device tensors and return Python floats (fractions in [0, 1]).
"""

from __future__ import annotations

from typing import Iterable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["clip_level_accuracy", "multiview_metrics", "recall_at_k", "topk_accuracy", "video_level_scores"]


def topk_accuracy(scores: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of rows of ``scores`` ``[N, C]`` whose label is among the ``k`` highest scores.

    ``k`` larger than the number of classes counts every row as correct.
    """
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"expected scores [N, C] and labels [N], got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("topk_accuracy of an empty set")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == labels.view(-1, 1)).any(dim=1).float().mean())


def video_level_scores(view_scores: Tensor) -> Tensor:
    """``[N, V, C]`` logits of ``V`` views per video -> ``[N, C]`` video scores: the mean of the
    views' softmax probabilities (so no single over-confident view dominates)."""
    if view_scores.ndim != 3:
        raise ValueError(f"expected view scores [N, V, C], got {tuple(view_scores.shape)}")
    return F.softmax(view_scores.float(), dim=2).mean(dim=1)


def clip_level_accuracy(view_scores: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy with every view ``[N, V, C]`` scored alone (``N * V`` predictions)."""
    n, v, c = view_scores.shape
    return topk_accuracy(view_scores.reshape(n * v, c), labels.repeat_interleave(v), 1)


def multiview_metrics(view_scores: Tensor, labels: Tensor) -> dict[str, float]:
    """``clip_top1`` (each view alone) and video-level ``top1`` / ``top5`` (softmax averaged over
    views) of ``[N, V, C]`` logits."""
    video = video_level_scores(view_scores)
    return {
        "top1": topk_accuracy(video, labels, 1),
        "top5": topk_accuracy(video, labels, 5),
        "clip_top1": clip_level_accuracy(view_scores, labels),
    }


def recall_at_k(
    queries: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor, ks: Iterable[int]
) -> dict[int, float]:
    """Retrieval recall: for each query, rank the gallery by cosine similarity; ``R@k`` is the
    fraction of queries with at least one item of their own label among the ``k`` most similar.

    ``queries`` ``[Q, D]``, ``gallery`` ``[G, D]``; every ``k`` must be at most ``G``.
    """
    ks = list(ks)
    if any(k > gallery.shape[0] or k <= 0 for k in ks):
        raise ValueError(f"ks {ks} must be between 1 and the gallery size {gallery.shape[0]}")
    q = F.normalize(queries.float(), dim=1)
    g = F.normalize(gallery.float(), dim=1)
    similarity = q @ g.T  # [Q, G]
    nearest = similarity.topk(max(ks), dim=1).indices  # sorted, most similar first
    match = gallery_labels[nearest] == query_labels.view(-1, 1)  # [Q, max k]
    return {k: float(match[:, :k].any(dim=1).float().mean()) for k in ks}
