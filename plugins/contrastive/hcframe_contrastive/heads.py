"""Projection heads: the small MLP between encoder features and the contrastive embedding."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hcframe.components import Head

from hcframe_contrastive.global_bn import GlobalBatchNorm1d

__all__ = ["ProjectionMLP"]


class ProjectionMLP(Head):
    """MLP ``[B, in_dim] -> [B, out_dim]`` projecting pooled encoder features for a contrastive loss.

    ``num_layers`` linear layers: ``num_layers - 1`` hidden blocks ``Linear(-> hidden_dim)``
    [``BatchNorm1d``] ``ReLU``, then ``Linear(-> out_dim)``. With ``num_layers=1`` it is a single
    linear map (``hidden_dim`` unused). ``batch_norm`` adds BatchNorm1d after each hidden linear
    layer (those layers then have no bias, which BN would cancel); note that batch norm needs more
    than one sample per batch in training mode. ``global_batch_norm`` makes those layers
    :class:`GlobalBatchNorm1d` (statistics over the samples of every rank, as SimCLR's global BN;
    plain BatchNorm1d in one process, same state dict). ``normalize`` L2-normalises the output, so
    dot products of outputs are cosine similarities.

    Args:
        in_dim: feature width of the encoder (the task passes ``feature_dim``).
        hidden_dim: width of the hidden layers (>= 1).
        out_dim: width of the embedding (>= 1).
        num_layers: number of linear layers (>= 1).
        batch_norm: BatchNorm1d after every hidden linear layer.
        global_batch_norm: with ``batch_norm``, statistics over all ranks in a distributed run.
        normalize: L2-normalise the output.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 512,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        normalize: bool = True,
        global_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ProjectionMLP: {name} must be an integer >= 1, got {value!r}")
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.num_layers = num_layers
        self.batch_norm = batch_norm
        self.global_batch_norm = global_batch_norm
        self.normalize = normalize
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(GlobalBatchNorm1d(hidden_dim) if global_batch_norm else nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        out = self.layers(features)
        return F.normalize(out, dim=1) if self.normalize else out
