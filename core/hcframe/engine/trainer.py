"""The training loop: one code path for CPU and CUDA, one process or many under torchrun.

:class:`Trainer` is a :class:`~hcframe.engine.loop.TrainerBase`: :meth:`Trainer.run_step` does one
optimisation step (its micro-batches' forward and backward passes, then the optimiser), and
everything around the steps is a hook (:mod:`hcframe.engine.hooks`, the recipe's ``[[hooks]]``,
the ``hooks`` argument): checkpoints, ``metrics.jsonl`` and the recipe's ``[[loggers]]``, unreadable
videos, the gradient-cosine probe, the progress display, and (from :func:`hcframe.run.run_recipe`)
the evaluation at the end.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from hcframe import config
from hcframe.components import Hook, TaskOutput
from hcframe.config import BuiltRun, build_run, resolve_device
from hcframe.data import BAD, BadVideo, VideoDataset, collate
from hcframe.engine import distributed as hd
from hcframe.engine.checkpoint import (
    CheckpointError,
    capture_rng,
    check_training_state,
    compare_state_dicts,
    find_resumable_checkpoint,
    load_checkpoint,
    restore_rng,
)
from hcframe.engine.hooks import BadVideoAccountant, Checkpointer, GradientCosineProbe, MetricWriter, ProgressDisplay
from hcframe.engine.loop import RunFailed, TrainerBase
from hcframe.engine.metric_log import MetricLog
from hcframe.engine.model import MultiTaskModel
from hcframe.engine.optim import build_optimizer, build_schedule, set_learning_rate
from hcframe.engine.precision import autocast, grad_scaler
from hcframe.engine.sampler import EpochSampler
from hcframe.files import write_text_atomic
from hcframe.metrics import MetricInfo
from hcframe.recipe import Recipe
from hcframe.registry import Registry, get_registry
from hcframe.tables import RecipeError

__all__ = ["RunFailed", "Trainer", "build_model", "choose_device", "cpu_threads", "to_device"]

CHECKPOINT_FORMAT = 2


def choose_device(name: str) -> torch.device:
    """``train.device`` resolved (:func:`hcframe.config.resolve_device`); :class:`RunFailed` when
    it names a device this machine lacks."""
    try:
        return resolve_device(name)
    except RecipeError as exc:
        raise RunFailed(str(exc)) from None


def cpu_threads(requested: int, data_workers: int, processes: int = 1) -> int:
    """Threads for one training process on CPU: ``requested``, or the cores this process may use
    beside the other processes of the run and the data workers, at least 1."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // processes - data_workers)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def build_model(recipe: Recipe, registry: Registry | None = None, log: Callable[[str], None] | None = None) -> MultiTaskModel:
    """Encoder + tasks + combiner as the recipe describes them (random initialisation from the
    current random state, or the encoder's weights from ``[model] init``); see
    :func:`hcframe.config.build_model`. Raises :class:`~hcframe.tables.RecipeError`."""
    return config.build_model(recipe, registry, log)


def _scalar(value: Any) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


