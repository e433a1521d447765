"""Registers the synthetic human-action world (entry point ``hcframe: synthetic``): the
``synthetic_humans`` dataset and the ``make-synthetic`` and ``show`` commands."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from hcframe.registry import Registry, hookimpl

from hcframe_video.synthetic.dataset import SyntheticHumans


@hookimpl
def hcframe_register(registry: Registry) -> None:
    registry.add("dataset", "synthetic_humans", SyntheticHumans)


@hookimpl
def hcframe_add_commands(cli: Any) -> None:
    cli.add_command(make_synthetic_command)
    cli.add_command(show_command)


def _error(message: str, code: int = 2) -> "click.exceptions.Exit":
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


@click.command("make-synthetic")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--videos", "num_train", type=int, default=1000, show_default=True, help="Training videos.")
@click.option("--test-videos", "num_test", type=int, default=None, help="Test videos [default: half of --videos].")
@click.option("--seed", type=int, default=0, show_default=True, help="World seed: same seed, same world, bit for bit.")
@click.option("--height", type=int, default=32, show_default=True, help="Frame height in pixels (even).")
@click.option("--width", type=int, default=32, show_default=True, help="Frame width in pixels (even).")
@click.option("--frames", "num_frames", type=int, default=16, show_default=True, help="Frames per video.")
@click.option("--shortcut-strength", type=float, default=1.0, show_default=True,
              help="0..1: how much backgrounds, clothing and distractors identify a video.")
@click.option("--backgrounds", "num_backgrounds", type=int, default=8, show_default=True, help="Shared background textures.")
@click.option("--distractors", "max_distractors", type=int, default=3, show_default=True, help="Distractors per video at full shortcut strength.")
@click.option("--jitter", type=int, default=1, show_default=True, help="Camera shake in pixels.")
@click.option("--fps", type=int, default=8, show_default=True, help="Frame rate written to the files.")
@click.option("--crf", type=int, default=10, show_default=True, help="H.264 constant rate factor (lower = better).")
@click.option("--workers", type=int, default=0, help="Generator processes [default: up to 4, one per CPU].")
def make_synthetic_command(out: str, num_train: int, num_test: int | None, seed: int, height: int, width: int,
                           num_frames: int, shortcut_strength: float, num_backgrounds: int, max_distractors: int,
                           jitter: int, fps: int, crf: int, workers: int) -> None:
    """Generate the synthetic human-action world into OUT (videos, part maps, split lists).

    Read it back with the dataset `synthetic_humans` (root = OUT and the same world arguments) or
    with `video_list` (list_file = OUT/train.txt).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from hcframe_video.synthetic.generate import WorldSpec, build_world
    from hcframe_video.synthetic.world import WorldConfig

    try:
        spec = WorldSpec(
            config=WorldConfig(height=height, width=width, num_frames=num_frames, shortcut_strength=shortcut_strength,
                               num_backgrounds=num_backgrounds, max_distractors=max_distractors, jitter=jitter),
            seed=seed, num_train=num_train, num_test=num_train // 2 if num_test is None else num_test, fps=fps, crf=crf,
        )  # fmt: skip
    except ValueError as exc:
        _error(str(exc))
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    total = spec.num_train + spec.num_test
    start = time.perf_counter()
    with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  transient=True) as progress:  # fmt: skip
        task = progress.add_task("videos", total=total)
        try:
            root = build_world(out, spec, workers=workers, progress=lambda done, _total: progress.update(task, completed=done))
        except (ValueError, FileNotFoundError) as exc:
            _error(str(exc))
    seconds = time.perf_counter() - start
    click.echo(
        f"{root}: {spec.num_train} train + {spec.num_test} test videos, {height}x{width}x{num_frames}, "
        f"12 actions, seed {seed} ({seconds:.1f} s, {1000 * seconds / max(total, 1):.1f} ms/video with {workers} workers)"
    )


@click.command("show")
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Output .png (or .gif, animated).")
@click.option("--clips", "num_clips", type=int, default=6, show_default=True, help="How many clips to show.")
@click.option("--subset", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Which subset of a world folder.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Recipe override (recipes only).")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="With a recipe: the student's weights (a checkpoint of the run) shown beside the ground truth and the teacher.")
def show_command(source: str, out: str, num_clips: int, subset: str, overrides: tuple[str, ...], checkpoint: str | None) -> None:
    """Write a contact sheet of a few clips with their part maps overlaid.

    SOURCE is a synthetic world folder (made by make-synthetic, or a synthetic_humans cache folder)
    or a recipe whose [data] dataset is shown as the engine loads it (with ground-truth part maps
    when the dataset has them). A recipe with a task that draws part maps (parsing_distill) and a
    .png output shows, side by side for each clip's middle frame, the ground truth, the teacher
    (cached or run online) and, with --checkpoint, the student's prediction.
    """
    from hcframe_video.synthetic.generate import WORLD_FILE
    from hcframe_video.synthetic.show import clips_from_dataset, clips_from_world, comparison_sheet, contact_sheet

    if num_clips < 1:
        _error(f"--clips must be >= 1, got {num_clips}")
    path = Path(source)
    try:
        if path.is_dir():
            if checkpoint is not None:
                _error("--checkpoint needs a recipe as SOURCE (it describes the model)")
            if not (path / WORLD_FILE).exists():
                _error(f"{path}: no {WORLD_FILE}; give a synthetic world folder or a recipe file")
            clips = clips_from_world(path, num_clips, subset)
        else:
            from hcframe.config import build_dataset
            from hcframe.recipe import RecipeError, load_recipe

            try:
                recipe = load_recipe(path, overrides)
                dataset = build_dataset(recipe)  # errors name the recipe's key
            except RecipeError as exc:
                _error(str(exc))
            if checkpoint is not None or (not out.lower().endswith(".gif") and _draws_part_maps(recipe)):
                written, count = comparison_sheet(recipe, out, num_clips, checkpoint)
                click.echo(f"wrote {written} ({count} clips)")
                return
            clips = clips_from_dataset(dataset, num_clips)
        written = contact_sheet(clips, out)
    except (ValueError, FileNotFoundError) as exc:
        _error(str(exc))
    click.echo(f"wrote {written} ({len(clips)} clips)")


def _draws_part_maps(recipe) -> bool:
    """Whether a task of ``recipe`` draws part maps (overrides PretextTask.visualise)."""
    import hcframe
    from hcframe.registry import get_registry

    registry = get_registry()
    for spec in recipe.tasks.values():
        factory = registry.get("task", spec.name).factory
        if isinstance(factory, type) and getattr(factory, "visualise", None) is not hcframe.PretextTask.visualise:
            return True
    return False
