"""Evaluation protocols: linear probe, multi-view testing, retrieval and fine-tuning.

A recipe's ``[[eval]]`` tables (validated by :mod:`hcframe.eval_tables`, where every key is
documented) run after pre-training (``hcframe run``, results in ``summary.json["eval"]``) or alone
on a checkpoint (``hcframe eval RECIPE --checkpoint P``, results in ``<run dir>/eval.json``)::

    [[eval]]
    protocol = "linear_probe"          # or "multiview", "retrieval", "finetune"
    branch = "concat"                  # a task's branch, or all branches concatenated
    train_data = { name = "ucf101", root = "data/ucf101", subset = "train", clips = { mode = "test", num_clips = 1, num_crops = 1 } }
    test_data = { name = "ucf101", root = "data/ucf101", subset = "test", clips = { mode = "test", num_clips = 10, num_crops = 3 } }
    splits = [1, 2, 3]                 # each split, then their mean
    pool = "grid"                      # optional: cell means on a grid = [t, h, w] (default "global")
    # source = "targets" with branch = "<a parsing task>": pool that task's part targets instead

Results: ``{"linear_probe/ucf101/concat/split1": {"top1": 0.61, "top5": 0.85, ...}, ...,
"linear_probe/ucf101/concat/mean": {...}}``; accuracies and recalls are fractions in [0, 1]
(:func:`eval_table` shows them in %). Frozen-encoder features are cached under
``<run dir>/features/`` keyed by the encoder weights, branch, dataset and transform
(:mod:`hcframe.evaluation.features`), so the linear probe, multi-view test and retrieval of the
same data extract them once, and evaluating a checkpoint again reuses them.
"""

from hcframe.evaluation.features import FeatureSet, encoder_fingerprint, extract_features, load_or_extract_features
from hcframe.evaluation.finetune import EncoderPath, FinetuneClassifier, finetune_metrics
from hcframe.evaluation.hook import EvaluateAtEnd
from hcframe.evaluation.linear_probe import LinearProbe, Standardizer, fit_linear_classifier, linear_probe_metrics
from hcframe.evaluation.metrics import (
    clip_level_accuracy,
    multiview_metrics,
    recall_at_k,
    topk_accuracy,
    video_level_scores,
)
from hcframe.evaluation.multiview import multiview_probe_metrics
from hcframe.evaluation.retrieval import retrieval_metrics
from hcframe.evaluation.runner import (
    default_eval_dir,
    eval_table,
    evaluate_checkpoint,
    load_model_weights,
    run_evaluations,
)
from hcframe.eval_tables import (
    EvalSpec,
    FinetuneOptions,
    LinearProbeOptions,
    MultiviewOptions,
    RetrievalOptions,
    build_eval_specs,
    parse_eval_tables,
)

__all__ = [
    "EncoderPath",
    "EvalSpec",
    "EvaluateAtEnd",
    "FeatureSet",
    "FinetuneClassifier",
    "FinetuneOptions",
    "LinearProbe",
    "LinearProbeOptions",
    "MultiviewOptions",
    "RetrievalOptions",
    "Standardizer",
    "build_eval_specs",
    "clip_level_accuracy",
    "default_eval_dir",
    "encoder_fingerprint",
    "eval_table",
    "evaluate_checkpoint",
    "extract_features",
    "finetune_metrics",
    "fit_linear_classifier",
    "linear_probe_metrics",
    "load_model_weights",
    "load_or_extract_features",
    "multiview_metrics",
    "multiview_probe_metrics",
    "parse_eval_tables",
    "recall_at_k",
    "retrieval_metrics",
    "run_evaluations",
    "topk_accuracy",
    "video_level_scores",
]
