"""Task-dependent multi-task model: a shared trunk, one branch per task, and the loss combiner.

``split`` names the first encoder stage that every task gets its own copy of::

    stem -> layer1 -> layer2 | layer3 -> layer4 -> task A's head     split = "layer3"
                             | layer3'-> layer4'-> task B's head

The trunk before the split receives the gradients of all tasks; each branch only its own task's.
``split = "none"`` shares every stage: the usual single representation (for ablations).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from hcframe.components import Encoder, EncoderOutput, PretextTask, TaskInput, TaskOutput

__all__ = ["LossCombiner", "MultiTaskModel", "StageStack", "TaskEncoder", "gradient_cosines", "pcgrad_combine", "scale_gradient"]


class StageStack(nn.Module):
    """Consecutive encoder stages applied in order (possibly none)."""

    def __init__(self, stages: dict[str, nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(stages)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return x


class TaskEncoder(nn.Module):
    """Clips -> one task's representation (shared trunk, then the task's branch, then pooling).

    It refers to modules owned by :class:`MultiTaskModel`; make momentum copies of it, but do not
    register it as a submodule of a task.
    """

    def __init__(self, trunk: StageStack, branch: StageStack, pool: Any) -> None:
        super().__init__()
        self.trunk = trunk
        self.branch = branch
        self._pool = pool

    def forward(self, clips: Tensor) -> EncoderOutput:
        fmap = self.branch(self.trunk(clips))
        return EncoderOutput(fmap, self._pool(fmap))


class LossCombiner(nn.Module):
    """Weights the tasks' losses into one scalar, and logs every term.

    ``fixed``: ``sum_i w_i L_i``. ``uncertainty``: ``sum_i exp(-s_i) L_i + s_i`` with a learned
    ``s_i = log sigma_i^2`` per task (Kendall, Gal & Cipolla, CVPR 2018), initialised so that the
    starting weight is the fixed weight.
    """

    def __init__(self, task_names: Iterable[str], weights: dict[str, float] | None = None, weighting: str = "fixed") -> None:
        super().__init__()
        self.task_names = list(task_names)
        weights = weights or {}
        self.fixed = {n: float(weights.get(n, 1.0)) for n in self.task_names}
        self.weighting = weighting
        if weighting == "uncertainty":
            init = torch.tensor([-math.log(max(self.fixed[n], 1e-8)) for n in self.task_names])
            self.log_vars = nn.Parameter(init)
        elif weighting != "fixed":
            raise ValueError(f"weighting must be 'fixed' or 'uncertainty', got {weighting!r}")

    def weight(self, task: str) -> Tensor | float:
        if self.weighting == "uncertainty":
            return torch.exp(-self.log_vars[self.task_names.index(task)])
        return self.fixed[task]

    def forward(self, task_losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns the total and, per task, its weighted contribution (with regulariser)."""
        parts: dict[str, Tensor] = {}
        for i, name in enumerate(self.task_names):
            # float32 whatever a task returned under autocast: the sum of several losses and, with
            # learned weights, exp(-s) * L + s would round to 8 significant bits in bfloat16
            loss = task_losses[name].float()
            if self.weighting == "uncertainty":
                parts[name] = torch.exp(-self.log_vars[i].float()) * loss + self.log_vars[i].float()
            else:
                parts[name] = self.fixed[name] * loss
        total = torch.stack(list(parts.values())).sum()
        return total, parts


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient flowing back by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, with its gradient multiplied by ``scale`` (0 detaches)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return _ScaleGradient.apply(x, scale)


def _parameter_free_pool(encoder: Encoder) -> Any:
    """``encoder.pool`` bound to a shell of the encoder without its stages, so that copies of a
    :class:`TaskEncoder` (momentum encoders) do not drag a copy of every stage along. Pooling must
    not have parameters of its own."""
    shell = copy.copy(encoder)
    shell._modules = {k: v for k, v in encoder._modules.items() if k != "stages"}
    return shell.pool


