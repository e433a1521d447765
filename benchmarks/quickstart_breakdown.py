"""Where a synthetic-world recipe's CPU time goes: world generation, decoding, augmentation,
forward/backward, evaluation.

In one process with one torch thread, it

1. generates the recipe's synthetic world into a fresh folder with one worker (process CPU time of
   the whole build), and separately times rendering, H.264 encoding and part-map writing on the
   first ``--videos`` training videos;
2. trains the recipe's real :class:`~hcframe.engine.trainer.Trainer` for ``--steps`` steps with
   ``train.num_workers = 0`` (decoding in this process, so it can be timed), attributing CPU time
   to reading the batch (decode, part maps, collate), the transform (augmentation), the forward
   pass, the backward pass (the combiner) and the optimiser step;
3. runs the recipe's ``[[eval]]`` tables on the trained model, timing each.

Per-step figures are also multiplied by the recipe's ``train.steps`` (marked "x steps"): an
estimate of the full run's training cost, to compare with a measured run (``/usr/bin/time -v
hcframe run RECIPE``). In ``hcframe run`` decoding runs in a DataLoader worker
(``train.num_workers``), on the second core beside the training process.

Run: ``OMP_NUM_THREADS=1 python benchmarks/quickstart_breakdown.py examples/quickstart.toml
[--steps 20] [--videos 40] [--set key=value ...]``. Prints a table and, with ``--json PATH``,
writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

cpu = time.process_time


class Clock:
    """CPU seconds accumulated per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            started = cpu()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += cpu() - started

        return timed


def world_costs(recipe, videos: int) -> dict[str, float]:
    from hcframe_video.partmaps import LIP_LABELS, PartMapWriter
    from hcframe_video.synthetic.generate import PARTS_DIR, build_world, encode_h264
    from hcframe_video.synthetic.world import background_bank, render_video

    from hcframe_video.synthetic.dataset import SyntheticHumans

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "world"
        spec = SyntheticHumans._plan(**SyntheticHumans.arguments(**{**recipe.data.args, "root": str(root)})).spec
        started = cpu()
        build_world(root, spec, workers=1)
        total = cpu() - started
        n_videos = spec.num_train + spec.num_test
        bank = background_bank(spec.config, spec.seed)
        started = cpu()
        rendered = [render_video(spec.config, spec.seed, "train", i, bank) for i in range(videos)]
        render = (cpu() - started) / videos
        started = cpu()
        for v in rendered:
            encode_h264(v.frames, spec.fps, spec.crf)
        encode = (cpu() - started) / videos
        writer = PartMapWriter(Path(tmp) / "parts" / PARTS_DIR, "labels", LIP_LABELS, spec.parts_identity(),
                               resolution=(spec.config.height, spec.config.width))
        started = cpu()
        for i, v in enumerate(rendered):
            writer.write_video(f"v{i}.mp4", v.labels)
        parts = (cpu() - started) / videos
    return {"videos": n_videos, "build_s": total, "render_ms": 1000 * render, "encode_ms": 1000 * encode, "parts_ms": 1000 * parts}


def training_costs(recipe_path: str, overrides: list[str], steps: int, run_dir: Path) -> tuple[dict[str, float], int, int]:
    from hcframe.config import build_run
    from hcframe.engine.trainer import Trainer

    full = build_run(recipe_path, overrides)
    full_steps = full.recipe.train.steps
    # One torch thread, as `hcframe run` gives the training process beside one DataLoader worker on
    # 2 cores (with num_workers = 0 it would take both, and on a shared machine two OpenMP threads
    # spin-waiting for each other inflate CPU time several times over).
    built = build_run(recipe_path, [*overrides, f"train.steps={steps}", "train.num_workers=0", "train.cpu_threads=1", "eval=[]",
                                    f"train.checkpoint_every={10 * steps}"])
    clock = Clock()
    trainer = Trainer(built, run_dir, log=lambda m: None)
    # Attribute time to the real code path's pieces.
    dataset = built.dataset
    dataset.__class__ = type("Timed" + type(dataset).__name__, (type(dataset),),
                             {"__getitem__": clock.wrap("read: decode + part maps", type(dataset).__getitem__)})
    built.transform.forward = clock.wrap("augment (transform)", built.transform.forward)
    trainer._forward = clock.wrap("forward", trainer._forward)
    trainer._backward = clock.wrap("backward (combiner)", trainer._backward)
    trainer._optimiser_step = clock.wrap("optimiser step", trainer._optimiser_step)
    started = cpu()
    trainer.train()
    total = cpu() - started
    measured = dict(clock.seconds)
    measured["other (collate, logging, set-up)"] = total - sum(measured.values())
    return measured, steps, full_steps


def eval_costs(recipe_path: str, overrides: list[str], run_dir: Path) -> dict[str, float]:
    from hcframe.config import build_run
    from hcframe.evaluation import run_evaluations

    built = build_run(recipe_path, overrides, train_data=False)
    torch.set_num_threads(1)
    out: dict[str, float] = {}
    last = [cpu()]

    def log(message: str) -> None:  # one line per evaluation: "eval[i]: key: ..."
        if message.startswith("eval[") and "top1=" in message or "R@1=" in message:
            now = cpu()
            out[message.split(":")[1].strip()] = now - last[0]
            last[0] = now
        elif message.startswith("eval[") and message.count(":") == 1:
            last[0] = cpu()

    started = cpu()
    run_evaluations(built.recipe, built.model, run_dir, device=torch.device("cpu"), log=log, datasets=built.eval_datasets)
    out["all evaluations"] = cpu() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--skip-world", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from hcframe.recipe import load_recipe

    recipe = load_recipe(Path(args.recipe), tuple(args.overrides))
    rows: list[tuple[str, float, str]] = []
    figures: dict[str, object] = {"recipe": args.recipe, "overrides": args.overrides, "machine": platform.processor() or platform.machine()}
    if not args.skip_world:
        w = world_costs(recipe, args.videos)
        figures["world"] = w
        rows.append(("world: generate all (1 worker)", w["build_s"], f"{w['videos']} videos"))
        for key, what in (("render_ms", "render"), ("encode_ms", "H.264 encode"), ("parts_ms", "part maps")):
            rows.append((f"  {what} x {w['videos']} videos", w[key] * w["videos"] / 1000, f"{w[key]:.1f} ms a video"))
    with tempfile.TemporaryDirectory() as tmp:
        measured, steps, full_steps = training_costs(args.recipe, args.overrides, args.steps, Path(tmp) / "train")
        figures["train"] = {"steps": steps, "cpu_s": measured, "recipe_steps": full_steps}
        for name, seconds in measured.items():
            rows.append((f"train: {name} x {full_steps} steps", seconds / steps * full_steps, f"{1000 * seconds / steps:.0f} ms a step"))
        if not args.skip_eval:
            ev = eval_costs(args.recipe, args.overrides, Path(tmp) / "eval")
            figures["eval"] = ev
            for name, seconds in ev.items():
                rows.append((f"eval: {name}", seconds, ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'phase':{width}s}  CPU s   note")
    for name, seconds, note in rows:
        print(f"{name:{width}s}  {seconds:6.1f}  {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    sys.exit(main())
