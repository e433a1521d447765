"""The ``parsing_distill`` pretext task: predict a human-parsing teacher's part distribution from
the video encoder's spatio-temporal feature map.

Time alignment
--------------
Every frame of the clip is supervised. Targets are per-frame part probabilities ``[B, K, T, h, w]``
(``batch["parts"][0]``: the maps of the task's view after the batch transform, or the teacher run
online on the view's frames). They are area-averaged onto the head's output grid ``[t, h', w']``
(``adaptive_avg_pool3d``): a feature cell that covers ``T/t`` consecutive frames and an ``h/h' x w/w'``
patch is supervised by the average part distribution over those frames and pixels. With a
temporally strided trunk (``t < T``) a cell therefore predicts the mix of its frames; nothing is
upsampled in time. Pixels without a target (all-zero maps: outside the image after a crop, or
unknown in ground truth) do not contribute to that average; a cell whose average target mass is
below :data:`MIN_TARGET_MASS` is ignored, and the others are renormalised to sum to 1.

Losses
------
``loss="kl"``: ``T^2 * KL(q || s)`` per valid cell, averaged, where ``q`` is the target softened
by the temperature (``q ∝ p^(1/T)``, i.e. teacher logits divided by ``T``) and
``s = softmax(student_logits / T)``. ``loss="ce"``: cross-entropy of the student logits to the
target's argmax. Optional feature term (``feature_distill_weight > 0``, online teachers that
expose features only: ``teacher.feature_dim`` set, see :class:`hcframe.Teacher`): a 1x1x1 adapter maps the branch features to the teacher's feature
width; the loss is the mean squared distance between the L2-normalised adapter output and the
L2-normalised teacher features area-averaged onto the same grid.

Metrics (on valid cells, student argmax vs target argmax): ``pixel_acc``; ``miou``: mean over the
classes present in either of intersection / union.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hcframe
from hcframe.components import TaskInput, TaskOutput
from hcframe_parsing.cache import frame_step_mismatch, open_teacher_cache, run_teacher

__all__ = [
    "MIN_TARGET_MASS",
    "ParsingDistillation",
    "ParsingHead",
    "align_targets",
    "distill_loss",
    "parsing_metrics",
]

#: A cell whose area-averaged target mass (fraction of its pixels with a target) is below this is
#: ignored: its target is unknown.
MIN_TARGET_MASS = 1e-3


class ParsingHead(hcframe.Head):
    """``[B, D, t, h, w] -> [B, K, t, h*upsample, w*upsample]`` part logits: a 1x3x3 conv, batch
    norm, ReLU, a 1x1x1 classifier, then bilinear spatial upsampling by ``upsample``."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, upsample: int = 1) -> None:
        super().__init__()
        self.upsample = upsample
        self.body = nn.Sequential(
            nn.Conv3d(in_dim, hidden_dim, (1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden_dim, num_classes, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        # float32 from the classifier on (also under autocast): the KL's log-softmax and the argmax
        # metrics read these logits, and bfloat16 would round them to 8 significant bits.
        logits = self.body(features).float()
        if self.upsample > 1:
            logits = F.interpolate(logits, scale_factor=(1, self.upsample, self.upsample), mode="trilinear", align_corners=False)
        return logits


def align_targets(parts: Tensor, grid: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """Per-frame probabilities ``[B, K, T, h, w]`` -> (distribution ``[B, K, t, h', w']`` renormalised
    over the pixels that have a target, valid mask ``[B, t, h', w']``) on ``grid = (t, h', w')``."""
    # Area averages in float32: the maps arrive as float16 and the cell masses are compared with
    # MIN_TARGET_MASS (average pooling is never lowered to bf16/fp16 by autocast).
    pooled = F.adaptive_avg_pool3d(parts.float(), grid)
    mass = pooled.sum(dim=1)
    valid = mass > MIN_TARGET_MASS
    dist = pooled / mass.clamp_min(MIN_TARGET_MASS).unsqueeze(1)
    return dist, valid


def distill_loss(student_logits: Tensor, target: Tensor, valid: Tensor, loss: str = "kl", temperature: float = 1.0) -> Tensor:
    """Mean over valid cells; ``student_logits``/``target`` ``[B, K, ...]``, ``valid`` ``[B, ...]``.
    Returns 0 (with a graph) when no cell is valid."""
    # float32 by construction (whatever autocast made of the logits): softmax / log-softmax, the
    # temperature power and xlogy lose the KL's small terms in bfloat16 and overflow in float16.
    logits = student_logits.float().movedim(1, -1)[valid]  # [M, K]
    q = target.float().movedim(1, -1)[valid]
    if logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    if loss == "ce":
        return F.cross_entropy(logits, q.argmax(dim=1))
    if temperature != 1.0:
        q = q.clamp_min(0).pow(1.0 / temperature)
        q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-12)
    log_s = F.log_softmax(logits / temperature, dim=1)
    kl = (torch.xlogy(q, q) - q * log_s).sum(dim=1)
    return kl.mean() * temperature**2


def parsing_metrics(student_logits: Tensor, target: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """Pixel accuracy and mIoU (over classes present in prediction or target) on valid cells."""
    num_classes = student_logits.shape[1]
    pred = student_logits.detach().argmax(dim=1)[valid]
    true = target.detach().argmax(dim=1)[valid]
    if pred.numel() == 0:
        nan = torch.tensor(float("nan"))
        return {"pixel_acc": nan, "miou": nan}
    acc = (pred == true).float().mean()
    inter = torch.bincount(true[pred == true], minlength=num_classes).float()
    area_pred = torch.bincount(pred, minlength=num_classes).float()
    area_true = torch.bincount(true, minlength=num_classes).float()
    union = area_pred + area_true - inter
    present = union > 0
    miou = (inter[present] / union[present]).mean()
    return {"pixel_acc": acc, "miou": miou}


class ParsingDistillation(hcframe.PretextTask):
    """Distil a human-parsing teacher into the task's branch (see the module docstring).

    Args:
        teacher: the teacher component (a nested ``[tasks.<name>.teacher]`` table: ``schp``,
            ``torchscript`` or ``synthetic_ground_truth``).
        cache: folder of a teacher cache made by ``hcframe cache-teacher`` for this teacher; when set,
            data workers read targets from it (a cache of another teacher is refused). Empty: the
            teacher runs online on each batch (not possible for ``synthetic_ground_truth``, whose
            targets always come from ``dataset.ground_truth_parts()``: a teacher that is not
            ``online`` gives its own target store, see :class:`hcframe.Teacher`).
        temperature: softening temperature ``T > 0`` of the KL loss.
        loss: ``"kl"`` (to the softened distribution) or ``"ce"`` (to the argmax labels).
        hidden_dim: width of the parsing head's hidden layer.
        upsample: spatial upsampling factor of the head's logits (1 = the feature grid).
        feature_distill_weight: weight of the optional feature-level term (0 = off); needs an online
            teacher that exposes features (``teacher.feature_dim`` set, e.g. ``schp``).
        teacher_batch_size: frames per teacher forward in online mode.
    """

    num_views = 1
    needs = frozenset({"parts"})

    def __init__(
        self,
        teacher: hcframe.Teacher,
        cache: str = "",
        temperature: float = 1.0,
        loss: Literal["kl", "ce"] = "kl",
        hidden_dim: int = 128,
        upsample: int = 1,
        feature_distill_weight: float = 0.0,
        teacher_batch_size: int = 64,
    ) -> None:
        super().__init__()
        if not isinstance(teacher, hcframe.Teacher):
            raise ValueError(f"teacher must be a teacher component, got {type(teacher).__name__}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if loss not in ("kl", "ce"):
            raise ValueError(f"loss {loss!r} is not one of kl, ce")
        if hidden_dim < 1 or upsample < 1 or teacher_batch_size < 1:
            raise ValueError(f"hidden_dim, upsample and teacher_batch_size must be >= 1, got {hidden_dim}, {upsample}, {teacher_batch_size}")
        if feature_distill_weight < 0:
            raise ValueError(f"feature_distill_weight must be >= 0, got {feature_distill_weight}")
        if feature_distill_weight > 0:
            if cache or not teacher.online or teacher.feature_dim is None:
                raise ValueError(
                    "feature_distill_weight > 0 needs an online teacher that exposes features (e.g. schp with cache = \"\"); "
                    f"teacher {type(teacher).__name__} with cache={cache!r} has none: set feature_distill_weight = 0"
                )
        # The teacher is frozen and kept out of the module tree: it is not trained, not saved in
        # the student's checkpoints, and moved to the batch's device on first use.
        self.__dict__["teacher"] = teacher.freeze()
        self.cache = cache
        self.temperature = float(temperature)
        self.loss_kind = loss
        self.hidden_dim = hidden_dim
        self.upsample = upsample
        self.feature_distill_weight = float(feature_distill_weight)
        self.teacher_batch_size = teacher_batch_size
        self.head: ParsingHead | None = None
        self.adapter: nn.Module | None = None

    @property
    def num_classes(self) -> int:
        return self.teacher.num_classes

    def setup(self, encoder: nn.Module, feature_dim: int) -> None:
        self.head = ParsingHead(feature_dim, self.hidden_dim, self.num_classes, self.upsample)
        if self.feature_distill_weight > 0:
            self.adapter = nn.Conv3d(feature_dim, int(self.teacher.feature_dim), 1)

    def target_store(self, dataset: Any) -> Any | None:
        stored = self.teacher.target_store(dataset)  # a teacher made of stored maps gives them itself
        if stored is not None:
            return stored
        if self.cache:
            store = open_teacher_cache(self.cache, self.teacher)
            note = frame_step_mismatch(store, dataset)
            if note:
                warnings.warn(note, stacklevel=2)
            return store
        return None

    # --- targets ---------------------------------------------------------------------------------
    def online_targets(
        self, batch: dict[str, Any], with_features: bool = False, feature_size: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Run the teacher on the view's frames: probabilities ``[B, K, T, H, W]`` (and features
        ``[B, C, T, h, w]`` when asked; ``(h, w)`` = ``feature_size`` when the teacher samples its
        features there, else whatever it returns)."""
        if not self.teacher.online:
            raise RuntimeError(
                f"parsing_distill with teacher {type(self.teacher).__name__} (stored targets, not run on frames) "
                "found no 'parts' in the batch: the dataset's target_store was not set from task.target_store(dataset)"
            )
        clips = batch["views"][0]
        b, _, t, h, w = clips.shape
        mean = torch.as_tensor(batch["pixel_mean"], device=clips.device, dtype=torch.float32).view(1, 3, 1, 1, 1)
        std = torch.as_tensor(batch["pixel_std"], device=clips.device, dtype=torch.float32).view(1, 3, 1, 1, 1)
        frames = (clips.float() * std + mean).clamp_(0.0, 1.0).permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
        teacher = self.teacher
        if next(iter(teacher.parameters()), torch.empty(0)).device != clips.device:
            teacher.to(clips.device)
        if with_features:
            logits, feats = self._teacher_with_features(frames, (h, w), feature_size)
            feats = feats.reshape(b, t, *feats.shape[1:]).permute(0, 2, 1, 3, 4)
        else:
            logits = run_teacher(teacher, frames, (h, w), batch_size=self.teacher_batch_size)
            feats = None
        probs = torch.softmax(logits.float(), dim=1).reshape(b, t, -1, h, w).permute(0, 2, 1, 3, 4)
        return probs, feats

    def _teacher_with_features(self, frames: Tensor, size: tuple[int, int], feature_size: tuple[int, int] | None) -> tuple[Tensor, Tensor]:
        # The teacher applies its own precision option (fp32 unless it was built with "bf16").
        logits, feats = [], []
        with torch.no_grad():
            for start in range(0, frames.shape[0], self.teacher_batch_size):
                chunk = frames[start : start + self.teacher_batch_size]
                lo, fe = self.teacher.forward_with_features(chunk, output_size=size, feature_size=feature_size)
                logits.append(lo.float())
                feats.append(fe.float())
        return torch.cat(logits), torch.cat(feats)

    def metric_info(self) -> list[hcframe.MetricInfo]:
        info = [hcframe.MetricInfo("distill", "loss", progress=True)]
        if self.feature_distill_weight > 0:
            info.append(hcframe.MetricInfo("feature", "loss"))
        return info + [
            hcframe.MetricInfo("miou", "fraction", progress=True, plot="parsing_quality"),
            hcframe.MetricInfo("pixel_acc", "accuracy", plot="parsing_quality"),
            hcframe.MetricInfo("valid_fraction", "fraction"),
        ]

    # --- images --------------------------------------------------------------------------------
    def visualise(self, inp: TaskInput, max_clips: int = 4) -> hcframe.LabelMaps:
        """The middle frame of the first ``max_clips`` clips, the teacher's part labels (argmax of
        the targets: the ground truth, the cache, or the teacher run now) and the student's (argmax
        of the head's logits at the feature cell covering that frame)."""
        assert self.head is not None
        batch = inp.batch
        clips = batch["views"][0][:max_clips].float()
        b, _, t, h, w = clips.shape
        mid = t // 2
        mean = torch.as_tensor(batch["pixel_mean"], device=clips.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.as_tensor(batch["pixel_std"], device=clips.device, dtype=torch.float32).view(1, 3, 1, 1)
        frames = ((clips[:, :, mid] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        parts = batch.get("parts")
        targets = parts[0][:b].float() if parts is not None else self.online_targets(dict(batch))[0][:b]
        teacher = targets[:, :, mid]  # [B, K, h, w]
        teacher_labels = teacher.argmax(dim=1).to(torch.uint8)
        teacher_labels[teacher.sum(dim=1) < 0.5] = 255  # no target here (outside a crop, unknown)
        logits = self.head(inp.features[0].feature_map[:b])  # [B, K, t', h', w']
        cell = min(mid * logits.shape[2] // t, logits.shape[2] - 1)
        student_labels = logits[:, :, cell].argmax(dim=1).to(torch.uint8)
        source = "ground truth" if not self.teacher.online else ("teacher (cached)" if self.cache else "teacher")
        return hcframe.LabelMaps(
            frames=frames.cpu(),
            maps={source: teacher_labels.cpu(), "student": student_labels.cpu()},
            label_names=tuple(self.teacher.label_names),
        )

    # --- the step --------------------------------------------------------------------------------
    def forward(self, inp: TaskInput) -> TaskOutput:
        if self.head is None:
            raise RuntimeError("parsing_distill: setup(encoder, feature_dim) was not called")
        fmap = inp.features[0].feature_map
        logits = self.head(fmap)
        grid = tuple(logits.shape[-3:])
        use_features = self.feature_distill_weight > 0
        parts = inp.batch.get("parts")
        teacher_feats = None
        if parts is not None and not use_features:
            targets = parts[0]
        else:
            feature_size = (int(fmap.shape[-2]), int(fmap.shape[-1]))
            targets, teacher_feats = self.online_targets(dict(inp.batch), with_features=use_features, feature_size=feature_size)
        dist, valid = align_targets(targets, grid)
        losses = {"distill": distill_loss(logits, dist, valid, self.loss_kind, self.temperature)}
        if use_features:
            assert self.adapter is not None and teacher_feats is not None
            # L2 normalisation and the squared distance in float32 (the adapter ran under autocast)
            student = F.normalize(self.adapter(fmap).float(), dim=1)
            target_feats = F.normalize(F.adaptive_avg_pool3d(teacher_feats, tuple(fmap.shape[-3:])), dim=1)
            losses["feature"] = self.feature_distill_weight * (student - target_feats).pow(2).sum(dim=1).mean()
        metrics = parsing_metrics(logits, dist, valid)
        metrics["valid_fraction"] = valid.float().mean().detach()
        return TaskOutput(losses=losses, metrics=metrics)
