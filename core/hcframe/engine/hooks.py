"""The hooks every training run has (see :meth:`hcframe.engine.trainer.Trainer.build_hooks`).

In the order the trainer registers them (other hooks go between the first three and the last
two: they see a step before it is logged, and may add to its log line):

- :class:`Checkpointer`: ``checkpoints/step_N.pt`` every ``train.checkpoint_every`` steps and at the
  end, keeping the newest ``train.keep_checkpoints``; first, so that the final checkpoint is on
  disk before anything else ends the run (the evaluation);
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

from typing import Any, Mapping, Sequence

from hcframe.components import Hook, Logger
from hcframe.engine import distributed as hd
from hcframe.engine.checkpoint import save_checkpoint
from hcframe.engine.loop import RunFailed
from hcframe.loggers import JsonlLogger
from hcframe.metrics import MetricInfo, write_metric_schema
from hcframe.progress import ProgressClock

__all__ = ["BadVideoAccountant", "Checkpointer", "GradientCosineProbe", "MetricWriter", "ProgressDisplay"]


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
            save_checkpoint(trainer.state_dict(), trainer.checkpoint_dir, trainer.step, self.keep)
        hd.barrier()
        self.saved_at, self.due = trainer.step, False


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
