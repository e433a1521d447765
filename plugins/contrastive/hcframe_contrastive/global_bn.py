"""Global batch norm: batch statistics over every rank's samples, with gradients across ranks.

Why: SimCLR normalises its projection head with statistics of the whole global batch ("global BN",
aggregated over all devices). With per-rank statistics an ``R``-process run is not the one-process
computation on the same global batch, and each rank's positives share a signature of their
sub-batch. PyTorch's :class:`torch.nn.SyncBatchNorm` does this, but in a multi-process training
forward it accepts only accelerator tensors (torch 2.13 raises ``SyncBatchNorm expected input tensor
to be on GPU ...`` for CPU/gloo), so this module computes the statistics itself with two
all-reduces whose backward sums the gradients over ranks. It runs on any backend.

How: per channel, ``sum(x)`` and the sample count are all-reduced to the global mean, then
``sum((x - mean)^2)`` is all-reduced to the global biased variance (two passes, as precise as
plain batch norm). The all-reduce's backward all-reduces the incoming gradient, so every rank's
samples receive the gradient of every rank's loss through the shared statistics; with DDP's
averaging over ranks, a step equals the one-process step on the concatenated batch (tested on 2
gloo ranks). Running statistics are updated from the global ones (identical on every rank).

In eval mode, and in a single process, it is exactly :class:`torch.nn.BatchNorm1d` (same state dict,
so checkpoints move freely between the two).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hcframe.engine.distributed import is_distributed, world_size

__all__ = ["GlobalBatchNorm1d", "all_reduce_sum_with_grad"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward sums the gradients over ranks too (every rank used the sum)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        total = tensor.clone().contiguous()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(tensor: Tensor) -> Tensor:
    """``tensor`` summed over all ranks, differentiable; identity when not distributed."""
    if not is_distributed() or world_size() == 1:
        return tensor
    return _AllReduceSum.apply(tensor)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` whose training statistics are those of the global batch.

    Inputs ``[B, C]`` or ``[B, C, L]``; ranks may hold different ``B``. Arguments as
    :class:`torch.nn.BatchNorm1d`. Training mode with ``track_running_stats=False`` and eval mode
    with running statistics behave as BatchNorm1d does.
    """

    def forward(self, input: Tensor) -> Tensor:
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats or not is_distributed() or world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        # Statistics in float32 at least: under autocast the linear layer before hands us bf16/fp16.
        dtype = torch.promote_types(input.dtype, torch.float32)
        with torch.autocast(input.device.type, enabled=False):
            x = input.to(dtype)
            dims = [0, *range(2, x.dim())]
            shape = [1, -1] + [1] * (x.dim() - 2)
            local_count = x.numel() // x.shape[1]
            # the count travels with the sums (one all-reduce); it gets no gradient
            sums = all_reduce_sum_with_grad(torch.cat([x.sum(dims), x.new_tensor([local_count])]))
            count = sums[-1].detach()
            if count < 2:
                raise ValueError(
                    f"GlobalBatchNorm1d: batch norm needs more than 1 value per channel in training, got {int(count)} over all ranks"
                )
            mean = sums[:-1] / count
            centered = x - mean.view(shape)
            var = all_reduce_sum_with_grad((centered * centered).sum(dims)) / count
            out = centered * torch.rsqrt(var + self.eps).view(shape)
            if self.affine:
                out = out * self.weight.to(dtype).view(shape) + self.bias.to(dtype).view(shape)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, biased_var: Tensor, count: Tensor) -> None:
        """As BatchNorm: exponential average with ``momentum`` (cumulative when ``momentum`` is
        None) of the mean and of the *unbiased* variance."""
        assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = biased_var * (count / (count - 1))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
