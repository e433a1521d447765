"""hcframe contrastive plugin: InfoNCE and MoCo pretext tasks, and the blocks they are made of.

Every block takes explicit arguments and works without a recipe:

- :class:`ProjectionMLP` (``heads``): the projection head, L2-normalised output.
- :func:`info_nce` / :func:`contrastive_logits` (``losses``): InfoNCE in its symmetric,
  one-directional and queue forms, optionally with negatives gathered from every rank.
- :class:`NegativeQueue` (``queue``): a fixed-size ring buffer of negative keys.
- :class:`MomentumEncoder`, :func:`momentum_at` (``momentum``): an EMA copy of a module.
- :func:`shuffled_forward`, :func:`convert_to_sync_batchnorm` (``shuffle_bn``): keeping batch-norm
  statistics from leaking the positive pair.
- :class:`SimCLRTask`, :class:`MoCoTask` (``tasks``): the registered tasks ``simclr`` and ``moco``.
"""

from hcframe_contrastive.heads import ProjectionMLP
from hcframe_contrastive.losses import ContrastiveLogits, contrastive_logits, info_nce
from hcframe_contrastive.momentum import MomentumEncoder, momentum_at
from hcframe_contrastive.queue import NegativeQueue
from hcframe_contrastive.shuffle_bn import convert_to_sync_batchnorm, shuffled_forward
from hcframe_contrastive.tasks import MoCoTask, SimCLRTask

__version__ = "0.1.0"

__all__ = [
    "ContrastiveLogits",
    "MoCoTask",
    "MomentumEncoder",
    "NegativeQueue",
    "ProjectionMLP",
    "SimCLRTask",
    "__version__",
    "contrastive_logits",
    "convert_to_sync_batchnorm",
    "info_nce",
    "momentum_at",
    "shuffled_forward",
]