class MultiTaskModel(nn.Module):
    """The encoder split into a shared trunk and per-task branches, the tasks, and the combiner.

    ``forward(batch, step, max_steps)`` runs the trunk once on all views the tasks need, each task's
    branch on the views that task asked for, every task, and the combiner.
    """

    def __init__(
        self,
        encoder: Encoder,
        tasks: dict[str, PretextTask],
        split: str = "none",
        combiner: LossCombiner | None = None,
        shared_grad_scale: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        # How much of each task's gradient reaches the shared trunk (1 by default; 0: the task
        # trains only its own branch and head on top of what the other tasks make of the trunk).
        self.shared_grad_scale = {t: float((shared_grad_scale or {}).get(t, 1.0)) for t in tasks}
        names = encoder.stage_names()
        if split == "none":
            cut = len(names)
        elif split in names:
            cut = names.index(split)
        else:
            raise ValueError(f"model.split: the encoder has no stage {split!r}; stages are {', '.join(names)} (or 'none')")
        self.split = split
        self.feature_dim = encoder.feature_dim
        owners = [t for t, task in tasks.items() if task.reads_branch is None]
        if not owners:
            raise ValueError("tasks: every task reads another task's branch; at least one must own a branch")
        for t, task in tasks.items():
            if task.reads_branch is not None and task.reads_branch not in (*owners, "concat"):
                raise ValueError(f"tasks.{t}: reads branch {task.reads_branch!r}; branches are {', '.join(owners)} or 'concat'")
        self.trunk = StageStack({n: encoder.stages[n] for n in names[:cut]})
        self.branches = nn.ModuleDict(
            {t: StageStack({n: copy.deepcopy(encoder.stages[n]) for n in names[cut:]}) for t in owners}
        )
        self._pool = _parameter_free_pool(encoder)
        self.tasks = nn.ModuleDict(tasks)
        self.combiner = combiner or LossCombiner(tasks)
        # Plain dict: these views share modules with the trunk/branches and must not be registered.
        # A task that reads another branch gets that branch's path (the first branch for "concat").
        self.task_encoders: dict[str, TaskEncoder] = {}
        for t, task in tasks.items():
            source = t if task.reads_branch is None else (owners[0] if task.reads_branch == "concat" else task.reads_branch)
            self.task_encoders[t] = TaskEncoder(self.trunk, self.branches[source], self._pool)
        for name, task in self.tasks.items():
            dim = self.feature_dim if task.reads_branch is None else self.representation_dim(task.reads_branch)
            task.setup(self.task_encoders[name], dim)

    @property
    def num_views(self) -> int:
        return max(task.num_views for task in self.tasks.values())

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trunk.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task`` trains: its branch and its own modules (heads)."""
        branch = list(self.branches[task].parameters()) if task in self.branches else []
        params = branch + list(self.tasks[task].parameters())
        return [p for p in params if p.requires_grad]

    def encode(self, clips: Tensor, branch: str = "concat") -> Tensor:
        """Pooled representation for evaluation: one task's branch, or all branches concatenated
        (``"concat"``; with ``split = "none"`` every branch is the same, so one is returned)."""
        shared = self.trunk(clips)
        if branch == "concat":
            if self.split == "none":
                return self._pool(shared)
            return torch.cat([self._pool(b(shared)) for b in self.branches.values()], dim=1)
        if branch not in self.branches:
            raise ValueError(f"no branch {branch!r}; branches are {', '.join(self.branches)} or 'concat'")
        return self._pool(self.branches[branch](shared))

    def representation_dim(self, branch: str = "concat") -> int:
        if branch == "concat" and self.split != "none":
            return self.feature_dim * len(self.branches)
        return self.feature_dim

    def _read(self, branch: str, computed: dict[str, EncoderOutput]) -> EncoderOutput:
        """View 0 of an already computed representation, detached (for tasks that read a branch)."""
        if branch == "concat" and self.split != "none":
            parts = list(computed.values())
            out = EncoderOutput(torch.cat([p.feature_map for p in parts], 1), torch.cat([p.pooled for p in parts], 1))
        else:
            out = computed[branch if branch != "concat" else next(iter(computed))]
        return EncoderOutput(out.feature_map.detach(), out.pooled.detach())

    def forward(
        self, batch: dict[str, Any], step: int = 0, max_steps: int = 1
    ) -> tuple[Tensor, dict[str, TaskOutput], dict[str, Tensor]]:
        """Returns the combined loss, each task's output, and each task's weighted loss."""
        views: list[Tensor] = batch["views"]
        needed = self.num_views
        size = views[0].shape[0]
        shared = self.trunk(torch.cat(views[:needed], dim=0))
        outputs: dict[str, TaskOutput] = {}
        first_view: dict[str, EncoderOutput] = {}
        for name in self.branches:
            task = self.tasks[name]
            k = task.num_views
            fmap = self.branches[name](scale_gradient(shared[: k * size], self.shared_grad_scale[name]))
            pooled = self._pool(fmap)
            features = [EncoderOutput(f, p) for f, p in zip(fmap.split(size), pooled.split(size))]
            first_view[name] = features[0]
            inp = TaskInput(batch=batch, features=features, encoder=self.task_encoders[name], step=step, max_steps=max_steps)
            outputs[name] = task(inp)
        for name, task in self.tasks.items():
            if task.reads_branch is not None:
                features = [self._read(task.reads_branch, first_view)]
                inp = TaskInput(batch=batch, features=features, encoder=self.task_encoders[name], step=step, max_steps=max_steps)
                outputs[name] = task(inp)
        outputs = {n: outputs[n] for n in self.tasks}  # recipe order
        total, weighted = self.combiner({n: o.total for n, o in outputs.items()})
        return total, outputs, weighted


def _flat_grads(loss: Tensor, params: list[nn.Parameter], retain_graph: bool = True) -> Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def gradient_cosines(task_losses: dict[str, Tensor], shared: list[nn.Parameter]) -> dict[str, float]:
    """Cosine similarity between every pair of tasks' gradients on the shared parameters.

    Negative values mean the tasks pull the shared trunk in conflicting directions. Pairs where a
    task sends no gradient into the trunk are left out.
    """
    names = list(task_losses)
    grads = {n: _flat_grads(task_losses[n], shared) for n in names}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            denom = grads[a].norm() * grads[b].norm()
            if denom > 0:  # a task kept out of the trunk (shared_grad_scale 0) has no direction
                out[f"{a}~{b}"] = float((grads[a] @ grads[b]) / denom)
    return out


def pcgrad_combine(per_task: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
    """PCGrad (Yu et al., NeurIPS 2020): for each task gradient, in random order of the others,
    remove its component along any other task's gradient it conflicts with (negative dot product);
    return the sum of the projected gradients."""
    names = list(per_task)
    projected = []
    for name in names:
        g = per_task[name].clone()
        others = [n for n in names if n != name]
        order = torch.randperm(len(others), generator=generator).tolist()
        for j in order:
            h = per_task[others[j]]
            dot = g @ h
            if dot < 0:
                g = g - dot / (h @ h).clamp_min(1e-20) * h
        projected.append(g)
    return torch.stack(projected).sum(0)
