"""Fine-tuning: a copy of the pre-trained encoder path plus a classifier, trained end to end.

The pre-trained :class:`~hcframe.engine.model.MultiTaskModel` is never modified: the trunk and the
branches the evaluated representation uses are deep-copied into an :class:`EncoderPath`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcframe.data import BAD
from hcframe.engine.model import MultiTaskModel
from hcframe.engine.optim import build_optimizer, build_schedule, set_learning_rate
from hcframe.engine.sampler import EpochSampler
from hcframe.engine.precision import autocast, grad_scaler
from hcframe.progress import ProgressBar
from hcframe.evaluation.features import TestViews, device_views, make_loader
from hcframe.evaluation.metrics import multiview_metrics
from hcframe.eval_tables import FinetuneOptions
from hcframe.heads import LinearHead
from hcframe.recipe import OptimSpec, ScheduleSpec

__all__ = ["EncoderPath", "FinetuneClassifier", "REFERENCE_BATCH", "finetune_metrics", "scaled_learning_rate", "view_logits"]

#: The batch size (clips per step) that ``FinetuneOptions.lr`` is given for.
REFERENCE_BATCH = 16


def scaled_learning_rate(lr: float, batch_size: int) -> float:
    """The linear scaling rule: ``lr`` is for :data:`REFERENCE_BATCH` clips per step."""
    return lr * batch_size / REFERENCE_BATCH


class EncoderPath(nn.Module):
    """A trainable copy of what ``model.encode(clips, branch)`` computes: the shared trunk, then
    the branch of task ``branch`` (or every branch, concatenated, for ``"concat"``), then pooling.
    ``output_dim`` equals ``model.representation_dim(branch)``."""

    def __init__(self, model: MultiTaskModel, branch: str) -> None:
        super().__init__()
        if branch == "concat":
            names = [] if model.split == "none" else list(model.branches)
        elif branch in model.branches:
            names = [branch]
        else:
            raise ValueError(f"no branch {branch!r}; branches are {', '.join(model.branches)} or 'concat'")
        self.trunk = copy.deepcopy(model.trunk)
        self.branches = nn.ModuleDict({n: copy.deepcopy(model.branches[n]) for n in names})
        self._pool = model._pool  # parameter-free (see MultiTaskModel)
        self.output_dim = model.representation_dim(branch)
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(self, clips: Tensor) -> Tensor:
        shared = self.trunk(clips)
        if not self.branches:
            return self._pool(shared)
        return torch.cat([self._pool(b(shared)) for b in self.branches.values()], dim=1)


class FinetuneClassifier(nn.Module):
    """:class:`EncoderPath` followed by a :class:`LinearHead` (with dropout)."""

    def __init__(self, path: EncoderPath, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.path = path
        self.head = LinearHead(path.output_dim, num_classes, dropout)

    def forward(self, clips: Tensor) -> Tensor:
        return self.head(self.path(clips))


@torch.no_grad()
def view_logits(net: nn.Module, dataset: Any, transform: nn.Module, device: torch.device, *, batch_size: int,
                num_workers: int, precision: str, log: Callable[[str], None], progress: bool = False) -> tuple[Tensor, Tensor, int]:
    """Logits ``[N, V, C]`` of every view of every readable video, their labels ``[N]``, and the
    number of unreadable videos skipped."""
    net.eval()
    readable = TestViews(dataset, transform, device, batch_size=batch_size, num_workers=num_workers, log=log,
                         progress=progress, description=f"finetune: testing {len(dataset)} videos")
    scores, labels = [], []
    for views, batch in readable:
        with autocast(device, precision):
            scores.append(torch.stack([net(v).float() for v in views], dim=1).cpu())
        labels.append(batch["label"].view(-1).long())
    if not scores:
        raise RuntimeError(f"no test video of {type(dataset).__name__} could be read")
    return torch.cat(scores), torch.cat(labels), readable.num_bad


def finetune_metrics(
    model: MultiTaskModel,
    branch: str,
    train_dataset: Any,
    test_dataset: Any,
    options: FinetuneOptions,
    train_transform: nn.Module,
    test_transform: nn.Module,
    device: torch.device,
    *,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    precision: str = "auto",
    log: Callable[[str], None] = lambda m: None,
    progress: bool = False,
) -> dict[str, float | int]:
    """Fine-tune a copy of ``model``'s encoder path on ``train_dataset`` and test it multi-view.

    One clip per video and step, ``batch_size`` videos per step, at the rate
    ``options.lr * batch_size / 16`` (:func:`scaled_learning_rate`). ``train_transform`` is told
    the dataset's ``flip_preserves_label`` (no mirroring when False). Draws from the global torch
    RNG (head initialisation, dropout, augmentation): the caller seeds it (``run_evaluations`` does
    so inside :func:`torch.random.fork_rng`). Returns ``top1``, ``top5``, ``clip_top1`` on the test
    set, the last epoch's mean training loss and set sizes.
    """
    num_classes = len(train_dataset.class_names)
    if num_classes == 0:
        raise ValueError(f"fine-tuning needs a labelled dataset; {type(train_dataset).__name__} has no class names")
    net = FinetuneClassifier(EncoderPath(model, branch), num_classes, options.dropout).to(device)
    train_transform.set_flip_allowed(bool(getattr(train_dataset, "flip_preserves_label", True)))
    lr = scaled_learning_rate(options.lr, batch_size)
    log(f"finetune: lr {options.lr:g} per {REFERENCE_BATCH} clips -> {lr:g} at batch size {batch_size}")
    sampler = EpochSampler(len(train_dataset), 1, 0, seed=seed, shuffle=True)
    drop_last = len(train_dataset) >= batch_size  # no batch of one for batch norm
    loader = make_loader(train_dataset, batch_size, num_workers, sampler=sampler, drop_last=drop_last)
    steps_per_epoch = len(loader)
    max_steps = options.epochs * steps_per_epoch
    optimizer = build_optimizer(
        net, OptimSpec(name=options.optimizer, lr=lr, momentum=options.momentum, weight_decay=options.weight_decay), device.type
    )
    schedule = build_schedule(
        ScheduleSpec(
            name=options.schedule,
            warmup_steps=options.warmup_epochs * steps_per_epoch,
            milestones=[m * steps_per_epoch for m in options.milestones],
            gamma=options.gamma,
        ),
        max_steps,
    )
    scaler = grad_scaler(device, precision)
    step, epoch_loss, bad_count = 0, float("nan"), 0
    with ProgressBar("finetune: training", max_steps, terminal=progress, log=log, unit="steps") as bar:
        for epoch in range(options.epochs):
            sampler.set_position(epoch, 0)
            net.train()
            losses = []
            for batch in loader:
                bad = batch.pop(BAD)
                for b in bad:
                    log(f"skipping unreadable video {b.path}: {b.reason}")
                bad_count += len(bad)
                if "views" not in batch:
                    continue
                set_learning_rate(optimizer, lr, schedule, step, max_steps)
                views = device_views(batch, train_transform, device, train=True)
                clips = torch.cat(views, dim=0)
                labels = batch["label"].view(-1).long().to(device).repeat(len(views))
                with autocast(device, precision):
                    logits = net(clips)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=options.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                bar.advance()
                losses.append(float(loss.detach()))
            epoch_loss = sum(losses) / max(len(losses), 1)
            log(f"finetune epoch {epoch + 1}/{options.epochs}: loss {epoch_loss:.4f}")
    scores, labels, test_bad = view_logits(net, test_dataset, test_transform, device, batch_size=batch_size,
                                           num_workers=num_workers, precision=precision, log=log, progress=progress)
    return {
        **multiview_metrics(scores, labels),
        "train_loss": epoch_loss,
        "num_train": len(train_dataset),
        "num_test": int(labels.shape[0]),
        "test_views": int(scores.shape[1]),
        **({"bad_videos": bad_count + test_bad} if bad_count + test_bad else {}),
    }
