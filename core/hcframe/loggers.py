"""The loggers the core provides (registry kind ``logger``, recipe tables ``[[loggers]]``).

=============== ================================================ ===============================
name            what it writes                                   needs
=============== ================================================ ===============================
``jsonl``       ``<run>/metrics.jsonl``: one JSON object a line   nothing (always on)
``csv``         ``<run>/metrics.csv``: one row a logged step      nothing
``tensorboard`` ``<run>/tensorboard/`` event files: every logged  ``pip install 'hcframe[tensorboard]'``
                number as a scalar, and image grids
``wandb``       a Weights & Biases run (offline by default:       ``pip install 'hcframe[wandb]'``
                ``<run>/wandb/offline-run-*``), numbers and images
=============== ================================================ ===============================

Every logger gets the lines of ``metrics.jsonl`` as they are written (the step, ``epoch``,
``lr``, the loss terms and metrics, ``grad_cos/*``, ``clips_per_s``, ``data_wait_s``, ``time``),
on the main process only. TensorBoard and wandb are imported when a run starts, never when hcframe
is imported; a recipe naming one that is not installed is refused before any work.

Resumed runs continue the same curves, one value per step: a resume restarts at its checkpoint's
step ``S`` and replays the steps after it, so what the interrupted run logged after ``S`` is dropped
from ``metrics.jsonl`` and ``metrics.csv``, and hidden by TensorBoard (``purge_step = S + 1``). A
W&B run is resumed under the id kept in ``<run>/wandb/hcframe-run.json``; steps it already holds
are not sent again (W&B keeps a run's steps increasing; a resume replays them bit for bit).
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable, Literal, Mapping, Sequence

from hcframe.components import Logger
from hcframe.files import atomic_path, write_json_atomic, write_text_atomic, writing
from hcframe.metrics import MetricInfo

__all__ = ["CsvLogger", "JsonlLogger", "TensorBoardLogger", "WandbLogger", "cut_metric_log"]

# Keys of a metrics line that are bookkeeping, not curves.
_NOT_SCALARS = frozenset({"time"})


def _step_of_json_line(line: str) -> int | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None  # a line cut short by a killed run
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def cut_metric_log(path: Path, step: int) -> int:
    """Keep the lines of ``metrics.jsonl`` at ``path`` up to ``step`` (where a run continues from)
    and drop the rest, with a line a killed run left half-written; returns how many lines were
    dropped. The file is rewritten atomically, and only when something is dropped; nothing to do
    when it is missing."""
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if (s := _step_of_json_line(line)) is not None and s <= step]
    if len(kept) < len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


class JsonlLogger(Logger):
    """``metrics.jsonl`` in the run directory: one JSON object per line, ``{"step": N, ...}``;
    on a resume the lines after the resumed step are dropped first. Always on."""

    FILE = "metrics.jsonl"

    def __init__(self, log: Callable[[str], None] = lambda m: None) -> None:
        self.file: IO[str] | None = None
        self.path: Path | None = None
        self.log = log  # where the cut on a resume is reported

    def start(self, run_dir: Path, step: int, metrics: Sequence[MetricInfo], config: Mapping[str, Any]) -> None:
        self.path = Path(run_dir) / self.FILE
        dropped = cut_metric_log(self.path, step)
        if dropped:
            self.log(f"{self.path}: dropped {dropped} lines after step {step} (those steps are logged again)")
        with writing(self.path):
            self.file = open(self.path, "a")

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        if self.file is None or self.path is None:
            return
        with writing(self.path):  # "No space left on device" without a path otherwise
            self.file.write(json.dumps({"step": step, **values}) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            try:
                file.close()
            except OSError:  # a write that failed, and was reported, left data in its buffer
                pass


class CsvLogger(Logger):
    """``metrics.csv`` (or ``file``, relative to the run directory): a header, then one row per
    logged line, ``step`` first; a cell is empty where that line has no value. A key that was not
    declared when the run started adds a column (the file is rewritten with the wider header).
    On a resume the rows after the resumed step are dropped first."""

    def __init__(self, file: str = "metrics.csv") -> None:
        if not file:
            raise ValueError("file: give a file name, e.g. \"metrics.csv\"")
        self.file_name = file
        self.path: Path | None = None
        self.columns: list[str] = []
        self.handle: IO[str] | None = None
        self.writer: Any = None

    def start(self, run_dir: Path, step: int, metrics: Sequence[MetricInfo], config: Mapping[str, Any]) -> None:
        self.path = Path(run_dir) / self.file_name
        rows: list[dict[str, str]] = []
        columns = ["step", "epoch"]
        if self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                columns += [c for c in reader.fieldnames or [] if c not in columns]
                rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= step]
        columns += [m.name for m in metrics if m.name not in columns] + ([] if "time" in columns else ["time"])
        self._rewrite(columns, rows)

    def _rewrite(self, columns: list[str], rows: list[Mapping[str, Any]]) -> None:
        assert self.path is not None
        if self.handle is not None:
            self.handle.close()
        self.columns = columns
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(rows)
        self.handle = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=columns, restval="")

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        row = {"step": step, **values}
        new = [k for k in row if k not in self.columns]
        if new:  # an undeclared key: widen the header, keep every row
            self.handle.close()
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self._rewrite(self.columns + new, rows)
        self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
            self.writer = None


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``<run>/tensorboard`` (or ``log_dir``, relative to the run
    directory), through ``torch.utils.tensorboard``: every number of every logged line as a scalar
    under its ``metrics.jsonl`` key (``loss``, ``<task>/<term>``, ``lr``, ``clips_per_s``,
    ``data_wait_s``, ``grad_cos/<a>~<b>``, ...), stamped with the line's wall-clock time; every
    ``image_every`` steps the tasks' images (frames with part maps); the resolved recipe as text.
    Open with ``tensorboard --logdir <run>/tensorboard``."""

    requires = ("tensorboard", "tensorboard")

    def __init__(self, image_every: int = 0, log_dir: str = "tensorboard") -> None:
        if image_every < 0:
            raise ValueError(f"image_every: must be >= 0 (0: no images), got {image_every}")
        self.image_every = image_every
        self.log_dir = log_dir
        self.writer: Any = None

    def start(self, run_dir: Path, step: int, metrics: Sequence[MetricInfo], config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Events of steps after the resumed one (logged before the run stopped) are hidden: the
        # resumed run logs those steps again. Step `step` itself was logged before its checkpoint.
        self.writer = SummaryWriter(str(Path(run_dir) / self.log_dir), purge_step=step + 1)
        if step == 0:
            text = json.dumps(dict(config), indent=2, default=str)
            self.writer.add_text("recipe", "".join(f"    {line}\n" for line in text.splitlines()), 0)

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        walltime = values.get("time")
        for key, value in values.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(key, value, step, walltime=walltime)

    def log_images(self, step: int, images: Mapping[str, Any]) -> None:
        for name, image in images.items():
            self.writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(Logger):
    """A Weights & Biases run. ``mode``: ``"offline"`` (the default, unless ``WANDB_MODE`` says
    otherwise: no network, no account; upload later with ``wandb sync <run>/wandb/offline-run-*``),
    ``"online"`` or ``"disabled"``. The W&B run holds the
    resolved recipe as its config, and gets every number of every logged line at its step, and
    every ``image_every`` steps the tasks' images. ``run_name`` defaults to the run directory's
    name. Files go to ``<run>/wandb``."""

    requires = ("wandb", "wandb")
    STATE_FILE = "hcframe-run.json"  # in <run>/wandb: the run id and the last step sent

    def __init__(
        self,
        project: str = "hcframe",
        entity: str = "",
        run_name: str = "",
        group: str = "",
        tags: list[str] = [],  # noqa: B006 - never mutated; shown in recipes
        mode: Literal["", "offline", "online", "disabled"] = "",
        image_every: int = 0,
    ) -> None:
        if image_every < 0:
            raise ValueError(f"image_every: must be >= 0 (0: no images), got {image_every}")
        self.project, self.entity, self.run_name, self.group = project, entity, run_name, group
        self.tags = list(tags)
        self.mode = mode
        self.image_every = image_every
        self.run: Any = None
        self.state_path: Path | None = None
        self.sent_before = 0  # the last step an earlier process of this run sent
        self.last_step = 0

    def start(self, run_dir: Path, step: int, metrics: Sequence[MetricInfo], config: Mapping[str, Any]) -> None:
        import wandb

        run_dir = Path(run_dir)
        self.state_path = run_dir / "wandb" / self.STATE_FILE
        state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        run_id = state.get("id") or secrets.token_hex(4)
        self.sent_before = self.last_step = int(state.get("last_step", 0))
        self.run = wandb.init(
            project=self.project,
            entity=self.entity or None,
            name=self.run_name or run_dir.resolve().name,
            group=self.group or None,
            tags=self.tags or None,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            mode=self.mode or os.environ.get("WANDB_MODE") or "offline",
            config=dict(config),
            # hcframe's own output stays as it is (no console capture).
            settings=wandb.Settings(console="off", silent=True),
        )
        self._save_state(run_id)

    def _save_state(self, run_id: str) -> None:
        assert self.state_path is not None
        write_json_atomic(self.state_path, {"id": run_id, "last_step": self.last_step})

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        if step <= self.sent_before:  # the run already has this step from before the resume
            return
        numbers = {
            k: v for k, v in values.items() if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.run.log(numbers, step=step)
        if step > self.last_step:
            self.last_step = step
            self._save_state(self.run.id)

    def log_images(self, step: int, images: Mapping[str, Any]) -> None:
        if step <= self.sent_before:
            return
        import wandb

        self.run.log({name: wandb.Image(image) for name, image in images.items()}, step=step)

    def close(self) -> None:
        if self.run is not None:
            import wandb

            self.run.finish()
            self.run = None
            # A fresh W&B service for the next run of this process: one that resumes this run's id
            # after a failure (a notebook, a test) is otherwise written nowhere (wandb 0.31).
            if wandb.run is None:
                wandb.teardown()
