"""The hooks every training run has (see :meth:`hcframe.engine.trainer.Trainer.build_hooks`).

In the order the trainer registers them (other hooks go between the first four and the last
two: they see a step before it is logged, and may add to its log line):

- :class:`Checkpointer`: ``checkpoints/step_N.pt`` every ``train.checkpoint_every`` steps and at the
  end, keeping the newest ``train.keep_checkpoints``; first, so that the final checkpoint is on
  disk before anything else ends the run (the evaluation);
- :class:`NonFiniteSteps`: counts and logs the steps skipped for a non-finite loss or gradient
  (found and skipped on the device, see :mod:`hcframe.engine.nonfinite`), stops a run that keeps
  skipping;
- :class:`BadVideoAccountant`: reports each unreadable video once, keeps the list (in checkpoints
  and ``summary.json``), stops the run past ``train.max_bad_fraction`` or at the first one with
  ``train.on_bad_video = "raise"``;
- :class:`GradientCosineProbe`: asks for the cosine between the tasks' gradients on the shared
  trunk on the steps ``combiner.grad_cosine_every`` names;
- :class:`MetricWriter`: every ``train.log_every`` steps a line of numbers to every logger
  (``metrics.jsonl`` and the recipe's ``[[loggers]]``), images to those that want them, and
  ``metrics_schema.json`` (what every key is) at the start;
- :class:`ProgressDisplay`: a progress bar on a terminal, log lines otherwise.

A hook reaches everything through ``self.trainer``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from hcframe.components import Hook, Logger
from hcframe.engine import distributed as hd
from hcframe.engine.checkpoint import save_checkpoint
from hcframe.engine.loop import RunFailed
from hcframe.engine.nonfinite import ADVICE, describe_nonfinite, nonfinite_tensors
from hcframe.loggers import JsonlLogger
from hcframe.metrics import MetricInfo, write_metric_schema
from hcframe.progress import ProgressClock

__all__ = ["BadVideoAccountant", "Checkpointer", "GradientCosineProbe", "MetricWriter", "NonFiniteSteps", "ProgressDisplay"]


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class NonFiniteSteps(Hook):
    """Counts and logs the steps :func:`~hcframe.engine.nonfinite.step_if_finite` skipped; stops a
    run that keeps skipping.

    After every step it takes the trainer's ``step_finite`` (a bool on the device) and
    ``step_losses`` (the step's loss terms: names and a vector on the device, summed over
    micro-batches) without reading them; it reads them back every ``read_every`` steps and at
    log steps (``log_every``) and at the end. On CPU the trainer reads every step (nothing to wait
    for); on a GPU every ``train.max_nonfinite_steps`` steps, so a stop comes at most that many
    steps late, while the skipped steps change nothing.

    Stops the run (:class:`~hcframe.engine.loop.RunFailed`) when ``limit`` steps in a row were
    skipped, naming the steps, the task and the loss term (or the gradients when every term was
    finite), and at the first skipped step after which the model's weights or buffers hold a
    non-finite value. Logs ``skipped_steps`` (the count so far) in every log line and keeps
    ``summary["nonfinite_steps"]``; the counts are kept in checkpoints.
    """

    def __init__(self, limit: int, read_every: int = 1, log_every: int = 0) -> None:
        if limit < 1:
            raise ValueError(f"train.max_nonfinite_steps must be >= 1, got {limit}")
        self.limit = limit
        self.read_every = max(1, read_every)
        self.log_every = log_every
        self.pending: list[tuple[int, Tensor, tuple[str, ...], Tensor]] = []
        self.skipped = 0
        self.in_a_row = 0
        self.row_start = 0  # first step of the current row of skipped steps
        self.last: dict[str, Any] | None = None  # the last skipped step: {"step", "nonfinite"}

    def metric_info(self) -> list[MetricInfo]:
        return [MetricInfo("skipped_steps", "other", plot="skipped_steps")]

    def before_train(self) -> None:
        self._publish()

    def after_step(self) -> None:
        trainer = self.trainer
        keys, losses = trainer.step_losses
        self.pending.append((trainer.step, trainer.step_finite, tuple(keys), losses))
        step = trainer.step
        if step % self.read_every == 0 or (self.log_every and step % self.log_every == 0) or step >= trainer.max_steps:
            self.read()

    def after_train(self) -> None:
        if self.pending:
            self.read(stop=False)

    # --- reading the flags back ------------------------------------------------------------------
    def read(self, stop: bool = True) -> None:
        """Read the pending steps' flags (one wait for the device), log and count the skipped
        ones, and stop the run when it must (``stop``)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        flags = torch.stack([finite.reshape(()).to(torch.float32) for _, finite, _, _ in pending]).tolist()
        failure = None
        for (step, _, keys, losses), ok in zip(pending, flags):
            if ok:
                self.in_a_row = 0
                continue
            values = losses.tolist()  # only for the skipped steps
            terms = [(k, v) for k, v in zip(keys, values) if not math.isfinite(v)]
            self.skipped += 1
            self.in_a_row += 1
            if self.in_a_row == 1:
                self.row_start = step
            culprit = _culprit(terms)
            self.last = {"step": step, "nonfinite": [k for k, _ in terms] or ["gradients"]}
            self.trainer.log(f"step {step}: {culprit} is not finite; the step was skipped ({self.skipped} skipped so far)")
            if failure is None:
                failure = self._failure(step, culprit)
        self._publish()
        if failure is not None and stop:
            raise RunFailed(failure)

    def _failure(self, step: int, culprit: str) -> str | None:
        """Why the run cannot go on after skipped step ``step``, or None."""
        model = self.trainer.model
        params = {n: p for n, p in model.named_parameters()}
        bad, total = nonfinite_tensors(params)
        if bad:
            made = f"the update of step {self.row_start - 1} made them so" if self.row_start > 1 else "they were so when training began"
            return (f"step {step}: {culprit} is not finite because the weights are: "
                    f"{describe_nonfinite(bad, total, 'weight tensors')}; {made}; {ADVICE}")
        buffers = {n: b for n, b in model.named_buffers()}
        bad, total = nonfinite_tensors(buffers)
        if bad:
            return (f"step {step}: {culprit} is not finite, and the forward pass left non-finite values in the model's "
                    f"buffers, which skipping the step cannot undo: {describe_nonfinite(bad, total, 'buffers')}; {ADVICE}")
        if self.in_a_row >= self.limit:
            return (f"{self.in_a_row} optimisation steps in a row were not finite (steps {self.row_start}-{step}; "
                    f"train.max_nonfinite_steps = {self.limit}): at step {step} {culprit}; {ADVICE}")
        return None

    def _publish(self) -> None:
        self.trainer.metrics.set("skipped_steps", self.skipped)
        self.trainer.summary["nonfinite_steps"] = {"count": self.skipped, "last": self.last}

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.pending:
            self.read(stop=False)  # a checkpoint holds the counts up to its step
        if not self.skipped:
            return {}
        return {"skipped": self.skipped, "in_a_row": self.in_a_row, "row_start": self.row_start, "last": self.last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.in_a_row = int(state.get("in_a_row", 0))
        self.row_start = int(state.get("row_start", 0))
        last = state.get("last")
        self.last = {"step": int(last["step"]), "nonfinite": list(last["nonfinite"])} if last else None
        self._publish()


def _culprit(terms: list[tuple[str, float]]) -> str:
    """Which loss is not finite: the task terms (``<task>/<term>``) rather than the totals that
    contain them; the gradients when every loss was finite."""
    if not terms:
        return "the gradient (every loss term was finite)"
    own = [(k, v) for k, v in terms if k != "loss" and not k.endswith("/loss")]
    chosen = own or [(k, v) for k, v in terms if k.endswith("/loss")] or terms
    parts = []
    for key, value in chosen:
        if key == "loss":
            parts.append(f"the combined loss (= {_format(value)})")
        else:
            task, term = key.split("/", 1)
            parts.append(f"loss term {term!r} of task {task!r} (= {_format(value)})")
    return " and ".join(parts)


class BadVideoAccountant(Hook):
    """Unreadable videos: each is logged once and listed in ``summary["bad_videos"]``; the run stops
    (:class:`RunFailed`) when more than ``max_bad_fraction`` of the dataset could not be read, or at
    the first one when ``on_bad_video`` is ``"raise"``. Reads the videos a step skipped from
    ``trainer.step_bad_videos``."""

    def __init__(self, on_bad_video: str = "skip", max_bad_fraction: float = 0.05) -> None:
        self.on_bad_video = on_bad_video
        self.max_bad_fraction = max_bad_fraction
        self.videos: dict[str, str] = {}  # path -> reason

    def before_train(self) -> None:
        self._publish()

    def after_step(self) -> None:
        trainer = self.trainer
        for bad in trainer.step_bad_videos:
            if bad.path in self.videos:
                continue
            self.videos[bad.path] = bad.reason
            self._publish()
            if self.on_bad_video == "raise":
                raise RunFailed(f"{bad.path}: cannot decode video: {bad.reason} (train.on_bad_video = \"raise\")")
            trainer.log(f"skipping unreadable video {bad.path}: {bad.reason}")
        total = len(trainer.dataset)
        if len(self.videos) > self.max_bad_fraction * total:
            raise RunFailed(
                f"{len(self.videos)} of {total} videos could not be read (more than "
                f"train.max_bad_fraction = {self.max_bad_fraction}); check the dataset root "
                f"and codec with `hcframe check-videos`"
            )

    def _publish(self) -> None:
        self.trainer.summary["bad_videos"] = {
            "count": len(self.videos),
            "videos": [{"path": p, "reason": why} for p, why in sorted(self.videos.items())],
        }

    def state_dict(self) -> dict[str, Any]:
        return {"videos": dict(self.videos)} if self.videos else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.videos = dict(state.get("videos", {}))
        self._publish()


class GradientCosineProbe(Hook):
    """Sets ``trainer.measure_cosines`` before each step: true on the steps the combiner's
    ``grad_cosine_every`` names. ``run_step`` then measures the cosines on the step's last
    micro-batch and logs them as ``grad_cos/<a>~<b>``."""

    def before_step(self) -> None:
        trainer = self.trainer
        trainer.measure_cosines = trainer.combiner.cosine_due(trainer.step + 1)


class MetricWriter(Hook):
    """The run's numbers, to every logger: ``metrics.jsonl`` (:class:`~hcframe.loggers.JsonlLogger`,
    always) and the recipe's ``[[loggers]]`` (TensorBoard, W&B, CSV, ...).

    Every ``every`` steps, at the last step and at a clean stop, a line with the step, epoch,
    learning rate, the means since the previous line, this step's own values and
    ``clips_per_s``; on other steps that have values of their own (gradient cosines), a line with
    just those. Each line goes to every logger. On the steps a logger's
    :meth:`~hcframe.Logger.wants_images` names, the tasks' images (:meth:`hcframe.PretextTask.visualise`,
    drawn by :func:`hcframe.visualise.label_map_grid`) go to it as ``<task>/part_maps``.
    ``metrics_schema.json`` describes every key; keys that show up undeclared are added.
    Only the main process writes (and starts loggers); every process keeps ``trainer.metrics.latest``."""

    def __init__(self, every: int, loggers: Sequence[Logger] = ()) -> None:
        self.every = every
        # metrics.jsonl is always written; a [[loggers]] table naming it adds nothing.
        self.jsonl = JsonlLogger()
        self.loggers: list[Logger] = [self.jsonl, *(lg for lg in loggers if not isinstance(lg, JsonlLogger))]
        self.started: list[Logger] = []
        self.declared: dict[str, MetricInfo] = {}
        self.can_draw = False

    def before_train(self) -> None:
        trainer = self.trainer
        self.declared = {i.name: i for i in trainer.metric_info()}
        if not trainer.is_main:
            return
        write_metric_schema(trainer.run_dir, self.declared.values())
        self.jsonl.log = trainer.log  # the always-on metrics.jsonl reports its cut on a resume
        for logger in self.loggers:
            logger.start(trainer.run_dir, trainer.step, list(self.declared.values()), trainer.recipe.raw)
            self.started.append(logger)
        self.can_draw = trainer.model.can_visualise()

    def before_step(self) -> None:
        trainer = self.trainer
        # The step's batch is kept (on the device) only when a logger wants its images.
        trainer.keep_batch = self.can_draw and any(lg.wants_images(trainer.step + 1) for lg in self.started)

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.step % self.every == 0 or trainer.step == trainer.max_steps:
            self._write(trainer.metrics.flush(trainer.step, trainer.epoch, trainer.lr))
        elif trainer.metrics.point:
            self._write({"step": trainer.step, **trainer.metrics.take_point()})
        if trainer.keep_batch and trainer.last_batch is not None:
            self._draw(trainer.last_batch)
            trainer.last_batch, trainer.keep_batch = None, False

    def _draw(self, batch: Mapping[str, Any]) -> None:
        from hcframe.visualise import label_map_grid

        trainer = self.trainer
        shown = trainer.model.visualise(dict(batch), trainer.step, trainer.max_steps)
        images = {f"{task}/part_maps": label_map_grid(maps, title=f"{task}, step {trainer.step}") for task, maps in shown.items()}
        if images:
            for logger in self.started:
                if logger.wants_images(trainer.step):
                    logger.log_images(trainer.step, images)

    def after_train(self) -> None:
        trainer = self.trainer
        try:
            if trainer.status in ("completed", "stopped") and trainer.metrics.window and trainer.metrics.latest_step != trainer.step:
                self._write(trainer.metrics.flush(trainer.step, trainer.epoch, trainer.lr))  # a stop between log lines
        finally:
            for logger in self.started:  # every logger is closed, also when one of them fails
                try:
                    logger.close()
                except Exception as exc:
                    trainer.log(f"logger {type(logger).__name__} failed to close: {type(exc).__name__}: {exc}")
            self.started = []
        trainer.summary["final_metrics"] = {k: v for k, v in trainer.metrics.latest.items() if k != "time"}

    def _write(self, record: dict[str, Any]) -> None:
        if not self.started:
            return
        undeclared = [k for k in record if k not in self.declared and k not in ("step", "epoch", "time")]
        if undeclared:
            loss_keys = self.trainer.metrics.loss_keys
            self.declared.update({k: MetricInfo(k, "loss" if k in loss_keys else "other") for k in undeclared})
            write_metric_schema(self.trainer.run_dir, self.declared.values())
        step = record["step"]
        values = {k: v for k, v in record.items() if k != "step"}
        for logger in self.started:
            logger.log_metrics(step, values)


class Checkpointer(Hook):
    """``checkpoints/step_N.pt``: the trainer's :meth:`~hcframe.engine.trainer.Trainer.state_dict`,
    written atomically by the main process, after every ``every``-th step, the last step, and a
    clean stop (also the untrained baseline of ``train.steps = 0``); the newest ``keep`` are kept.

    A checkpoint is never written with a non-finite weight or buffer: the run fails instead,
    naming how many tensors are not finite and the first (a resume would load them).

    Step N's checkpoint is written when step N + 1 begins, or when training ends: after every hook
    has finished with step N, so whatever hooks changed in that step (their state, the random
    generators) is in it, whatever order they run in; a step whose hooks failed is not saved.
    """

    def __init__(self, every: int, keep: int) -> None:
        self.every = every
        self.keep = keep
        self.saved_at: int | None = None
        self.due = False

    def before_train(self) -> None:
        # A resumed run already has the checkpoint of the step it resumed from.
        self.saved_at = self.trainer.step if self.trainer.step > 0 else None

    def after_step(self) -> None:
        step = self.trainer.step
        self.due = step % self.every == 0 or step == self.trainer.max_steps

    def before_step(self) -> None:
        if self.due:
            self.save()

    def after_train(self) -> None:
        if self.trainer.status in ("completed", "stopped") and self.saved_at != self.trainer.step:
            self.save()

    def save(self) -> None:
        trainer = self.trainer
        if trainer.is_main:
            state = trainer.state_dict()
            refuse_nonfinite_weights(state["model"], trainer.checkpoint_dir, trainer.step)
            save_checkpoint(state, trainer.checkpoint_dir, trainer.step, self.keep)
        hd.barrier()
        self.saved_at, self.due = trainer.step, False


def refuse_nonfinite_weights(model_state: Mapping[str, Any], directory: Any, step: int) -> None:
    """Raise :class:`RunFailed` when ``model_state`` holds a NaN or an infinity."""
    bad, total = nonfinite_tensors(model_state)
    if bad:
        raise RunFailed(
            f"not writing the checkpoint of step {step} to {directory}: {describe_nonfinite(bad, total, 'model tensors')}; "
            f"an optimiser update at or before step {step} made them so; lower optim.lr or set train.clip_grad"
        )


class ProgressDisplay(Hook):
    """On the main process: a rich progress bar (``bar=True``, for a terminal) or one log line per
    logged step, with the step, epoch, learning rate, the keys declared ``progress=True``, the
    throughput and the time left (ETA)."""

    def __init__(self, bar: bool) -> None:
        self.use_bar = bar
        self.bar: Any = None
        self.task: Any = None
        self.shown: list[str] = []
        self.clock = ProgressClock(0)

    def before_train(self) -> None:
        trainer = self.trainer
        if not trainer.is_main:
            return
        self.clock = ProgressClock(trainer.max_steps, done=trainer.step)
        self.shown = [i.name for i in trainer.metric_info() if i.progress]
        if self.use_bar:
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
            self.task = self.bar.add_task("train", total=trainer.max_steps, completed=trainer.step, epoch=trainer.epoch, terms="", speed="-")

    def after_step(self) -> None:
        trainer = self.trainer
        if not trainer.is_main:
            return
        if trainer.metrics.latest_step != trainer.step:
            if self.bar is not None:
                self.bar.update(self.task, completed=trainer.step)
            return
        record = trainer.metrics.latest
        terms = " ".join(f"{k}={record[k]:.4g}" for k in self.shown if k in record)
        speed = f"{record.get('clips_per_s', 0.0):.1f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=trainer.step, epoch=record["epoch"], terms=terms, speed=speed)
            if trainer.step >= trainer.max_steps:  # off the screen before the evaluation's output
                self.after_train()
        else:
            trainer.log(
                f"step {trainer.step}/{trainer.max_steps} epoch {record['epoch']} lr {record['lr']:.4g} {terms} "
                f"{speed} clips/s ETA {self.clock.eta(trainer.step)}"
            )

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
