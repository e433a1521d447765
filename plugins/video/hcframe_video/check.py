"""``hcframe check-videos``: decode every video of a dataset once and list the ones that fail."""

from __future__ import annotations

import os
from typing import Sequence

import av
import click

from hcframe_video.decode import END_TOLERANCE, VIDEO_EXTENSIONS, DecodeError, one_line_error, open_video, video_stream, probe_video
from hcframe_video.parallel import default_workers, map_with_progress

__all__ = ["check_videos_command", "scan_video", "videos_in_folder"]

def scan_video(path: str) -> tuple[str, str | None]:
    """Decode every frame of ``path`` (no colour conversion). Returns ``(path, None)`` for a good
    video, ``(path, reason)`` for a bad one: cannot open, no video stream, decoder error, no frames,
    fewer packets than the container states, or fewer decoded frames than the stream presents
    (both: truncated)."""
    try:
        if os.path.getsize(path) == 0:
            return path, "empty file (0 bytes)"
        info = probe_video(path)
        decoded = 0
        with open_video(path) as container:
            stream = video_stream(container)
            try:
                for _frame in container.decode(stream):
                    decoded += 1
            except av.FFmpegError as exc:
                return path, f"decoding failed at frame {decoded}: {one_line_error(exc)}"
        if decoded == 0:
            return path, "no frame could be decoded"
        if decoded < info.num_frames - END_TOLERANCE:
            return path, f"truncated: decoded {decoded} of the {info.num_frames} frames the stream holds"
        return path, None
    except DecodeError as exc:
        return path, str(exc)
    except OSError as exc:
        return path, f"cannot read: {one_line_error(exc)}"


def videos_in_folder(folder: str) -> list[str]:
    """Every video file (by extension) under ``folder``, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS and not name.startswith("."):
                found.append(os.path.join(dirpath, name))
    return sorted(found)


def videos_of_recipe(path: str) -> list[str]:
    """The video files of the dataset a recipe builds (its ``[data]`` table)."""
    from hcframe.config import build_dataset  # only needed for this form; keeps workers light
    from hcframe.recipe import load_recipe

    dataset = build_dataset(load_recipe(path))
    return [dataset.video_path(i) for i in range(len(dataset))]


def check_paths(paths: Sequence[str], workers: int) -> list[tuple[str, str]]:
    """Scan ``paths`` in parallel; the bad ones as ``(path, reason)``, sorted by path."""
    bad = [(p, r) for p, r in map_with_progress(scan_video, list(paths), workers, "checking videos") if r is not None]
    return sorted(bad)


@click.command("check-videos")
@click.argument("source", metavar="RECIPE_OR_FOLDER", type=click.Path(exists=True))
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None, help="Write the bad files here: '<path>\\t<reason>' per line.")
@click.option("--workers", type=int, default=None, help="Parallel decoder processes (default: the CPUs available).")
def check_videos_command(source: str, out: str | None, workers: int | None) -> None:
    """Decode every video of RECIPE_OR_FOLDER (a recipe .toml, or a folder scanned recursively)
    and list the files that fail, with the decoder's reason. Exits 1 if any is bad."""
    if os.path.isdir(source):
        paths = videos_in_folder(source)
        if not paths:
            raise click.ClickException(f"{source}: no video files ({', '.join(VIDEO_EXTENSIONS)}) under this folder")
    else:
        from hcframe.cli import Refused
        from hcframe.recipe import RecipeError

        try:
            paths = videos_of_recipe(source)
        except RecipeError as exc:  # a bad recipe, its dataset's files included: exit 2, one line
            raise Refused(str(exc)) from None
    workers = workers if workers is not None else default_workers()
    if workers < 1:
        raise click.BadParameter("must be >= 1", param_hint="--workers")
    bad = check_paths(paths, workers)
    if out:
        with open(out, "w") as handle:
            for path, reason in bad:
                handle.write(f"{path}\t{reason}\n")
    for path, reason in bad:
        click.echo(f"BAD {path}: {reason}")
    click.echo(f"checked {len(paths)} videos: {len(bad)} bad" + (f" (listed in {out})" if out else ""))
    if bad:
        click.get_current_context().exit(1)
