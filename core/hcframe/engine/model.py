"""Task-dependent multi-task model: a shared trunk, one branch per task, and the task combiner.

``split`` names the first encoder stage that every task gets its own copy of::

    stem -> layer1 -> layer2 | layer3 -> layer4 -> task A's head     split = "layer3"
                             | layer3'-> layer4'-> task B's head

The trunk before the split receives the gradients of all tasks (each scaled as the combiner's
``shared_grad_scale`` says); each branch only its own task's. ``split = "none"`` shares every stage:
the usual single representation (for ablations).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from hcframe.components import Encoder, EncoderOutput, LabelMaps, PretextTask, TaskInput, TaskOutput
from hcframe.engine.combiner import TaskCombiner
from hcframe.metrics import MetricInfo

__all__ = ["MultiTaskModel", "StageStack", "TaskEncoder"]


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
    branch on the views that task asked for (what reaches the trunk back from it is the
    combiner's :meth:`~hcframe.engine.combiner.TaskCombiner.into_trunk`), every task, and the
    combiner's weighting. ``combiner`` defaults to fixed weights of 1.
    """

    def __init__(
        self,
        encoder: Encoder,
        tasks: dict[str, PretextTask],
        split: str = "none",
        combiner: TaskCombiner | None = None,
    ) -> None:
        super().__init__()
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
        self.combiner = combiner or TaskCombiner(tasks)
        if self.combiner.task_names != list(tasks):
            raise ValueError(f"the combiner's tasks {self.combiner.task_names} are not the model's {list(tasks)}")
        # Plain dict: these views share modules with the trunk/branches and must not be registered.
        # A task that reads another branch gets that branch's path (the first branch for "concat").
        self.task_encoders: dict[str, TaskEncoder] = {}
        for t, task in tasks.items():
            source = t if task.reads_branch is None else (owners[0] if task.reads_branch == "concat" else task.reads_branch)
            self.task_encoders[t] = TaskEncoder(self.trunk, self.branches[source], self._pool)
        for name, task in self.tasks.items():
            dim = self.feature_dim if task.reads_branch is None else self.representation_dim(task.reads_branch)
            try:
                task.setup(self.task_encoders[name], dim)
            except ValueError as exc:  # a head that cannot be built on this encoder: name the task
                raise ValueError(f"tasks.{name}: {exc}") from exc

    @property
    def num_views(self) -> int:
        return max(task.num_views for task in self.tasks.values())

    def metric_info(self) -> list[MetricInfo]:
        """Declarations of what a training step logs about the model: each task's total
        (``<task>/loss``) and declared terms (``<task>/<term>``), then the combiner's numbers."""
        info = []
        for name, task in self.tasks.items():
            info.append(MetricInfo(f"{name}/loss", "loss"))
            info.extend(i.under(name) for i in task.metric_info())
        return info + self.combiner.metric_info()

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trunk.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task`` trains: its branch and its own modules (heads)."""
        branch = list(self.branches[task].parameters()) if task in self.branches else []
        params = branch + list(self.tasks[task].parameters())
        return [p for p in params if p.requires_grad]

    def encode(self, clips: Tensor, branch: str = "concat", pool: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Pooled representation for evaluation: one task's branch, or all branches concatenated
        (``"concat"``; with ``split = "none"`` every branch is the same, so one is returned).
        ``pool`` maps each feature map ``[B, D, t, h, w]`` to ``[B, E]`` (default: the encoder's own
        pooling)."""
        return self.encode_many(clips, [(branch, pool)])[0]

    def encode_many(self, clips: Tensor, requests: Sequence[tuple[str, Callable[[Tensor], Tensor] | None]]) -> list[Tensor]:
        """``[encode(clips, branch, pool) for branch, pool in requests]`` with the trunk and each
        branch run once: evaluations that read several branches or poolings of one dataset share a
        pass (same operations on the same batch, so the same numbers)."""
        for branch, _ in requests:
            if branch != "concat" and branch not in self.branches:
                raise ValueError(f"no branch {branch!r}; branches are {', '.join(self.branches)} or 'concat'")
        shared = self.trunk(clips)
        if self.split == "none":
            return [(pool or self._pool)(shared) for _, pool in requests]
        wanted = {b for branch, _ in requests for b in (self.branches if branch == "concat" else [branch])}
        maps = {name: b(shared) for name, b in self.branches.items() if name in wanted}
        out = []
        for branch, pool in requests:
            pool = pool or self._pool
            names = list(self.branches) if branch == "concat" else [branch]
            pooled = [pool(maps[n]) for n in names]
            out.append(pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1))
        return out

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
        # One view goes in as it is (torch.cat would copy the whole batch).
        shared = self.trunk(views[0] if needed == 1 else torch.cat(views[:needed], dim=0))
        outputs: dict[str, TaskOutput] = {}
        first_view: dict[str, EncoderOutput] = {}
        for name in self.branches:
            task = self.tasks[name]
            k = task.num_views
            fmap = self.branches[name](self.combiner.into_trunk(name, shared[: k * size]))
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

    def can_visualise(self) -> bool:
        """Whether a task has images to show (overrides :meth:`PretextTask.visualise`)."""
        return any(type(task).visualise is not PretextTask.visualise for task in self.tasks.values())

    @torch.no_grad()
    def visualise(self, batch: dict[str, Any], step: int = 0, max_steps: int = 1, max_clips: int = 4) -> dict[str, LabelMaps]:
        """What each task shows of ``batch`` (:meth:`PretextTask.visualise`), by task name, for the
        tasks that show something. Runs in eval mode (batch-norm statistics are neither used from
        the batch nor updated) without gradients, on the first view, and leaves the model's mode
        as it was; it draws no random numbers, so it does not change the run."""
        showing = {n: t for n, t in self.tasks.items() if type(t).visualise is not PretextTask.visualise}
        if not showing:
            return {}
        was_training = self.training
        self.eval()
        try:
            clipped = _first_clips(batch, max_clips)
            shared = self.trunk(clipped["views"][0])
            out: dict[str, LabelMaps] = {}
            for name, task in showing.items():
                encoder = self.task_encoders[name]
                fmap = encoder.branch(shared)
                inp = TaskInput(batch=clipped, features=[EncoderOutput(fmap, self._pool(fmap))], encoder=encoder, step=step, max_steps=max_steps)
                maps = task.visualise(inp, max_clips)
                if maps is not None:
                    out[name] = maps
            return out
        finally:
            self.train(was_training)


# Batch keys with one entry per clip (see hcframe.data and hcframe.BatchTransform).
_PER_CLIP_LISTS = ("views", "parts")
_PER_CLIP_TENSORS = ("label", "index", "frame_indices", "views_hw", "parts_hw")


def _first_clips(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """``batch`` cut to its first ``n`` clips (other keys, e.g. ``pixel_mean``, as they are)."""
    out = dict(batch)
    for key in _PER_CLIP_LISTS:
        if key in batch:
            out[key] = [v[:n] for v in batch[key]]
    for key in _PER_CLIP_TENSORS:
        if isinstance(batch.get(key), Tensor):
            out[key] = batch[key][:n]
    return out
