"""``hcframe cache-teacher RECIPE``: fill a parsing task's teacher cache before training."""

from __future__ import annotations

import sys

import click

__all__ = ["cache_teacher_command"]


def _pick_task(recipe, task_name: str | None):
    candidates = {n: s for n, s in recipe.tasks.items() if "teacher" in s.args}
    if task_name is not None:
        if task_name not in recipe.tasks:
            raise click.UsageError(f"{recipe.source}: no task {task_name!r}; tasks: {', '.join(recipe.tasks)}")
        if task_name not in candidates:
            raise click.UsageError(f"{recipe.source}: task {task_name!r} has no teacher")
        return task_name, candidates[task_name]
    if len(candidates) != 1:
        listed = ", ".join(candidates) or "none"
        raise click.UsageError(f"{recipe.source}: pick the task with --task (tasks with a teacher: {listed})")
    return next(iter(candidates.items()))


@click.command("cache-teacher")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.option("--task", "task_name", default=None, help="Task whose teacher to cache (default: the only task with a teacher).")
@click.option("--out", default=None, help="Cache folder (default: the task's `cache` setting).")
@click.option("--every-k", default=1, show_default=True, type=click.IntRange(min=1), help="Cache frames 0, k, 2k, ...")
@click.option("--resolution", nargs=2, type=click.IntRange(min=1), default=(64, 64), show_default=True, help="Stored map size H W (whole frame).")
@click.option("--kind", type=click.Choice(["topk", "logits", "labels"]), default="topk", show_default=True)
@click.option("--k", "k", default=4, show_default=True, type=click.IntRange(min=1), help="Classes kept per pixel (topk).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Frames per teacher forward.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (TOML syntax).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def cache_teacher_command(recipe_path, task_name, out, every_k, resolution, kind, k, batch_size, device, overrides, no_progress):
    """Run a task's teacher over every frame training can sample and store its soft targets."""
    import torch

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
        raise click.UsageError(f"{recipe.source}: tasks.{name}.cache is empty; give --out or set the cache folder in the recipe")
    teacher_spec = spec.args["teacher"]
    if getattr(teacher_spec, "name", None) == "synthetic_ground_truth":
        raise click.UsageError(f"{recipe.source}: tasks.{name}.teacher is the synthetic ground truth; it needs no cache")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        # Every component checked (the teacher is built once, inside its task); the training data
        # without the targets this command is about to make.
        teacher = build_run(recipe, train_data=False, check_only=True).model.tasks[name].teacher
        dataset = build_dataset(recipe)
    except RecipeError as exc:
        raise Refused(str(exc)) from None
    try:
        report = cache_teacher(
            teacher, dataset, out, every_k=every_k, resolution=tuple(resolution), kind=kind, k=k,
            batch_size=batch_size, device=device, progress=not no_progress,
        )
    except (PartMapError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"teacher cache {report.root}: {len(report.written)} videos written ({report.frames} frames), "
        f"{len(report.skipped)} already cached, {len(report.failed)} failed"
    )
    for video_id, reason in report.failed:
        click.echo(f"failed: {video_id}: {reason}", err=True)
    if report.failed:
        sys.exit(1)
