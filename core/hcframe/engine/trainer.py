"""The training loop: one code path for CPU and CUDA, one process or many under torchrun."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from hcframe.data import BAD, BadVideo, VideoDataset, collate
from hcframe.engine import distributed as hd
from hcframe.engine.checkpoint import capture_rng, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from hcframe.engine.model import LossCombiner, MultiTaskModel, gradient_cosines, pcgrad_combine
from hcframe.engine.optim import build_optimizer, build_schedule, set_learning_rate
from hcframe.engine.precision import training_autocast
from hcframe.engine.pretrained import initialise_from_recipe
from hcframe.engine.sampler import EpochSampler
from hcframe.recipe import Recipe
from hcframe.registry import Registry, get_registry

__all__ = ["RunFailed", "Trainer", "build_model", "choose_device", "cpu_threads", "to_device"]


class RunFailed(RuntimeError):
    """The run cannot go on (too many bad videos, a bad video in strict mode, a data problem)."""


def choose_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RunFailed("train.device = \"cuda\" but no CUDA device is available; use \"auto\" or \"cpu\"")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


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
    """Encoder + tasks + combiner as the recipe describes them (random initialisation, or the
    encoder's weights from ``[model] init``)."""
    registry = registry or get_registry()
    encoder = recipe.encoder.build(registry)
    tasks = {name: spec.build(registry) for name, spec in recipe.tasks.items()}
    combiner = LossCombiner(tasks, recipe.combiner.weights, recipe.combiner.weighting)
    try:
        if recipe.model.init:  # before the split: trunk, every branch and the tasks' copies start from it
            initialise_from_recipe(encoder, recipe, log)
        return MultiTaskModel(encoder, tasks, recipe.model.split, combiner, recipe.combiner.shared_grad_scale)
    except ValueError as exc:
        raise RunFailed(f"{recipe.source}: {exc}") from None


def _scalar(value: Any) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


class _Progress:
    """Rich progress bar on a terminal, plain log lines otherwise; silent on ranks other than 0."""

    def __init__(self, total: int, start: int, enabled: bool, log: Callable[[str], None]) -> None:
        self.log = log
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[terms]}"),
                TextColumn("{task.fields[speed]} clips/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, epoch=0, terms="", speed="-")

    def update(self, step: int, epoch: int, record: dict[str, Any]) -> None:
        terms = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k == "loss" or k.endswith("/loss") or "/" in k and k.split("/")[1] in ("acc", "miou", "nce", "kl", "ce"))
        speed = f"{record.get('clips_per_s', 0.0):.1f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, epoch=epoch, terms=terms, speed=speed)
        else:
            self.log(f"step {step} epoch {epoch} lr {record.get('lr', 0):.4g} {terms} {speed} clips/s")

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Trainer:
    """Runs the pre-training stage of a recipe in ``run_dir``.

    Writes ``recipe.toml`` (resolved), ``metrics.jsonl``, ``checkpoints/`` and returns the summary
    fields of the training stage; :func:`hcframe.run.run_recipe` adds evaluation and writes
    ``summary.json``.
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        *,
        resume: bool = False,
        registry: Registry | None = None,
        progress: bool = False,
        log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    ) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.registry = registry or get_registry()
        self.show_progress = progress
        self.log = log
        self.bad_videos: dict[str, str] = {}

    # --- setup ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        r = self.recipe
        self.device = choose_device(r.train.device)
        self.distributed = hd.init_from_environment(self.device.type)
        self.rank, self.world = hd.rank(), hd.world_size()
        if r.train.batch_size % self.world:
            raise RunFailed(f"{r.source}: train.batch_size {r.train.batch_size} is not divisible by the {self.world} processes")
        self.local_batch = r.train.batch_size // self.world
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(r.train.cpu_threads, r.train.num_workers, self.world))
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        torch.manual_seed(r.train.seed)
        import random

        import numpy as np

        random.seed(r.train.seed)
        np.random.seed(r.train.seed % 2**32)

        self.model = build_model(r, self.registry, log=self.log)
        self.dataset: VideoDataset = r.data.build(self.registry)
        self.dataset.num_views = self.model.num_views
        for name, task in self.model.tasks.items():
            if "parts" in task.needs:
                self.dataset.target_store = task.target_store(self.dataset)
            if "label" in task.needs and not self.dataset.class_names:
                raise RunFailed(f"{r.source}: tasks.{name} needs labels but dataset {r.data.name!r} has none")
        self.transform = r.transform.build(self.registry).to(self.device)
        if self.dataset.target_store is not None:
            self.transform.set_part_labels(self.dataset.target_store.label_names)

        precision = r.train.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.channels_last = r.train.channels_last == "on" or (r.train.channels_last == "auto" and self.device.type == "cuda")
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        if r.train.compile:
            self.model.trunk.compile()
            for branch in self.model.branches.values():
                branch.compile()
        self.optimizer = build_optimizer(self.model, r.optim, self.device.type)
        self.schedule = build_schedule(r.schedule, max(r.train.steps, 1))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.ddp: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

        # Training draws (augmentation, task sampling) start from a state that does not depend on
        # what building the model and data consumed (an extra head, a world generated on first use).
        torch.manual_seed(r.train.seed + 1)
        self.sampler = EpochSampler(len(self.dataset), self.world, self.rank, seed=r.train.seed)
        self.batches_per_epoch = len(self.sampler) // self.local_batch
        if self.batches_per_epoch == 0:
            raise RunFailed(
                f"{r.source}: dataset {r.data.name!r} has {len(self.dataset)} videos, fewer than one batch of "
                f"{r.train.batch_size}; lower train.batch_size or add videos"
            )
        workers = r.train.num_workers
        self.loader = DataLoader(
            self.dataset,
            batch_size=self.local_batch,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
            prefetch_factor=r.train.prefetch_factor if workers > 0 else None,
            # Its own generator, so creating an epoch's iterator never draws from the global RNG
            # (which the transforms use and checkpoints restore).
            generator=torch.Generator().manual_seed(r.train.seed),
        )

    # --- checkpoints ---------------------------------------------------------------------------
    def _state(self, step: int, epoch: int, micro: int) -> dict[str, Any]:
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": {"name": self.recipe.schedule.name, "steps": self.recipe.train.steps},
            "step": step,
            "epoch": epoch,
            "sampler": {"epoch": epoch, "batches_done": micro},
            "rng": capture_rng(),
            "recipe_sha256": self.recipe.sha256(),
            "bad_videos": dict(self.bad_videos),
            "world_size": self.world,
        }

    def _save(self, step: int, epoch: int, micro: int) -> None:
        if self.rank == 0:
            save_checkpoint(self._state(step, epoch, micro), self.run_dir / "checkpoints", step, self.recipe.train.keep_checkpoints)
        hd.barrier()

    def _restore(self) -> tuple[int, int, int]:
        path = latest_checkpoint(self.run_dir / "checkpoints")
        if path is None:
            self.log(f"no checkpoint in {self.run_dir / 'checkpoints'}; starting from step 0")
            return 0, 0, 0
        state = load_checkpoint(path)
        if state["recipe_sha256"] != self.recipe.sha256():
            warnings.warn(f"{path}: the recipe changed since this checkpoint was written; resuming with the new recipe", stacklevel=2)
        if state.get("world_size", 1) != self.world:
            warnings.warn(f"{path}: written by {state.get('world_size')} processes, resuming on {self.world}: the data order changes", stacklevel=2)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        self.bad_videos = dict(state.get("bad_videos", {}))
        self.log(f"resumed from {path} at step {state['step']}")
        return state["step"], state["sampler"]["epoch"], state["sampler"]["batches_done"]

    # --- one step ------------------------------------------------------------------------------
    def _note_bad(self, bad: list[BadVideo]) -> None:
        for b in bad:
            if b.path in self.bad_videos:
                continue
            self.bad_videos[b.path] = b.reason
            if self.recipe.train.on_bad_video == "raise":
                raise RunFailed(f"{b.path}: cannot decode video: {b.reason} (train.on_bad_video = \"raise\")")
            self.log(f"skipping unreadable video {b.path}: {b.reason}")
        limit = self.recipe.train.max_bad_fraction * len(self.dataset)
        if len(self.bad_videos) > limit:
            raise RunFailed(
                f"{len(self.bad_videos)} of {len(self.dataset)} videos could not be read (more than "
                f"train.max_bad_fraction = {self.recipe.train.max_bad_fraction}); check the dataset root "
                f"and codec with `hcframe check-videos`"
            )

    def _forward(self, batch: dict[str, Any], step: int, sync: bool) -> tuple[torch.Tensor, dict[str, Any], dict[str, torch.Tensor]]:
        total_steps = self.recipe.train.steps
        no_sync = self.ddp.no_sync() if (self.distributed and not sync) else nullcontext()
        with no_sync, training_autocast(self.device.type, self.autocast_dtype):
            total, outputs, weighted = self.ddp(batch, step, total_steps)
        return total, outputs, weighted

    def _pcgrad_backward(self, outputs: dict[str, Any], weighted: dict[str, torch.Tensor], scale: float) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        shared_ids = {id(p) for p in self.model.shared_parameters()}
        shared_mask = torch.cat([torch.full((p.numel(),), id(p) in shared_ids, dtype=torch.bool, device=p.device) for p in params])
        per_task = {}
        for name, loss in weighted.items():
            grads = torch.autograd.grad(loss * scale, params, retain_graph=True, allow_unused=True)
            per_task[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        combined = torch.stack(list(per_task.values())).sum(0)
        combined[shared_mask] = pcgrad_combine({n: g[shared_mask] for n, g in per_task.items()})
        offset = 0
        for p in params:
            g = combined[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if self.distributed:
                dist.all_reduce(g)
                g /= self.world
            p.grad = g.clone() if p.grad is None else p.grad + g

    # --- the loop ------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        r = self.recipe
        self._setup()
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "recipe.toml").write_text(r.to_toml())
        step, epoch, micro = self._restore() if self.resume else (0, 0, 0)
        total_steps, accumulate = r.train.steps, r.train.accumulate
        if total_steps == 0 and self.rank == 0:  # the untrained baseline still leaves a checkpoint to evaluate
            save_checkpoint(self._state(0, 0, 0), self.run_dir / "checkpoints", 0, r.train.keep_checkpoints)
        metrics_file = open(self.run_dir / "metrics.jsonl", "a") if self.rank == 0 else None
        progress = _Progress(total_steps, step, self.show_progress and self.rank == 0, self.log if self.rank == 0 else (lambda m: None))
        window: dict[str, list[float]] = {}
        window_clips, window_start = 0, time.perf_counter()
        started = time.perf_counter()
        last_record: dict[str, Any] = {}
        pending = 0  # micro-batches accumulated towards the next optimiser step
        try:
            self.ddp.train()
            while step < total_steps:
                self.sampler.set_position(epoch, micro * self.local_batch)
                for batch in self.loader:
                    micro += 1
                    bad = batch.pop(BAD)
                    if bad:
                        self._note_bad(bad)
                    if "views" not in batch:  # every video of this batch was unreadable
                        continue
                    batch = to_device(batch, self.device)
                    with torch.no_grad():
                        batch = self.transform(batch, train=True)
                    if self.channels_last:
                        batch["views"] = [v.contiguous(memory_format=torch.channels_last_3d) for v in batch["views"]]
                    pending += 1
                    sync = pending == accumulate
                    if pending == 1:
                        set_learning_rate(self.optimizer, r.optim.lr, self.schedule, step, total_steps)
                    total, outputs, weighted = self._forward(batch, step, sync or r.combiner.pcgrad)
                    record: dict[str, Any] = {}
                    if r.combiner.grad_cosine_every and sync and (step + 1) % r.combiner.grad_cosine_every == 0 and len(outputs) > 1:
                        shared = self.model.shared_parameters()
                        if shared:
                            for pair, cos in gradient_cosines({n: o.total for n, o in outputs.items()}, shared).items():
                                record[f"grad_cos/{pair}"] = cos
                    if r.combiner.pcgrad:
                        with self.ddp.no_sync() if self.distributed else nullcontext():
                            self._pcgrad_backward(outputs, weighted, 1.0 / accumulate)
                    else:
                        self.scaler.scale(total / accumulate).backward()
                    for name, out in outputs.items():
                        for term, value in out.losses.items():
                            window.setdefault(f"{name}/{term}", []).append(_scalar(value))
                        for term, value in out.metrics.items():
                            window.setdefault(f"{name}/{term}", []).append(_scalar(value))
                        window.setdefault(f"{name}/loss", []).append(_scalar(out.total))
                        window.setdefault(f"weight/{name}", []).append(_scalar(self.model.combiner.weight(name)))
                    window.setdefault("loss", []).append(_scalar(total))
                    window_clips += batch["views"][0].shape[0] * self.world
                    if not sync:
                        continue
                    pending = 0
                    if r.train.clip_grad > 0:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.train.clip_grad)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    step += 1
                    if not math.isfinite(window["loss"][-1]):
                        raise RunFailed(f"loss is {window['loss'][-1]} at step {step}; lower optim.lr or enable train.clip_grad")
                    if step % r.train.log_every == 0 or step == total_steps:
                        elapsed = time.perf_counter() - window_start
                        record = {
                            "step": step,
                            "epoch": epoch,
                            "lr": self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_scale", 1.0),
                            **{k: sum(v) / len(v) for k, v in window.items()},
                            **record,
                            "clips_per_s": window_clips / max(elapsed, 1e-9),
                            "time": time.time(),
                        }
                        window, window_clips, window_start = {}, 0, time.perf_counter()
                        if metrics_file is not None:
                            metrics_file.write(json.dumps(record) + "\n")
                            metrics_file.flush()
                        last_record = record
                        progress.update(step, epoch, record)
                    elif record and metrics_file is not None:  # gradient cosines on a step that is not logged
                        metrics_file.write(json.dumps({"step": step, **record}) + "\n")
                    else:
                        progress.advance(step)
                    if step % r.train.checkpoint_every == 0 or step == total_steps:
                        self._save(step, epoch if micro < self.batches_per_epoch else epoch + 1, micro % self.batches_per_epoch)
                    if step >= total_steps:
                        break
                else:
                    epoch += 1
                    micro = 0
                    continue
                break
        finally:
            progress.close()
            if metrics_file is not None:
                metrics_file.close()
        return {
            "steps": step,
            "epochs": epoch,
            "train_wall_time_s": time.perf_counter() - started,
            "final_metrics": {k: v for k, v in last_record.items() if k not in ("time",)},
            "bad_videos": {"count": len(self.bad_videos), "videos": [{"path": p, "reason": why} for p, why in sorted(self.bad_videos.items())]},
        }
