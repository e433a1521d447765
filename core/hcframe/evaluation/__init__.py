"""Evaluation protocols: linear probe, multi-view testing, retrieval and fine-tuning.

A recipe's ``[[eval]]`` tables (validated by :mod:`hcframe.evaluation.spec`) run after
pre-training (``hcframe run``) or alone on a checkpoint (``hcframe eval RECIPE --checkpoint P``).
See :func:`run_evaluations` for the results' layout.
"""

from hcframe.evaluation.features import FeatureSet, encoder_fingerprint, extract_features, load_or_extract_features
from hcframe.evaluation.finetune import EncoderPath, FinetuneClassifier, finetune_metrics
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
from hcframe.evaluation.spec import (
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
