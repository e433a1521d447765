"""What ``torch.compile`` buys the quickstart model, and which parts of it to compile.

Builds the model of ``examples/quickstart.toml`` (R(2+1)D-18 of width 8, ``simclr`` and
``parsing_distill`` on their own branches after ``layer2``, the online probe) and trains it on
random batches of the quickstart's shape (32 clips x 2 views of 8x32x32, 20-class part maps) in
one of these ways, each in a fresh process with an empty inductor cache:

- ``eager``: no compilation (the baseline);
- ``stages``: the trunk and every branch compiled (what ``train.compile = true`` does);
- ``stages+heads``: also every task's head (projection MLP, parsing head, probe);
- ``whole``: ``MultiTaskModel.forward`` compiled as one function (trunk, branches, heads, losses;
  dynamo splits it where a task does something it cannot trace; the graph breaks are counted, and
  a frame dynamo fails on runs eagerly).

For each it prints the time of the first step (tracing and compiling included), the steady
time per step over the next steps (process CPU time and wall clock), their ratio to eager, and
the losses of every step (the compiled ways should match eager to rounding).

Run: ``python benchmarks/compile_paths.py [--steps 10] [--threads 1] [--modes eager,stages,...]
[--cache DIR]``; with ``--cache`` every way shares that inductor cache, so a second run measures
the steps of each way back to back without the compile times (on a shared machine the load
changes between ways that each compile for minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODES = ("eager", "stages", "stages+heads", "whole")
ROOT = Path(__file__).resolve().parents[1]


def quickstart_batches(steps: int, batch: int = 32, frames: int = 8, size: int = 32, parts: int = 20, classes: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        labels = torch.randint(parts, (batch, frames, size, size), generator=g)
        out.append({
            "views": [torch.randn(batch, 3, frames, size, size, generator=g) for _ in range(2)],
            "parts": [torch.nn.functional.one_hot(labels, parts).permute(0, 4, 1, 2, 3).to(torch.float16)],
            "label": torch.randint(classes, (batch,), generator=g),
        })
    return out


def run_mode(mode: str, steps: int, threads: int) -> dict:
    from hcframe.engine.trainer import build_model
    from hcframe.recipe import load_recipe

    torch.set_num_threads(threads)
    recipe = load_recipe(ROOT / "examples" / "quickstart.toml")
    torch.manual_seed(0)
    model = build_model(recipe)
    graph_breaks = None
    if mode in ("stages", "stages+heads"):
        model.trunk.compile()
        for branch in model.branches.values():
            branch.compile()
    if mode == "stages+heads":
        for task in model.tasks.values():
            task.head.compile()
    batches = quickstart_batches(steps + 1)
    if mode == "whole":
        # torch 2.13's dynamo fails (an internal AssertionError, not a graph break) inside the
        # attrs-generated __init__ of ContrastiveLogits; with suppress_errors that frame runs eagerly.
        torch._dynamo.config.suppress_errors = True
        explained = torch._dynamo.explain(model)(batches[0], 0, steps + 1)
        graph_breaks = explained.graph_break_count
        torch._dynamo.reset()
        model.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses, times = [], []
    for step, batch in enumerate(batches):
        wall, cpu = time.perf_counter(), time.process_time()
        total, _, _ = model(batch, step, steps + 1)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(total.detach()))
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    steady = times[1:]
    return {
        "mode": mode,
        "first_step_wall_s": times[0][0],
        "first_step_cpu_s": times[0][1],
        "step_wall_s": sum(t[0] for t in steady) / len(steady),
        "step_cpu_s": sum(t[1] for t in steady) / len(steady),
        "graph_breaks": graph_breaks,
        "losses": losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="steady steps timed after the first")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the quickstart uses 1 on 2 cores)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--cache", help="inductor cache folder shared by every way (a second run then times steps without compiling); default: an empty one each")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: run this mode, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_mode(args.one, args.steps, args.threads)))
        return
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} thread(s), {args.steps} steady steps, quickstart model, batch 32")
    results = {}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as empty:  # every way compiles from an empty cache
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": args.cache or empty, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(
                [sys.executable, __file__, "--one", mode, "--steps", str(args.steps), "--threads", str(args.threads)],
                env=env, capture_output=True, text=True, check=True,
            )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        base = results.get("eager")
        ratio = f"{r['step_cpu_s'] / base['step_cpu_s']:.2f}x eager" if base else "-"
        breaks = f", {r['graph_breaks']} graph breaks" if r["graph_breaks"] is not None else ""
        print(f"{mode:13s} first step {r['first_step_wall_s']:7.1f} s wall ({r['first_step_cpu_s']:.1f} s CPU); "
              f"then {r['step_cpu_s']:.3f} s CPU / {r['step_wall_s']:.3f} s wall per step ({ratio}){breaks}")
        if base and mode != "eager":
            diff = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(r["losses"], base["losses"]))
            print(f"{'':13s} losses vs eager: largest relative difference {diff:.2e} over {len(r['losses'])} steps")


if __name__ == "__main__":
    main()
