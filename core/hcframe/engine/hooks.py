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
- :class:`MetricWriter`: ``metrics.jsonl`` every ``train.log_every`` steps and
  ``metrics_schema.json`` (what every key is) at the start;
- :class:`ProgressDisplay`: a progress bar on a terminal, log lines otherwise.

A hook reaches everything through ``self.trainer``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Callable, Mapping

from hcframe.components import Hook
from hcframe.engine import distributed as hd
from hcframe.engine.checkpoint import save_checkpoint
from hcframe.engine.loop import RunFailed
from hcframe.files import write_text_atomic, writing
from hcframe.metrics import MetricInfo, write_metric_schema

__all__ = ["BadVideoAccountant", "Checkpointer", "GradientCosineProbe", "MetricWriter", "ProgressDisplay", "cut_metric_log"]


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


def cut_metric_log(path: Path, step: int, log: Callable[[str], None] = lambda m: None) -> int:
    """Keep the lines of ``metrics.jsonl`` at ``path`` up to ``step`` (where a run continues from)
    and drop the rest, with a torn last line; returns how many lines were dropped. The file is
    rewritten atomically, and only when something is dropped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line a killed run left half-written
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
        log(f"{path}: dropped {dropped} lines after step {step} (those steps are logged again)")
    return dropped


class MetricWriter(Hook):
    """``metrics.jsonl``: every ``every`` steps, at the last step and at a clean stop a line with the
    step, epoch, learning rate, the means since the previous line, this step's own values and
    ``clips_per_s``;
    on other steps that have values of their own (gradient cosines), a line with just those. At
    the start the file is cut back to the step training continues from (0 for a new run, the
    checkpoint's step for a resume: the steps after it are run, and logged, again), so every step
    appears once. ``metrics_schema.json`` describes every key; keys that show up undeclared are
    added. Only the main process writes; every process keeps ``trainer.metrics.latest``."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.file: IO[str] | None = None
        self.path: Path | None = None
        self.declared: dict[str, MetricInfo] = {}

    def before_train(self) -> None:
        trainer = self.trainer
        self.declared = {i.name: i for i in trainer.metric_info()}
        if trainer.is_main:
            write_metric_schema(trainer.run_dir, self.declared.values())
            self.path = trainer.run_dir / "metrics.jsonl"
            cut_metric_log(self.path, trainer.step, trainer.log)
            with writing(self.path):
                self.file = open(self.path, "a")

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.step % self.every == 0 or trainer.step == trainer.max_steps:
            self._write(trainer.metrics.flush(trainer.step, trainer.epoch, trainer.lr))
        elif trainer.metrics.point:
            self._write({"step": trainer.step, **trainer.metrics.take_point()})

    def after_train(self) -> None:
        trainer = self.trainer
        try:
            if trainer.status in ("completed", "stopped") and trainer.metrics.window and trainer.metrics.latest_step != trainer.step:
                self._write(trainer.metrics.flush(trainer.step, trainer.epoch, trainer.lr))  # a stop between log lines
        finally:
            if self.file is not None:
                file, self.file = self.file, None
                try:
                    file.close()
                except OSError:  # a write that failed, and was reported, left data in its buffer
                    pass
            trainer.summary["final_metrics"] = {k: v for k, v in trainer.metrics.latest.items() if k != "time"}

    def _write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        undeclared = [k for k in record if k not in self.declared and k not in ("step", "epoch", "time")]
        if undeclared:
            loss_keys = self.trainer.metrics.loss_keys
            self.declared.update({k: MetricInfo(k, "loss" if k in loss_keys else "other") for k in undeclared})
            write_metric_schema(self.trainer.run_dir, self.declared.values())
        assert self.path is not None
        with writing(self.path):  # "No space left on device" without a path otherwise
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()


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
    logged step, with the epoch, learning rate, the keys declared ``progress=True`` and the
    throughput."""

    def __init__(self, bar: bool) -> None:
        self.use_bar = bar
        self.bar: Any = None
        self.task: Any = None
        self.shown: list[str] = []

    def before_train(self) -> None:
        trainer = self.trainer
        if not trainer.is_main:
            return
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
            trainer.log(f"step {trainer.step} epoch {record['epoch']} lr {record['lr']:.4g} {terms} {speed} clips/s")

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