class Trainer(TrainerBase):
    """Runs the pre-training stage of a recipe in ``run_dir``.

    ``run`` is what :func:`hcframe.config.build_run` built from the recipe (model, data,
    transform, hooks; one trainer per build), or a :class:`~hcframe.recipe.Recipe`, built so when
    training is set up (a recipe that cannot run raises :class:`~hcframe.tables.RecipeError`).

    Writes ``recipe.toml`` (resolved); its hooks write ``metrics.jsonl``, ``metrics_schema.json`` and
    ``checkpoints/``. :meth:`train` returns :attr:`summary`, the training stage's fields of
    ``summary.json`` (steps, epochs, wall time, final metrics, unreadable videos, and whatever
    hooks add); :func:`hcframe.run.run_recipe` writes the file.

    ``hooks`` run after the recipe's ``[[hooks]]``, before the metric writer (see
    :meth:`build_hooks`). What hooks find here, besides :class:`~hcframe.engine.loop.TrainerBase`'s
    attributes: ``recipe``, ``run_dir``, ``checkpoint_dir``, ``log``, ``rank``, ``world``,
    ``is_main``, ``device``, ``model``, ``combiner``, ``optimizer``, ``dataset``, ``epoch``, ``lr``
    (the learning rate of the current step), ``keep_batch`` / ``last_batch`` (a hook that sets
    ``keep_batch`` before a step finds the step's last batch in ``last_batch`` after it),
    ``metrics`` (:class:`MetricLog`: ``put`` a value to log it at this step), ``summary``,
    ``step_bad_videos`` (videos the last step skipped) and ``measure_cosines``.
    """

    def __init__(
        self,
        run: Recipe | BuiltRun,
        run_dir: Path,
        *,
        resume: bool = False,
        registry: Registry | None = None,
        progress: bool = False,
        log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
        hooks: Sequence[Hook] = (),
    ) -> None:
        super().__init__()
        self.built: BuiltRun | None = run if isinstance(run, BuiltRun) else None
        self.recipe: Recipe = run.recipe if isinstance(run, BuiltRun) else run
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.resume = resume
        self.registry = registry or get_registry()
        self.show_progress = progress
        self.log = log
        self.extra_hooks = list(hooks)
        self.max_steps = self.recipe.train.steps  # the one place train.steps is read
        self.accumulate = self.recipe.train.accumulate
        self.summary: dict[str, Any] = {}
        self.metrics = MetricLog()
        self.epoch = 0
        self.micro = 0  # micro-batches drawn in the current epoch
        self.lr = 0.0
        self.measure_cosines = False
        self.step_bad_videos: list[BadVideo] = []
        self.keep_batch = False  # set by a hook: keep this step's last batch in last_batch
        self.last_batch: dict[str, Any] | None = None

    # --- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Model and data (built by :func:`~hcframe.config.build_run`, here when the trainer was
        given a recipe), processes, optimisation, the data loader."""
        if self.built is None:
            self.built = build_run(self.recipe, registry=self.registry, log=self.log)
        self._init_process()
        self._take_model_and_data()
        self._build_optimisation()
        self._build_loader()

    def _init_process(self) -> None:
        t = self.recipe.train
        self.device = self.built.device
        self.distributed = hd.init_from_environment(self.device.type)
        self.rank, self.world = hd.rank(), hd.world_size()
        self.is_main = self.rank == 0
        if t.batch_size % self.world:
            raise RunFailed(f"{self.recipe.source}: train.batch_size {t.batch_size} is not divisible by the {self.world} processes")
        self.local_batch = t.batch_size // self.world
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(t.cpu_threads, t.num_workers, self.world))
        # The seeds were set by build_run before it built the model, the same on every rank.

    def _take_model_and_data(self) -> None:
        b = self.built
        if b.dataset is None:
            raise RunFailed(f"{self.recipe.source}: built without its training dataset (train_data=False or check_only=True); training needs build_run(recipe)")
        self.model = b.model
        self.combiner = self.model.combiner
        self.dataset: VideoDataset = b.dataset  # num_views, target_store set by build_run
        self.transform = b.transform.to(self.device)  # told about part labels and flips by build_run

    def _build_optimisation(self) -> None:
        t = self.recipe.train
        self.channels_last = t.channels_last == "on" or (t.channels_last == "auto" and self.device.type == "cuda")
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        if t.compile:
            self.model.trunk.compile()
            for branch in self.model.branches.values():
                branch.compile()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.shared = self.model.shared_parameters()
        self.optimizer = build_optimizer(self.model, self.recipe.optim, self.device.type)
        self.schedule = build_schedule(self.recipe.schedule, max(self.max_steps, 1))
        self.scaler = grad_scaler(self.device, t.precision)
        self.ddp: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    def _build_loader(self) -> None:
        r, t = self.recipe, self.recipe.train
        # Training draws (augmentation, task sampling) start from a state that does not depend on
        # what building the model and data consumed (an extra head, a world generated on first use).
        torch.manual_seed(t.seed + 1)
        self.sampler = EpochSampler(len(self.dataset), self.world, self.rank, seed=t.seed)
        self.batches_per_epoch = len(self.sampler) // self.local_batch
        if self.batches_per_epoch == 0:
            raise RunFailed(
                f"{r.source}: dataset {r.data.name!r} has {len(self.dataset)} videos, fewer than one batch of "
                f"{t.batch_size}; lower train.batch_size or add videos"
            )
        self.loader = DataLoader(
            self.dataset,
            batch_size=self.local_batch,
            sampler=self.sampler,
            num_workers=t.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=t.num_workers > 0,
            prefetch_factor=t.prefetch_factor if t.num_workers > 0 else None,
            # Its own generator, so creating an epoch's iterator never draws from the global RNG
            # (which the transforms use and checkpoints restore).
            generator=torch.Generator().manual_seed(t.seed),
        )

    def build_hooks(self) -> list[Hook]:
        """The hooks of this run, in the order they run: the checkpointer (first: the final
        checkpoint is written before anything else ends the run), bad-video accounting and the
        gradient-cosine probe; the recipe's ``[[hooks]]`` and the ``hooks`` argument; then the
        metric writer and the progress display (last: a step's log line holds what every other
        hook added to it). Override to change the built-ins."""
        t = self.recipe.train
        first: list[Hook] = [
            Checkpointer(t.checkpoint_every, t.keep_checkpoints),
            BadVideoAccountant(t.on_bad_video, t.max_bad_fraction),
            GradientCosineProbe(),
        ]
        loggers = [spec.build(self.registry) for spec in self.recipe.loggers]
        last: list[Hook] = [MetricWriter(t.log_every, loggers), ProgressDisplay(bar=self.show_progress)]
        return first + list(self.built.hooks) + self.extra_hooks + last

    def metric_info(self) -> list[MetricInfo]:
        """What a run logs: the trainer's own keys, the model's (tasks, combiner), the hooks'."""
        own = [
            MetricInfo("loss", "loss", progress=True),
            MetricInfo("lr", "other", plot="learning_rate"),
            MetricInfo("clips_per_s", "other", plot="throughput"),
            MetricInfo("data_wait_s", "other", plot="data_wait"),
        ]
        return own + self.model.metric_info() + [i for h in self.hooks for i in h.metric_info()]

    # --- the loop ------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Set up, run the steps with the hooks around them, return :attr:`summary`."""
        self.setup()
        self.register_hooks(self.build_hooks())
        super().train()
        return self.summary

    def before_train(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "recipe.toml", self.recipe.to_toml())
        if self.resume:
            self.restore()
        self._batches = self._batch_stream()
        self._started = time.perf_counter()
        self.ddp.train()
        super().before_train()

    def before_step(self) -> None:
        self.metrics.point.clear()
        self.step_bad_videos = []
        super().before_step()

    def after_train(self) -> None:
        self.summary.update(
            steps=self.step,
            epochs=self.epoch,
            train_wall_time_s=time.perf_counter() - getattr(self, "_started", time.perf_counter()),
        )
        if self.stop_reason is not None:
            self.summary["stopped_early"] = {"step": self.step, "reason": self.stop_reason}
        super().after_train()

    # --- one step ------------------------------------------------------------------------------
    def run_step(self) -> None:
        """One optimisation step: ``train.accumulate`` micro-batches forward and backward (the
        tasks' gradients combined by the combiner), then the optimiser."""
        self.lr = set_learning_rate(self.optimizer, self.recipe.optim.lr, self.schedule, self.step, self.max_steps)
        for i in range(self.accumulate):
            waited = time.perf_counter()
            batch = next(self._batches)
            # Seconds the step waited for this batch (decoding, and the transform on the device).
            self.metrics.add("data_wait_s", time.perf_counter() - waited)
            if self.keep_batch:  # for a logger's images (see MetricWriter): the step's last batch
                self.last_batch = batch
            last = i == self.accumulate - 1
            # Gradients are synchronised across ranks on the last micro-batch only (PCGrad reduces
            # its own gradients, and its forward must not skip the synchronisation set-up).
            total, outputs, weighted = self._forward(batch, sync=last or self.combiner.pcgrad)
            if last and self.measure_cosines:
                for pair, cos in self.combiner.measure_cosines({n: o.total for n, o in outputs.items()}, self.shared).items():
                    self.metrics.put(f"grad_cos/{pair}", cos)
            self._backward(total, weighted)
            self._record(total, outputs, clips=batch["views"][0].shape[0] * self.world)
        self._optimiser_step()
        if not math.isfinite(self._last_loss):
            raise RunFailed(f"loss is {self._last_loss} at step {self.step + 1}; lower optim.lr or enable train.clip_grad")

    def _batch_stream(self) -> Iterator[dict[str, Any]]:
        """Device batches, transformed, across epochs; records unreadable videos in
        ``step_bad_videos`` and skips batches that have no readable video left."""
        empty_in_a_row = 0
        while True:
            self.sampler.set_position(self.epoch, self.micro * self.local_batch)
            for batch in self.loader:
                self.micro += 1
                self.step_bad_videos.extend(batch.pop(BAD))
                if "views" not in batch:  # every video of this batch was unreadable
                    empty_in_a_row += 1
                    if empty_in_a_row >= self.batches_per_epoch:
                        raise RunFailed(
                            f"no video of dataset {self.recipe.data.name!r} could be read in {empty_in_a_row} batches "
                            f"in a row (a whole epoch); check the dataset root and codec with `hcframe check-videos`"
                        )
                    continue
                empty_in_a_row = 0
                batch = to_device(batch, self.device)
                with torch.no_grad():
                    batch = self.transform(batch, train=True)
                if self.channels_last:
                    batch["views"] = [v.contiguous(memory_format=torch.channels_last_3d) for v in batch["views"]]
                yield batch
            self.epoch += 1
            self.micro = 0

    def _forward(self, batch: dict[str, Any], sync: bool) -> tuple[Tensor, dict[str, TaskOutput], dict[str, Tensor]]:
        no_sync = self.ddp.no_sync() if (self.distributed and not sync) else nullcontext()
        with no_sync, autocast(self.device, self.recipe.train.precision):
            return self.ddp(batch, self.step, self.max_steps)

    def _backward(self, total: Tensor, weighted: dict[str, Tensor]) -> None:
        reduce = self._average_over_ranks if self.distributed else None
        # With PCGrad the combiner reduces its own gradients; DDP must not add its own pass.
        no_sync = self.ddp.no_sync() if (self.distributed and self.combiner.pcgrad) else nullcontext()
        with no_sync:
            self.combiner.backward(total, weighted, self.trainable, self.shared, accumulate=self.accumulate, scaler=self.scaler, reduce=reduce)

    def _average_over_ranks(self, grad: Tensor) -> None:
        dist.all_reduce(grad)
        grad /= self.world

    def _record(self, total: Tensor, outputs: dict[str, TaskOutput], clips: int) -> None:
        for name, out in outputs.items():
            for term, value in out.losses.items():
                self.metrics.add(f"{name}/{term}", _scalar(value), loss=True)
            for term, value in out.metrics.items():
                self.metrics.add(f"{name}/{term}", _scalar(value))
            self.metrics.add(f"{name}/loss", _scalar(out.total), loss=True)
            self.metrics.add(f"weight/{name}", _scalar(self.combiner.weight(name)))
        self._last_loss = _scalar(total)
        self.metrics.add("loss", self._last_loss, loss=True)
        self.metrics.count_clips(clips)

    def _optimiser_step(self) -> None:
        if self.recipe.train.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.train.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    # --- checkpoints ---------------------------------------------------------------------------
    def data_position(self) -> tuple[int, int]:
        """``(epoch, batches done in it)`` where the data continues after the current step."""
        if self.micro >= self.batches_per_epoch:  # the epoch's last batch was the step's last
            return self.epoch + 1, self.micro - self.batches_per_epoch
        return self.epoch, self.micro

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs to continue bit for bit (``weights_only``-loadable)."""
        epoch, batches_done = self.data_position()
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": {"name": self.recipe.schedule.name, "steps": self.max_steps},
            "step": self.step,
            "epoch": epoch,
            "sampler": {"epoch": epoch, "batches_done": batches_done},
            "rng": capture_rng(),
            "recipe_sha256": self.recipe.sha256(),
            "world_size": self.world,
            "hooks": self.hook_states(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Continue from ``state`` (a :meth:`state_dict`); :class:`RunFailed` (one line naming
        ``source``) when its model or optimiser does not fit this recipe's."""
        if state["recipe_sha256"] != self.recipe.sha256():
            warnings.warn(f"{source}: the recipe changed since this checkpoint was written; resuming with the new recipe", stacklevel=2)
        if state.get("world_size", 1) != self.world:
            warnings.warn(f"{source}: written by {state.get('world_size')} processes, resuming on {self.world}: the data order changes", stacklevel=2)
        mismatch = compare_state_dicts(self.model.state_dict(), state["model"])
        if mismatch:
            raise RunFailed(f"{source}: its model does not fit this recipe's: {mismatch.describe()}; resume with the recipe it was written with")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            restore_rng(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise RunFailed(f"{source}: cannot resume from it ({type(exc).__name__}: {first}); resume with the recipe it was written with") from exc
        self.step = state["step"]
        self.epoch, self.micro = state["sampler"]["epoch"], state["sampler"]["batches_done"]
        for key in self.load_hook_states(state.get("hooks", {})):
            warnings.warn(f"{source}: no hook of this run takes the saved state {key!r}; it is left out", stacklevel=2)

    def restore(self) -> None:
        """Continue from the newest checkpoint in :attr:`checkpoint_dir` that can be resumed from
        (newer ones that cannot are named in the log, renamed ``*.unreadable`` and skipped);
        from step 0 when there is none. The main process chooses the file; every process loads it."""
        found: tuple[Path, dict[str, Any]] | None = None
        choice: tuple[str | None, str | None] = (None, None)  # (path, error)
        if self.is_main:
            try:
                found = find_resumable_checkpoint(self.checkpoint_dir, self.log)
                choice = (str(found[0]) if found else None, None)
            except CheckpointError as exc:
                choice = (None, str(exc))
        path_text, error = hd.broadcast_from_main(choice)
        if error is not None:
            raise RunFailed(error)
        if path_text is None:
            self.log(f"no checkpoint in {self.checkpoint_dir}; starting from step 0")
            return
        path = Path(path_text)
        if found is None:  # another rank: the file rank 0 chose, which loaded there
            try:
                found = path, check_training_state(load_checkpoint(path), path)
            except CheckpointError as exc:
                raise RunFailed(str(exc)) from None
        self.load_state_dict(found[1], source=str(path))
        self.log(f"resumed from {path} at step {self.step}")
