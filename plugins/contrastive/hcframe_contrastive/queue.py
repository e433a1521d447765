"""A fixed-size queue of negative keys (MoCo's memory bank), saved in checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcframe.engine.distributed import all_gather_no_grad

__all__ = ["NegativeQueue"]


class NegativeQueue(nn.Module):
    """A ring buffer of ``size`` key embeddings of width ``dim``.

    Buffers (all in ``state_dict``, so the queue survives a checkpoint and resume exactly):

    - ``keys`` float ``[size, dim]``: the entries. Before any key is enqueued they hold random unit
      vectors drawn from a generator seeded with ``seed`` (MoCo's initialisation), so the loss is
      defined from the first step; ``filled`` tells how many entries are real keys.
    - ``ptr`` int64 scalar: the row the next key is written to (the oldest entry once full).
    - ``filled`` int64 scalar: the number of real keys, at most ``size``.

    :meth:`enqueue` writes keys at ``ptr`` with wrap-around, so any ``size`` works with any batch
    size (MoCo's reference requires ``size`` to be a multiple of the global batch; this does not).
    When one enqueue brings more keys than ``size``, only the newest ``size`` are kept.
    Recommended sizes: 16384 for Kinetics-scale datasets, 2048 for small ones (UCF101, HMDB51,
    the synthetic world): a queue much larger than an epoch of keys holds stale keys from old
    encoders, and keys of the very video being queried.

    Args:
        dim: width of a key (the projection head's ``out_dim``).
        size: number of entries (>= 1).
        seed: seed of the random initial entries.
    """

    keys: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, dim: int, size: int, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"NegativeQueue: dim must be an integer >= 1, got {dim!r}")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"NegativeQueue: size must be an integer >= 1, got {size!r}")
        self.dim = dim
        self.size = size
        generator = torch.Generator().manual_seed(seed)
        initial = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.register_buffer("keys", initial)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, gather: bool = True) -> None:
        """Append ``keys`` ``[n, dim]``, replacing the oldest entries once the queue is full.

        With ``gather`` (default) in a distributed run, the keys of every rank are gathered first
        (rank order), so all ranks keep identical queues; every rank must pass the same ``n``.
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"NegativeQueue.enqueue: keys must be [n, {self.dim}], got {tuple(keys.shape)}")
        keys = keys.detach()
        if gather:
            keys = all_gather_no_grad(keys)
        if keys.shape[0] > self.size:
            keys = keys[-self.size :]
        count = keys.shape[0]
        start = int(self.ptr)
        rows = (torch.arange(count, device=self.keys.device) + start) % self.size
        self.keys[rows] = keys.to(self.keys.dtype)
        self.ptr.fill_((start + count) % self.size)
        self.filled.fill_(min(int(self.filled) + count, self.size))

    def negatives(self, only_filled: bool = False) -> Tensor:
        """A copy of the entries ``[size, dim]`` (or ``[filled, dim]`` with ``only_filled``).

        A copy, so that enqueueing after the loss does not modify a tensor autograd saved.
        """
        if only_filled:
            return self.ordered()
        return self.keys.clone()

    def ordered(self) -> Tensor:
        """The real keys, oldest first: a ``[filled, dim]`` copy."""
        filled, ptr = int(self.filled), int(self.ptr)
        if filled < self.size:
            return self.keys[:filled].clone()
        return torch.cat([self.keys[ptr:], self.keys[:ptr]], dim=0)

    def fill_fraction(self) -> float:
        """The fraction of entries that are real keys, in ``[0, 1]``."""
        return int(self.filled) / self.size

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"
