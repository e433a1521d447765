"""Contrastive losses: SimCLR's NT-Xent, and InfoNCE in its cross-view (symmetric or
one-directional) and queue forms.

NT-Xent (:func:`nt_xent`, SimCLR): the ``2N`` embeddings of a batch of ``N`` pairs ``(a_i, b_i)``
are all anchors; the positive of ``a_i`` is ``b_i`` and vice versa, and the negatives of an anchor
are the other ``2N - 2`` embeddings, *both views*. The loss is the mean over the ``2N`` anchors of
``-log( exp(s(x, x+) / T) / sum_{y != x} exp(s(x, y) / T) )`` with ``s`` the cosine similarity.
With ``gather=True`` in a torch.distributed run each rank's ``2B`` anchors meet the ``2N`` embeddings
of the global batch (gathered with gradients) and the loss is the mean over the local anchors, so
the mean over ranks (what DDP optimises) is the global NT-Xent.

InfoNCE (:func:`info_nce`) below is the cross-view form (CLIP, MoCo v3): the negatives of ``q_i``
are only the *other view's* embeddings.

For a query ``q_i`` with positive key ``k_i`` and a set of negatives ``n_j``, all L2-normalised::

    loss_i = -log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_j exp(q_i.n_j / T)) )

and the loss is the mean of ``loss_i`` over this process's queries.

In-batch form (``negatives=None``): the negatives of ``q_i`` are the keys of the other clips of the
batch. With ``gather=True`` in a torch.distributed run, the keys (and, for the symmetric form, the
queries) of every rank are gathered with :func:`hcframe.engine.distributed.all_gather_with_grad`, so
the negatives come from the global batch and gradients flow back to the rank that produced each
sample. The loss stays the mean over the *local* queries: DDP averages gradients over ranks, which
makes a step on ``R`` ranks with local batches ``B`` identical to a step of one process on the
global batch ``R*B`` (the mean of the per-rank losses is the global loss).

Queue form (``negatives`` given, e.g. a MoCo queue): the negatives of every query are the rows of
``negatives``; the positive is the matching key only (other keys of the batch are not used).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from hcframe.engine.distributed import all_gather_with_grad, rank

__all__ = ["ContrastiveLogits", "contrastive_logits", "info_nce", "nt_xent", "nt_xent_logits"]


@attrs.frozen
class ContrastiveLogits:
    """Cosine similarities of each query row to its candidates, and which candidate is positive.

    ``similarities``: ``[N, M]``; row ``n`` holds the similarity of query ``n`` to its ``M``
    candidates (positive included). ``targets``: ``[N]`` int64, the column of each positive.
    ``temperature``: the logits are ``similarities / temperature``.
    """

    similarities: Tensor
    targets: Tensor
    temperature: float

    @property
    def logits(self) -> Tensor:
        return self.similarities / self.temperature

    def loss(self) -> Tensor:
        """Mean InfoNCE (cross-entropy of the positive column) over the rows."""
        return F.cross_entropy(self.logits, self.targets)

    @torch.no_grad()
    def metrics(self) -> dict[str, Tensor]:
        """Detached per-step statistics.

        ``acc``: fraction of rows whose largest similarity is the positive (top-1 instance
        accuracy, chance ``1/M``); ``pos_sim``: mean similarity of the positive pairs;
        ``neg_sim``: mean similarity over all negative entries.
        """
        sims = self.similarities.detach()
        rows = torch.arange(sims.shape[0], device=sims.device)
        positive = sims[rows, self.targets]
        is_negative = torch.ones_like(sims, dtype=torch.bool)
        is_negative[rows, self.targets] = False
        acc = (sims.argmax(dim=1) == self.targets).float().mean()
        neg_sim = sims[is_negative].mean() if sims.shape[1] > 1 else sims.new_zeros(())
        return {"acc": acc, "pos_sim": positive.mean(), "neg_sim": neg_sim}


def _check_inputs(query: Tensor, key: Tensor, negatives: Tensor | None, temperature: float) -> None:
    if query.dim() != 2 or key.dim() != 2 or query.shape != key.shape:
        raise ValueError(
            f"info_nce: query and key must both be [B, D] with the same shape, got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    if query.shape[0] < 1:
        raise ValueError("info_nce: the batch is empty")
    if negatives is not None and (negatives.dim() != 2 or negatives.shape[1] != query.shape[1]):
        raise ValueError(
            f"info_nce: negatives must be [N, D] with D = {query.shape[1]}, got {tuple(negatives.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature!r}")


def contrastive_logits(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    temperature: float = 0.1,
    *,
    symmetric: bool = False,
    gather: bool = False,
    normalize: bool = True,
) -> ContrastiveLogits:
    """The similarity matrix and positive columns behind :func:`info_nce` (same arguments).

    Row layout: in-batch one-directional: ``B`` rows (local queries) against the (gathered) keys,
    positive of row ``i`` at column ``rank * B + i``. Symmetric: ``2 B`` rows, first the queries
    against the keys, then the keys against the (gathered) queries. Queue form: ``B`` rows, column 0
    is the positive key, columns ``1..N`` are the negatives.
    """
    _check_inputs(query, key, negatives, temperature)
    if negatives is not None and (symmetric or gather):
        raise ValueError(
            "info_nce: with a negatives tensor (queue form) symmetric and gather must be False; "
            "call it once per direction and gather the queue's keys instead"
        )
    # Similarities in float32 at least, also under autocast: with T = 0.07 a bfloat16 cosine
    # (8-bit mantissa) would move the logits by ~0.05. The matrices are small next to the encoder.
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), torch.float32)
    with torch.autocast(query.device.type, enabled=False):
        return _similarities(
            query.to(dtype), key.to(dtype), None if negatives is None else negatives.to(dtype),
            float(temperature), symmetric, gather, normalize,
        )


def _similarities(
    query: Tensor, key: Tensor, negatives: Tensor | None, temperature: float, symmetric: bool, gather: bool, normalize: bool
) -> ContrastiveLogits:
    if normalize:
        query = F.normalize(query, dim=1)
        key = F.normalize(key, dim=1)
        if negatives is not None:
            negatives = F.normalize(negatives, dim=1)
    batch = query.shape[0]
    if negatives is not None:
        positive = (query * key).sum(dim=1, keepdim=True)
        sims = torch.cat([positive, query @ negatives.t()], dim=1)
        targets = torch.zeros(batch, dtype=torch.long, device=query.device)
        return ContrastiveLogits(sims, targets, temperature)

    if gather:
        all_keys = all_gather_with_grad(key)  # identity in a single process (rank 0)
        offset = rank() * batch
    else:
        all_keys, offset = key, 0
    targets = torch.arange(batch, device=query.device) + offset
    sims = query @ all_keys.t()
    if symmetric:
        all_queries = all_gather_with_grad(query) if gather else query
        sims = torch.cat([sims, key @ all_queries.t()], dim=0)
        targets = torch.cat([targets, targets])
    return ContrastiveLogits(sims, targets, temperature)


def info_nce(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    temperature: float = 0.1,
    *,
    symmetric: bool = False,
    gather: bool = False,
    normalize: bool = True,
) -> Tensor:
    """InfoNCE loss, the mean over this process's query rows (see the module docstring).

    Args:
        query: ``[B, D]`` embeddings of the first view (gradients flow).
        key: ``[B, D]`` embeddings of the second view; row ``i`` is the positive of ``query[i]``.
        negatives: ``[N, D]`` extra negatives (queue form) or ``None`` for in-batch negatives.
        temperature: ``T`` > 0 dividing the cosine similarities.
        symmetric: in-batch only: average the loss of ``query -> key`` and ``key -> query``.
        gather: in-batch only: negatives from the whole distributed batch (every rank must pass the
            same ``B``); no effect in a single process.
        normalize: L2-normalise the inputs first (a no-op up to rounding when they already are).

    Returns:
        A scalar tensor.
    """
    return contrastive_logits(
        query, key, negatives, temperature, symmetric=symmetric, gather=gather, normalize=normalize
    ).loss()


def _check_pair(name: str, a: Tensor, b: Tensor, temperature: float) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: a and b must both be [N, D] with the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 1:
        raise ValueError(f"{name}: the batch is empty")
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature!r}")


def nt_xent_logits(
    a: Tensor, b: Tensor, temperature: float = 0.1, *, gather: bool = True, normalize: bool = True
) -> ContrastiveLogits:
    """The similarity matrix and positive columns behind :func:`nt_xent` (same arguments).

    Candidates: the (gathered) embeddings ``[a_0 .. a_{N-1}, b_0 .. b_{N-1}]`` of the global batch,
    each anchor's own column removed, so ``similarities`` is ``[2B, 2N - 1]``. Rows: this rank's
    ``a`` then its ``b``. The positive of ``a_i`` (global index ``g``) sits at column ``N + g - 1``
    (its own column ``g`` comes before it and is removed), that of ``b_i`` at column ``g``.
    """
    _check_pair("nt_xent", a, b, temperature)
    # float32 at least, also under autocast (as in contrastive_logits)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    with torch.autocast(a.device.type, enabled=False):
        a, b = a.to(dtype), b.to(dtype)
        if normalize:
            a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        local = a.shape[0]
        if gather:  # identity in a single process
            all_a, all_b, offset = all_gather_with_grad(a), all_gather_with_grad(b), rank() * local
        else:
            all_a, all_b, offset = a, b, 0
        total = all_a.shape[0]
        anchors = torch.cat([a, b], dim=0)
        sims = anchors @ torch.cat([all_a, all_b], dim=0).t()  # [2B, 2N]
        own = torch.arange(local, device=a.device) + offset
        self_columns = torch.cat([own, own + total])
        keep = torch.ones_like(sims, dtype=torch.bool)
        keep[torch.arange(2 * local, device=a.device), self_columns] = False
        sims = sims[keep].view(2 * local, 2 * total - 1)
        targets = torch.cat([own + total - 1, own])
        return ContrastiveLogits(sims, targets, float(temperature))


def nt_xent(
    a: Tensor, b: Tensor, temperature: float = 0.1, *, gather: bool = True, normalize: bool = True
) -> Tensor:
    """SimCLR's NT-Xent loss: the mean over the ``2B`` local anchors (see the module docstring).

    Args:
        a: ``[B, D]`` embeddings of the first view.
        b: ``[B, D]`` embeddings of the second view; ``b[i]`` is the positive of ``a[i]``.
        temperature: ``T`` > 0 dividing the cosine similarities (SimCLR: 0.1 for large batches,
            up to 0.5 for small ones).
        gather: in a distributed run, candidates from every rank (every rank must pass the same
            ``B``); no effect in a single process. ``False`` keeps the negatives per rank.
        normalize: L2-normalise the inputs first (a no-op up to rounding when they already are).

    Returns:
        A scalar tensor. (SimCLR's TensorFlow code returns the sum of the two views' means, twice
        this value; the paper and lightly's ``NTXentLoss`` use the mean, as here.)
    """
    return nt_xent_logits(a, b, temperature, gather=gather, normalize=normalize).loss()
