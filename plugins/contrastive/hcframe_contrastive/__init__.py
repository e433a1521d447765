"""hcframe contrastive plugin: SimCLR and MoCo pretext tasks, and the blocks they are made of.

Every block takes explicit arguments and works without a recipe:

- :class:`ProjectionMLP` (``heads``): the projection head, L2-normalised output.
- :class:`GlobalBatchNorm1d` (``global_bn``): batch norm with statistics over all ranks (SimCLR's
  global BN), on any backend.
- :func:`nt_xent` / :func:`nt_xent_logits` (``losses``): SimCLR's NT-Xent (negatives from both
  views), optionally over the batch gathered from every rank.
- :func:`info_nce` / :func:`contrastive_logits` (``losses``): InfoNCE in its cross-view (symmetric,
  one-directional) and queue forms, optionally with negatives gathered from every rank.
- :class:`NegativeQueue` (``queue``): a fixed-size ring buffer of negative keys.
- :class:`MomentumEncoder`, :func:`momentum_at` (``momentum``): an EMA copy of a module.
- :func:`shuffled_forward`, :func:`convert_to_sync_batchnorm` (``shuffle_bn``): keeping batch-norm
  statistics from leaking the positive pair.
- :class:`SimCLRTask`, :class:`MoCoTask` (``tasks``): the registered tasks ``simclr`` and ``moco``.
"""

from hcframe_contrastive.global_bn import GlobalBatchNorm1d, all_reduce_sum_with_grad
from hcframe_contrastive.heads import ProjectionMLP
from hcframe_contrastive.losses import ContrastiveLogits, contrastive_logits, info_nce, nt_xent, nt_xent_logits
from hcframe_contrastive.momentum import MomentumEncoder, momentum_at
from hcframe_contrastive.queue import NegativeQueue
from hcframe_contrastive.shuffle_bn import convert_to_sync_batchnorm, shuffled_forward
from hcframe_contrastive.tasks import MoCoTask, SimCLRTask, foreground_pool

__version__ = "0.1.0"

__all__ = [
    "ContrastiveLogits",
    "GlobalBatchNorm1d",
    "MoCoTask",
    "MomentumEncoder",
    "NegativeQueue",
    "ProjectionMLP",
    "SimCLRTask",
    "__version__",
    "all_reduce_sum_with_grad",
    "contrastive_logits",
    "convert_to_sync_batchnorm",
    "foreground_pool",
    "info_nce",
    "momentum_at",
    "nt_xent",
    "nt_xent_logits",
    "shuffled_forward",
]
