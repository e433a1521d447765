"""``hcframe cache-teacher RECIPE``: fill a parsing task's teacher cache before training.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank caches its share of the videos (see
:func:`hcframe_parsing.cache.cache_teacher`); the ranks only coordinate (gloo, also between GPU
processes), each on its own device (``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
import sys

import click

from hcframe_video.partmaps import CODECS

__all__ = ["cache_teacher_command"]


def _fail(message: str, code: int):
    from hcframe.cli import fail

    fail(message, code)


def _pick_task(recipe, task_name: str | None):
    candidates = {n: s for n, s in recipe.tasks.items() if "teacher" in s.args}
    if task_name is not None:
        if task_name not in recipe.tasks:
            _fail(f"{recipe.source}: --task {task_name}: no such task; tasks: {', '.join(recipe.tasks)}", 2)
        if task_name not in candidates:
            _fail(f"{recipe.source}: --task {task_name}: that task has no teacher", 2)
        return task_name, candidates[task_name]
    if len(candidates) != 1:
        listed = ", ".join(candidates) or "none"
        _fail(f"{recipe.source}: pick the task with --task (tasks with a teacher: {listed})", 2)
    return next(iter(candidates.items()))


def _every_k(value: str, dataset, source: str) -> int:
    if value == "stride":
        stride = getattr(dataset, "stride", None)
        if not isinstance(stride, int) or stride < 1:
            _fail(f"{source}: --every-k stride: the dataset {type(dataset).__name__} has no clip stride; give a number", 2)
        return stride
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1:
        _fail(f"--every-k {value}: give an integer >= 1 or 'stride' (the dataset's clip stride)", 2)
    return k


def _device(device: str) -> str:
    """``auto``/``cuda`` -> this rank's GPU under torchrun (``cuda:LOCAL_RANK``); an explicit
    ``cuda:N`` is kept."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@click.command("cache-teacher")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.option("--task", "task_name", default=None, help="Task whose teacher to cache (default: the only task with a teacher).")
@click.option("--out", default=None, help="Cache folder (default: the task's `cache` setting).")
@click.option("--every-k", default="1", show_default=True, metavar="K|stride",
              help="Cache frames 0, K, 2K, ... and the last; 'stride': K = the dataset's clip stride.")
@click.option("--resolution", nargs=2, type=click.IntRange(min=1), default=(64, 64), show_default=True, help="Stored map size H W (whole frame).")
@click.option("--kind", type=click.Choice(list(CODECS)), default="topk", show_default=True, help="What is stored per pixel (a part-map codec).")
@click.option("--k", "k", default=4, show_default=True, type=click.IntRange(min=1), help="Classes kept per pixel (topk).")
@click.option("--batch-frames", "--batch-size", "batch_frames", default=32, show_default=True, type=click.IntRange(min=1),
              help="Frames per teacher forward, filled across videos.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Decoding processes per rank (0: decode in the rank itself).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda (under torchrun: cuda:LOCAL_RANK) or cuda:N.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (TOML syntax).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def cache_teacher_command(recipe_path, task_name, out, every_k, resolution, kind, k, batch_frames, workers, device, overrides, no_progress):
    """Run a task's teacher over every frame training can sample and store its soft targets.

    Under torchrun the videos are shared out over the ranks of every node."""
    from hcframe.engine import distributed as hd
    from hcframe.cli import Refused
    from hcframe.config import build_dataset, build_run
    from hcframe.recipe import RecipeError, load_recipe
    from hcframe_parsing.cache import cache_teacher
    from hcframe_video.partmaps import PartMapError

    try:
        recipe = load_recipe(recipe_path, overrides=list(overrides))
    except RecipeError as exc:  # a bad recipe: exit 2, one line, before any work
        raise Refused(str(exc)) from None
    name, spec = _pick_task(recipe, task_name)
    out = out or spec.args.get("cache") or ""
    if not out:
        _fail(f"{recipe.source}: tasks.{name}.cache is empty; give --out or set the cache folder in the recipe", 2)
    device = _device(device)
    try:
        # Every component checked (the teacher is built once, inside its task); the training data
        # without the targets this command is about to make.
        teacher = build_run(recipe, train_data=False, check_only=True).model.tasks[name].teacher
        dataset = build_dataset(recipe)
    except RecipeError as exc:
        raise Refused(str(exc)) from None
    if not teacher.online:
        _fail(f"{recipe.source}: tasks.{name}.teacher reads stored targets (it is not run on frames); it needs no cache", 2)
    step = _every_k(every_k, dataset, str(recipe.source))
    hd.init_from_environment(device.split(":")[0], backend="gloo")
    try:
        report = cache_teacher(
            teacher, dataset, out, every_k=step, resolution=tuple(resolution), kind=kind, k=k,
            batch_size=batch_frames, device=device, progress=not no_progress, workers=workers,
        )  # fmt: skip
    except PartMapError as exc:  # a cache made with other settings: refused before any frame ran
        _fail(str(exc), 2)
    except (ValueError, RuntimeError) as exc:  # a teacher that fails on the frames, say
        _fail(f"cache-teacher failed: {type(exc).__name__}: {exc}", 1)
    finally:
        hd.shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        ranks = f" by {report.world_size} ranks" if report.world_size > 1 else ""
        click.echo(
            f"teacher cache {report.root}: {len(report.written)} videos written ({report.frames} frames), "
            f"{len(report.skipped)} already cached, {len(report.failed)} failed; "
            f"{report.frames_per_second:.3g} frames/s{ranks}"
        )
        for video_id, reason in report.failed:
            click.echo(f"failed: {video_id}: {reason}", err=True)
    if report.failed:
        sys.exit(1)
