"""The teacher pass at dataset scale: throughput of ``hcframe cache-teacher`` (one process, and two
ranks under torchrun) and the agreement of its cheaper options with the full-size, every-frame cache.

Setup: a small synthetic world (``synthetic_humans``: humanoids on textured backgrounds, H.264,
ground-truth LIP part maps) at ``--height x --width``, and an SCHP teacher in the public LIP layout
with **random weights** (the public checkpoints cannot be downloaded here), saved as a checkpoint
file so the command runs exactly as a user runs it.

Measured:

1. frames/s of ``cache-teacher`` at the full input size (473x473), every frame, as the command
   reports it (teacher, decoding, encoding and writing; not the start-up and checkpoint loading):
   one process with ``--threads`` threads, then ``torchrun --nproc_per_node 2`` with
   ``threads / 2`` each, and whether the caches hold the same bytes (they do when every process
   runs the same kernels: same thread count; otherwise float rounding may flip rare labels).
2. agreement (argmax, over every pixel of every frame at the cache resolution) with that
   full-size, every-frame cache of
   - ``--every-k K`` (the clip stride): each frame read as training reads it (the nearest stored
     frame), K from ``--every-k``;
   - smaller teacher input sizes (``--sizes``).
   With random weights the teacher's part maps carry no meaning, and its outputs may vary more or
   less with the input than a trained parser's; the figures show the mechanics, not a trained
   SCHP's agreement. The share of the most frequent label is printed as the trivial baseline.
3. the same every-k read against the world's ground-truth part maps (real motion of the world's
   figures, a trained-parser-like target): what skipping frames costs when targets are right.

Run: ``python benchmarks/teacher_cache_scale.py [--videos 4] [--frames 24] [--height 240]
[--width 320] [--every-k 2] [--sizes 321 241] [--threads 2] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hcframe
from hcframe_parsing.cache import cached_frame_indices
from hcframe_parsing.schp import SCHP_VARIANTS
from hcframe_video.partmaps import PartMapStore

sys.path.insert(0, str(Path(__file__).parent))
from schp_teacher_conformance import random_state  # noqa: E402  (the same random LIP-layout weights)


def world_table(root: Path, args: argparse.Namespace) -> str:
    return (
        f'name = "synthetic_humans"\nroot = "{root}"\nnum_train = {args.videos}\nnum_test = 1\n'
        f"num_frames = {args.frames}\nheight = {args.height}\nwidth = {args.width}\nstride = {args.every_k}\n"
        f"clip_len = 4\nworkers = 1\n"
    )


def write_recipe(path: Path, world: Path, checkpoint: Path, args: argparse.Namespace) -> Path:
    path.write_text(
        f"[data]\n{world_table(world, args)}\n[transform]\nname = \"normalize\"\n\n[model.encoder]\nname = \"r3d_18\"\n\n"
        f'[tasks.parsing]\nname = "parsing_distill"\ncache = ""\n\n[tasks.parsing.teacher]\nname = "schp"\n'
        f'checkpoint = "{checkpoint}"\ndataset = "lip"\n'
    )
    return path


def cache(recipe: Path, out: Path, args: argparse.Namespace, *extra: str, ranks: int = 1, threads: int = 1) -> float:
    """Run ``hcframe cache-teacher`` and return the frames/s it reports (wall clock; on a shared
    machine also see the CPU seconds of the whole command, start-up and checkpoint loading included)."""
    base = ["-m", "hcframe", "cache-teacher", str(recipe), "--out", str(out), "--kind", "labels",
            "--resolution", str(args.res[0]), str(args.res[1]), "--batch-frames", str(args.batch_frames),
            "--device", args.device, "--no-progress", *extra]  # fmt: skip
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([*launcher, *base], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    match = re.search(r"([0-9.]+) frames/s", proc.stdout)
    print(f"  {proc.stdout.strip()}  [{time.perf_counter() - started:.0f} s wall, {cpu_s:.0f} CPU s with start-up; "
          f"load average {os.getloadavg()[0]:.1f}]")
    return float(match.group(1)) if match else float("nan")


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in (a / "videos").iterdir())
    return names == sorted(p.name for p in (b / "videos").iterdir()) and all(
        (a / "videos" / n).read_bytes() == (b / "videos" / n).read_bytes() for n in names
    )


def labels_of(store: PartMapStore, video_id: str, frames: list[int]) -> np.ndarray:
    return store.read_raw(video_id, frames)  # kind labels: uint8 [T, h, w]; missing frames -> nearest stored


def agreement(reference: PartMapStore, other: PartMapStore, video_ids: list[str], frames_of: dict[str, list[int]]) -> float:
    same = total = 0
    for v in video_ids:
        a, b = labels_of(reference, v, frames_of[v]), labels_of(other, v, frames_of[v])
        same += int((a == b).sum())
        total += a.size
    return same / total


def majority_share(store: PartMapStore, video_ids: list[str], frames_of: dict[str, list[int]]) -> float:
    counts = np.zeros(256, dtype=np.int64)
    for v in video_ids:
        counts += np.bincount(labels_of(store, v, frames_of[v]).ravel(), minlength=256)
    return counts.max() / counts.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--every-k", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="*", default=[321, 241])
    parser.add_argument("--res", type=int, nargs=2, default=(60, 80), help="cache resolution H W")
    parser.add_argument("--batch-frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ranks", action="store_true", help="skip the two-rank throughput run")
    parser.add_argument("--throughput-only", action="store_true", help="only part 1")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="teacher-cache-scale-"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"device {args.device}, load average {os.getloadavg()[0]:.1f}; work dir {work}")

    world = work / "world"
    dataset = hcframe.get_registry().create(
        "dataset", "synthetic_humans", root=str(world), num_train=args.videos, num_test=1, num_frames=args.frames,
        height=args.height, width=args.width, stride=args.every_k, clip_len=4, workers=1,
    )  # fmt: skip
    video_ids = [dataset.video_id(i) for i in range(len(dataset))]
    every = {v: list(range(args.frames)) for v in video_ids}
    variant = SCHP_VARIANTS["lip"]
    checkpoint = work / "random-lip.pth"
    state = random_state(variant.num_classes, args.seed)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
    recipe = write_recipe(work / "recipe.toml", world, checkpoint, args)
    print(f"{args.videos} videos x {args.frames} frames of {args.height}x{args.width}; random LIP-layout SCHP (seed {args.seed}); "
          f"cache kind labels at {args.res[0]}x{args.res[1]}, --batch-frames {args.batch_frames}")

    print(f"1. full size {variant.input_size[0]}x{variant.input_size[1]}, every frame, one process, {args.threads} threads:")
    one = cache(recipe, work / "full", args, threads=args.threads)
    full = PartMapStore(work / "full")
    if not args.skip_ranks:
        print(f"   the same, torchrun 2 ranks x {max(1, args.threads // 2)} threads:")
        two = cache(recipe, work / "full2", args, ranks=2, threads=max(1, args.threads // 2))
        print(f"   frames/s: 1 process {one:.3g}, 2 ranks {two:.3g} (ratio {two / one:.2f}); "
              f"same bytes as one process with {args.threads} threads: {same_files(work / 'full', work / 'full2')}")
        if args.threads // 2 != args.threads:
            print(f"   one process with the ranks' {max(1, args.threads // 2)} thread(s):")
            cache(recipe, work / "full1", args, threads=max(1, args.threads // 2))
            print(f"   same bytes as the 2 ranks: {same_files(work / 'full1', work / 'full2')}; label agreement of "
                  f"{args.threads} vs {max(1, args.threads // 2)} thread(s): "
                  f"{agreement(full, PartMapStore(work / 'full1'), video_ids, every):.5%}")
    print(f"   majority label share (trivial agreement baseline): {majority_share(full, video_ids, every):.2%}")
    if args.throughput_only:
        return

    print(f"2a. --every-k {args.every_k} (full size), read as training reads it (nearest stored frame):")
    fps = cache(recipe, work / f"every{args.every_k}", args, "--every-k", str(args.every_k), threads=args.threads)
    strided = PartMapStore(work / f"every{args.every_k}")
    held = sum(len(cached_frame_indices(args.frames, args.every_k)) for _ in video_ids)
    print(f"   stores {held} of {args.frames * len(video_ids)} frames; argmax agreement with every frame: "
          f"{agreement(full, strided, video_ids, every):.2%} ({fps:.2f} frames/s stored)")
    for size in args.sizes:
        print(f"2b. teacher input {size}x{size}, every frame:")
        fps = cache(recipe, work / f"size{size}", args, "--set", f"tasks.parsing.teacher.input_size=[{size}, {size}]", threads=args.threads)
        print(f"   argmax agreement with {variant.input_size[0]}x{variant.input_size[1]}: "
              f"{agreement(full, PartMapStore(work / f'size{size}'), video_ids, every):.2%} ({fps:.2f} frames/s)")

    print(f"3. --every-k {args.every_k} on the world's ground-truth part maps (full frame resolution):")
    truth = dataset.ground_truth_parts()
    for k in sorted({args.every_k, 2, 4}):
        same = total = 0
        for v in video_ids:
            exact = truth.read_raw(v, every[v])
            held = cached_frame_indices(args.frames, k)
            nearest = [held[int(np.argmin([abs(h - f) + (h > f) * 1e-3 for h in held]))] for f in every[v]]
            approx = truth.read_raw(v, nearest)
            same += int((exact == approx).sum())
            total += exact.size
        print(f"   every {k}: argmax agreement {same / total:.2%}")


if __name__ == "__main__":
    main()
