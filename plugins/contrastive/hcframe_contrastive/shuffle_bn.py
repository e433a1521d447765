"""Keeping batch-norm statistics from leaking the positive pair to a MoCo key encoder.

Why: in MoCo the query ``q_i`` and its key ``k_i`` come from two views of the same clip, computed by
two encoders in two separate batches. A batch-norm layer normalises each sample with statistics of
the batch it sits in; when the key batch on a device holds exactly the clips of the query batch on
that device, the statistics themselves carry a signature of that sub-batch, which the model can use
to find the positive among the queue's keys (computed in other batches) without learning anything
about the video ("cheating" through BN, MoCo section 3.3).

Three settings, picked with :class:`hcframe_contrastive.MoCoTask`'s ``key_bn`` argument:

- ``"shuffle"`` (default, :func:`shuffled_forward`): shuffling BN. The key batch is gathered from all
  ranks, permuted with a permutation drawn on rank 0 and broadcast, each rank encodes its slice of
  the shuffled global batch, and the keys are gathered and put back in order. The keys of a rank's
  queries are then normalised with statistics of a *different* random sub-batch. Works with any
  backend (gloo on CPU, NCCL on GPU).
- ``"sync"`` (:func:`convert_to_sync_batchnorm`): the key encoder's BN layers become
  :class:`torch.nn.SyncBatchNorm`, whose statistics are over the whole global batch, so a device's
  sub-batch leaves no signature of its own. In a multi-process run PyTorch supports SyncBatchNorm
  only on accelerators (CUDA), not on CPU/gloo.
- ``"running_stats"``: the key encoder runs in eval mode, normalising with the running statistics
  it copies from the online encoder at every momentum update, so no key depends on the other clips
  of its batch. This is the only setting that removes the leak in a single process; the price is
  that early in training the running statistics lag behind the weights.

Effect in a single process: shuffling and SyncBN cannot do anything there (the key batch *is* the
query batch; permuting a batch does not change its statistics, and SyncBN over one process is plain
BN), so with ``"shuffle"`` or ``"sync"`` the key encoder's BN statistics come from the same clips as
the queries. In the queue form the positive is the only candidate computed in the current batch
(all negatives come from earlier batches), so the model can in principle tell it apart by the
batch's BN signature instead of by content: the pretext accuracy then rises faster than the features
improve. The signature weakens as the batch grows; for single-process runs that matter use
``key_bn="running_stats"`` or several processes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hcframe.engine.distributed import all_gather_no_grad, is_distributed, rank, world_size

__all__ = ["convert_to_sync_batchnorm", "global_permutation", "shuffled_forward"]


def global_permutation(total: int, seed: int, device: torch.device) -> Tensor:
    """A permutation of ``range(total)`` drawn on rank 0 from a generator seeded with ``seed`` and
    broadcast, so every rank holds the same one (and a resumed run redraws the same one)."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(total, generator=generator).to(device)
    if is_distributed() and world_size() > 1:
        dist.broadcast(perm, src=0)
    return perm


@torch.no_grad()
def shuffled_forward(fn: Callable[[Tensor], Tensor], inputs: Tensor, seed: int) -> Tensor:
    """``fn(inputs)`` computed with the batch shuffled across ranks (no gradient).

    ``inputs``: this rank's ``[B, ...]`` batch (the same ``B`` on every rank). ``fn`` maps a
    ``[B, ...]`` batch to a ``[B, ...]`` tensor, e.g. key encoder + key projection head. Row ``i`` of
    the result belongs to ``inputs[i]``, but was computed inside a random sub-batch of the global
    batch (``seed`` picks the permutation: pass something that changes every step, like the step).
    In a single process this is exactly ``fn(inputs)``.
    """
    if not is_distributed() or world_size() == 1:
        return fn(inputs)
    batch = inputs.shape[0]
    start = rank() * batch
    everything = all_gather_no_grad(inputs)
    perm = global_permutation(everything.shape[0], seed, inputs.device)
    outputs = all_gather_no_grad(fn(everything[perm[start : start + batch]]).contiguous())
    unshuffled = torch.empty_like(outputs)
    unshuffled[perm] = outputs
    return unshuffled[start : start + batch]


def convert_to_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every batch-norm layer of ``module`` with :class:`torch.nn.SyncBatchNorm` (statistics
    over all ranks; multi-process use needs CUDA). Returns the converted module."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
