"""Fine-tuning: a copy of the pre-trained encoder path plus a classifier, trained end to end.

The pre-trained :class:`~hcframe.engine.model.MultiTaskModel` is never modified: the trunk and the
branches the evaluated representation uses are deep-copied into an :class:`EncoderPath`.

Under torchrun the copy trains under DDP: ``batch_size`` stays the global batch, each process
takes ``batch_size / world`` clips of it (the same videos one process would put in that step's
batch: :class:`~hcframe.engine.sampler.EpochSampler` deals out one permutation), batch norm is
synchronised across GPUs (one process's statistics), and the test views are sharded and gathered.
What still differs from one process: the random draws of the batch transform and of dropout are
made per process. A model without batch norm, trained without random augmentation and dropout,
reaches the one-process weights up to float rounding (tests/evaluation/test_eval_distributed.py).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from hcframe.data import BAD
from hcframe.engine import distributed as hd
from hcframe.engine.model import MultiTaskModel
from hcframe.engine.optim import build_optimizer, build_schedule, set_learning_rate
from hcframe.engine.sampler import EpochSampler
from hcframe.engine.precision import autocast, grad_scaler
from hcframe.progress import ProgressBar
from hcframe.evaluation.features import TestViews, device_views, gather_in_dataset_order, make_loader, sum_over_ranks
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
    number of unreadable videos skipped. Under torchrun each process scores its share and every
    process returns all of them, in the dataset's order."""
    net.eval()
    readable = TestViews(dataset, transform, device, batch_size=batch_size, num_workers=num_workers, log=log,
                         progress=progress, description=f"finetune: testing {len(dataset)} videos")
    scores, labels, indices = [], [], []
    for views, batch in readable:
        with autocast(device, precision):
            scores.append(torch.stack([net(v).float() for v in views], dim=1).cpu())
        labels.append(batch["label"].view(-1).long())
        indices.append(batch["index"].view(-1).long())
    num_bad = sum_over_ranks(readable.num_bad)
    local = [torch.cat(t) if t else None for t in (indices, scores, labels)]
    index, all_scores, all_labels = gather_in_dataset_order(*local)
    if index is None or index.numel() == 0:
        raise RuntimeError(f"no test video of {type(dataset).__name__} could be read")
    return all_scores, all_labels, num_bad


def _sum_over_ranks_float(value: Tensor) -> float:
    """A device scalar summed over the processes of a distributed run, read back once."""
    if hd.is_distributed():
        value = value.clone()
        torch.distributed.all_reduce(value)
    return float(value)


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
    world, rank = hd.world_size(), hd.rank()
    if batch_size % world:
        raise ValueError(f"fine-tuning: batch_size {batch_size} (the global batch) is not divisible by the {world} processes")
    net = FinetuneClassifier(EncoderPath(model, branch), num_classes, options.dropout).to(device)
    if hd.is_distributed() and device.type == "cuda":  # batch statistics over the global batch, as in one process
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    train_transform.set_flip_allowed(bool(getattr(train_dataset, "flip_preserves_label", True)))
    lr = scaled_learning_rate(options.lr, batch_size)
    log(f"finetune: lr {options.lr:g} per {REFERENCE_BATCH} clips -> {lr:g} at batch size {batch_size}"
        f"{f' ({batch_size // world} on each of {world} processes)' if world > 1 else ''}")
    # One permutation per epoch, dealt out over the processes: each step's global batch holds the
    # videos one process would take in that step.
    sampler = EpochSampler(len(train_dataset), world, rank, seed=seed, shuffle=True)
    drop_last = len(train_dataset) >= batch_size  # no batch of one for batch norm
    loader = make_loader(train_dataset, batch_size // world, num_workers, sampler=sampler, drop_last=drop_last)
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
    trained: nn.Module = net
    if hd.is_distributed():
        trained = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    scaler = grad_scaler(device, precision)
    step, epoch_loss, bad_count = 0, float("nan"), 0
    with ProgressBar("finetune: training", max_steps, terminal=progress, log=log, unit="steps") as bar:
        for epoch in range(options.epochs):
            sampler.set_position(epoch, 0)
            trained.train()
            loss_sum, loss_steps = torch.zeros((), device=device), 0  # read once per epoch, not per step
            for batch in loader:
                bad = batch.pop(BAD)
                for b in bad:
                    log(f"skipping unreadable video {b.path}: {b.reason}")
                bad_count += len(bad)
                # Every process takes every step (DDP's all-reduce): a batch none of whose videos could
                # be read on one process is skipped by all of them.
                if not hd.all_ranks_agree("views" in batch):
                    continue
                set_learning_rate(optimizer, lr, schedule, step, max_steps)
                views = device_views(batch, train_transform, device, train=True)
                clips = torch.cat(views, dim=0)
                labels = batch["label"].view(-1).long().to(device).repeat(len(views))
                with autocast(device, precision):
                    logits = trained(clips)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=options.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                bar.advance()
                loss_sum += loss.detach()
                loss_steps += 1
            epoch_loss = _sum_over_ranks_float(loss_sum) / max(loss_steps * world, 1)
            log(f"finetune epoch {epoch + 1}/{options.epochs}: loss {epoch_loss:.4f}")
    bad_count = sum_over_ranks(bad_count)
    # Each process scores its share with its own copy (identical after DDP); in eval mode
    # SyncBatchNorm uses its running statistics, without a collective.
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
