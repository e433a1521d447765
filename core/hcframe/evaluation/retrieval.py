"""Nearest-neighbour video retrieval (Xu et al., CVPR 2019; the protocol of the video
self-supervised papers): test videos query training videos by cosine similarity of their features
(each video's features averaged over its views); ``R@k`` is the fraction of queries with a video of
their own class among the ``k`` nearest training videos.
"""

from __future__ import annotations

from typing import Callable

from hcframe.evaluation.features import FeatureSet
from hcframe.evaluation.metrics import recall_at_k

__all__ = ["retrieval_metrics"]


def retrieval_metrics(train: FeatureSet, test: FeatureSet, ks: list[int], log: Callable[[str], None] = lambda m: None) -> dict[str, float | int]:
    """``R@k`` for every ``k`` in ``ks`` not larger than the number of training videos."""
    gallery = len(train.video_ids)
    kept = [k for k in ks if k <= gallery]
    dropped = [k for k in ks if k > gallery]
    if dropped:
        log(f"retrieval: R@{', R@'.join(map(str, dropped))} not reported: only {gallery} training videos")
    if not kept:
        raise ValueError(f"retrieval: every k in {ks} exceeds the {gallery} training videos")
    recalls = recall_at_k(test.video_features(), test.labels, train.video_features(), train.labels, kept)
    return {**{f"R@{k}": v for k, v in recalls.items()}, "num_train": gallery, "num_test": len(test.video_ids), "test_views": test.num_views}
