"""Heads and tasks the core ships (registered in :mod:`hcframe.builtin` like any plugin's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcframe.components import Head, PretextTask, TaskInput, TaskOutput
from hcframe.metrics import MetricInfo

__all__ = ["LinearHead", "OnlineLinearProbe", "SupervisedClassification"]


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected an integer >= 1 (the dataset's number of classes), got {num_classes!r}")
    return num_classes


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)


class LinearHead(Head):
    """Linear classifier on pooled features, with optional dropout (the linear-probe head)."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(features))


class SupervisedClassification(PretextTask):
    """Cross-entropy on the dataset's labels: the supervised upper bound, and a reference task."""

    num_views = 1
    needs = frozenset({"label"})

    def __init__(self, num_classes: int, dropout: float = 0.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.dropout = _check_probability("dropout", dropout)
        self.label_smoothing = _check_probability("label_smoothing", label_smoothing)
        self.head: LinearHead | None = None

    def setup(self, encoder: nn.Module, feature_dim: int) -> None:
        self.head = LinearHead(feature_dim, self.num_classes, self.dropout)

    def metric_info(self) -> tuple[MetricInfo, ...]:
        return (MetricInfo("ce", "loss", progress=True), MetricInfo("acc", "accuracy", progress=True))

    def forward(self, inp: TaskInput) -> TaskOutput:
        assert self.head is not None, "setup() was not called"
        logits = self.head(inp.features[0].pooled)
        labels = inp.batch["label"]
        # log-softmax in float32 whatever autocast made of the logits (bf16 keeps 8 significant bits)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            acc = (logits.argmax(1) == labels).float().mean()
        return TaskOutput({"ce": loss}, {"acc": acc})


class OnlineLinearProbe(PretextTask):
    """A linear classifier trained on detached features during pre-training: a cheap live signal of
    how linearly separable the representation is. Its gradient never reaches the encoder, so the
    pre-training stays label-free; its ``acc`` is on training clips, as they come."""

    num_views = 1
    needs = frozenset({"label"})

    def __init__(self, num_classes: int, branch: str = "concat") -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.reads_branch = branch
        self.head: LinearHead | None = None

    def setup(self, encoder: nn.Module, feature_dim: int) -> None:
        self.head = LinearHead(feature_dim, self.num_classes)

    def metric_info(self) -> tuple[MetricInfo, ...]:
        return (MetricInfo("ce", "loss"), MetricInfo("acc", "accuracy", progress=True))

    def forward(self, inp: TaskInput) -> TaskOutput:
        assert self.head is not None, "setup() was not called"
        logits = self.head(inp.features[0].pooled)
        labels = inp.batch["label"]
        with torch.no_grad():
            acc = (logits.argmax(1) == labels).float().mean()
        # log-softmax in float32 whatever autocast made of the logits (bf16 keeps 8 significant bits)
        return TaskOutput({"ce": F.cross_entropy(logits.float(), labels)}, {"acc": acc})
