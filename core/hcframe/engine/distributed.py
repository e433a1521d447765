"""torch.distributed helpers: process-group setup from torchrun's environment, rank queries, and an
all-gather that lets gradients flow back to every rank's local samples.

hcframe never launches processes itself: run ``torchrun --nproc_per_node N -m hcframe run ...``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_with_grad",
    "all_gather_no_grad",
    "all_ranks_agree",
    "barrier",
    "broadcast_flag",
    "broadcast_from_main",
    "gather_rows",
    "init_from_environment",
    "is_distributed",
    "is_main_process",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_from_environment(device_type: str, backend: str | None = None) -> bool:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1).

    ``backend``: default NCCL on CUDA, gloo on CPU; commands that only coordinate ranks (no
    tensors on the GPU cross processes, e.g. ``cache-teacher``) pass ``"gloo"``. On CUDA the
    process's device is set to ``LOCAL_RANK`` either way. Returns whether the run is distributed.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    global _HOST_GROUP
    if is_distributed():
        dist.destroy_process_group()
    _HOST_GROUP = None


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over ranks and returns this rank's
    slice: every rank's loss contributes to the gradient of the samples it gathered from us."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.batch = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) from all ranks along dim 0, rank order.

    Gradients flow back to each rank's own rows, summed over the losses of all ranks. With DDP's
    averaging of gradients over ranks, training on the mean of the per-rank losses then gets exactly
    the gradient one process would get from the same global batch. Identity when not distributed.
    """
    if not is_distributed() or world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_with_grad` for tensors that need no gradient (keys, queues)."""
    if not is_distributed() or world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def _collective_device() -> torch.device:
    """Where tensors must be for the default group's collectives (CUDA for NCCL)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each of ``tensors`` concatenated over the ranks along dim 0, in rank order, on every rank, on
    the CPU. A rank may hold any number of rows, or None for none (the trailing shape and dtype
    come from the ranks that have rows; None where no rank has any). Identity (on the CPU) when
    not distributed. Meant for evaluation outputs: every rank receives the whole result."""
    if not is_distributed() or world_size() == 1:
        return [t.cpu() if t is not None else None for t in tensors]
    shapes: list[Any] = [None] * world_size()
    dist.all_gather_object(shapes, [(tuple(t.shape), t.dtype) if t is not None else None for t in tensors])
    device = _collective_device()
    out: list[torch.Tensor | None] = []
    for i, tensor in enumerate(tensors):
        known = [s[i] for s in shapes if s[i] is not None]
        if not known:
            out.append(None)
            continue
        (first, *trailing), dtype = known[0][0], known[0][1]
        rows = [s[i][0][0] if s[i] is not None else 0 for s in shapes]
        padded = torch.zeros((max(rows), *trailing), dtype=dtype, device=device)
        if tensor is not None:
            padded[: tensor.shape[0]] = tensor.to(device)
        parts = [torch.empty_like(padded) for _ in rows]
        dist.all_gather(parts, padded)
        out.append(torch.cat([part[:n] for part, n in zip(parts, rows)]).cpu())
    return out


def broadcast_flag(flag: bool) -> bool:
    """The main process's ``flag`` on every rank."""
    if not is_distributed() or world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


_HOST_GROUP: Any = None


def all_ranks_agree(flag: bool) -> bool:
    """Whether ``flag`` (a host-side fact: a batch is there, a file exists) is true on every rank.

    Goes through a gloo group on the host, so with NCCL it does not wait for the GPU. The first
    call creates that group: every rank must make it at the same point."""
    global _HOST_GROUP
    if not is_distributed() or world_size() == 1:
        return flag
    if dist.get_backend() == "gloo":
        group = None
    else:
        if _HOST_GROUP is None:
            _HOST_GROUP = dist.new_group(backend="gloo")
        group = _HOST_GROUP
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item())


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` (any picklable value) on every rank; ``obj`` itself when not distributed.
    For small values (a decision, a path, a message), not for tensors."""
    if not is_distributed() or world_size() == 1:
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
