"""Clips/s of hcframe's training step against a hand-written PyTorch loop, in one run.

Both sides train the same model (the backbones plugin's R(2+1)D-18 encoder and the same heads),
on the same batch (synthetic tensors already on the device, already augmented: no data loader,
no transform on either side), with the same loss functions and metrics (the plugins' own), the
same fused optimiser (SGD with momentum, ``fused=True``, weight decay on weights but not on
biases and norm scales, as hcframe groups them) and learning-rate schedule (cosine), and both
read their losses and metrics back every ``--log-every`` steps only. Both start from the same
weights. So the ratio measures what the framework costs per step:
:class:`hcframe.engine.trainer.Trainer`'s ``run_step`` (the multi-task model, the combiner,
device-side metric logging, the non-finite step check and skip) and its hooks (checkpoint
bookkeeping, ``metrics.jsonl``, progress, non-finite accounting), against the few lines a
researcher would write.

Variants (each a hand-written loop and hcframe's step):

- ``supervised``: one view, cross-entropy on labels (the shape of the anchor loop);
- ``simclr``: two views, NT-Xent with a projection MLP (its global batch norm);
- ``simclr+distill``: ``simclr`` and ``parsing_distill`` with a cached teacher (its soft part maps
  come with the batch, as workers read them from a teacher cache), both on the encoder's output
  (``split = "none"``); its time is also reported relative to ``simclr`` alone.

On CUDA every variant runs in bf16 with channels_last and ``torch.compile`` (``--no-compile`` to
leave compile out); on CPU in fp32, eagerly. Timing: after warm-up steps, ``--repeats`` rounds;
in every round each variant runs ``--steps`` steps of one side then of the other (which goes
first alternates), timed to the end of the device's work. Reported: median clips/s per side, and
the median over rounds of the per-round ratio hcframe / hand-written (the two blocks of a ratio
ran back to back, so load on a shared machine mostly cancels out of it).

On CPU the process's CPU time is what is compared (one thread by default), since on a shared
machine wall-clock time mostly measures the neighbours; the ratio of wall-clock to CPU time over
all blocks is printed as a measure of how loaded the machine was.

The framework's own cost per step is a fixed amount of host work; to see it, time a model so
small that it shows: ``--width 2 --batch 4 --frames 4 --size 32 --steps 40 --repeats 25 --lr 1e-4``
(the low rate keeps batch norm over 4 clips of 32x32 from diverging).

Targets (issue 10): hcframe / hand-written >= 0.97 on CPU, >= 1.00 on a GPU; ``simclr+distill``
at most 1.05x the time per step of ``simclr``.

Run: ``python benchmarks/train_step.py`` (CPU defaults: width 16, batch 8, 8 frames of 64x64,
9 rounds of 3 steps; CUDA defaults: the published width 64, batch 32, 16 frames of 112x112, 5
rounds of 20 steps).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcframe.config import build_run
from hcframe.engine.trainer import Trainer
from hcframe.heads import LinearHead
from hcframe.recipe import parse_recipe
from hcframe.registry import get_registry
from hcframe_contrastive.heads import ProjectionMLP
from hcframe_contrastive.losses import nt_xent_logits
from hcframe_parsing.distill import ParsingHead, align_targets, distill_loss, parsing_metrics

VARIANTS = ("supervised", "simclr", "simclr+distill")
NUM_CLASSES = 12
PART_CLASSES = 20  # LIP's labels
TEMPERATURE = 0.1
PROJECTION = {"hidden_dim": 512, "out_dim": 128, "num_layers": 2}
PARSING_HIDDEN = 128


# --- the batch -------------------------------------------------------------------------------------
def make_batch(views: int, batch: int, frames: int, size: int, device: torch.device, channels_last: bool, parts: bool) -> dict[str, Any]:
    """What a training step receives after the data workers and the batch transform: normalised
    float views, labels, and (for distillation) per-frame part probabilities at 1/4 resolution."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    out: dict[str, Any] = {
        "views": [torch.randn(batch, 3, frames, size, size, generator=g).to(device).contiguous(memory_format=fmt) for _ in range(views)],
        "label": torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device),
    }
    if parts:
        logits = torch.randn(batch, PART_CLASSES, frames, size // 4, size // 4, generator=g)
        out["parts"] = [torch.softmax(2 * logits, dim=1).to(device)]
    return out


# --- the hand-written loop ------------------------------------------------------------------------
class HandWritten:
    """The loop a researcher writes: model, loss, ``backward``, fused optimiser, scheduler; the
    loss and metrics summed on the device and read every ``log_every`` steps."""

    def __init__(self, variant: str, encoder: nn.Module, args: argparse.Namespace, device: torch.device) -> None:
        self.variant = variant
        self.encoder = encoder.to(device)
        dim = encoder.feature_dim
        if variant == "supervised":
            self.heads = nn.ModuleDict({"cls": LinearHead(dim, NUM_CLASSES)})
        else:
            self.heads = nn.ModuleDict({"proj": ProjectionMLP(dim, global_batch_norm=True, **PROJECTION)})
            if variant == "simclr+distill":
                self.heads["parsing"] = ParsingHead(dim, PARSING_HIDDEN, PART_CLASSES)
        self.heads.to(device)
        if args.channels_last:
            self.encoder.to(memory_format=torch.channels_last_3d)
        if args.compile:
            self.encoder.compile()
        params = list(self.encoder.parameters()) + list(self.heads.parameters())
        # Weight decay on the weights, not on biases and norm scales (the usual practice, and
        # hcframe's): both sides make the same updates.
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": 1e-4},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        self.optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, fused=True)
        total = 10**6
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
        self.log_every = args.log_every
        self.step_count = 0
        self.running: Tensor | None = None
        self.logged: list[float] = []

    def copy_weights(self, model: nn.Module) -> None:
        """Start from the weights of hcframe's model (``split = "none"``: its trunk is the whole
        encoder), so that both sides compute on the same numbers."""
        self.encoder.load_state_dict(model.trunk.state_dict())
        owners = {"cls": "sup", "proj": "simclr", "parsing": "parsing"}
        for name, head in self.heads.items():
            head.load_state_dict(model.tasks[owners[name]].head.state_dict())

    def losses(self, batch: dict[str, Any]) -> list[Tensor]:
        """[total loss, then the numbers it logs]."""
        views = batch["views"]
        if self.variant == "supervised":
            out = self.encoder(views[0])
            logits = self.heads["cls"](out.pooled)
            loss = F.cross_entropy(logits, batch["label"])
            with torch.no_grad():
                acc = (logits.argmax(1) == batch["label"]).float().mean()
            return [loss, acc]
        size = views[0].shape[0]
        out = self.encoder(torch.cat(views, dim=0))
        embeddings = self.heads["proj"](out.pooled)
        sims = nt_xent_logits(embeddings[:size], embeddings[size:], TEMPERATURE)
        nce = sims.loss()
        numbers = [nce, *sims.metrics().values()]
        if self.variant == "simclr":
            return [nce, *numbers]
        part_logits = self.heads["parsing"](out.feature_map[:size])
        target, valid = align_targets(batch["parts"][0], tuple(part_logits.shape[-3:]))
        distill = distill_loss(part_logits, target, valid)
        metrics = parsing_metrics(part_logits, target, valid)
        return [nce + distill, *numbers, distill, *metrics.values()]

    def step(self, batch: dict[str, Any]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            values = self.losses(batch)
        values[0].backward()
        self.optimizer.step()
        self.scheduler.step()
        numbers = torch.stack([v.detach().float() for v in values])
        self.running = numbers if self.running is None else self.running + numbers
        self.step_count += 1
        if self.step_count % self.log_every == 0:
            self.logged = (self.running / self.log_every).tolist()  # the one read of the device
            self.running = None


# --- hcframe's step -------------------------------------------------------------------------------
class DeviceBatchTrainer(Trainer):
    """hcframe's :class:`Trainer` whose batches are one device batch (no data loader, no transform):
    everything else, ``run_step`` and the built-in hooks, is hcframe's own. The model is what
    :func:`hcframe.config.build_run` builds (``train_data=False``: the batch is given)."""

    def __init__(self, recipe: Any, run_dir: Path, batch: dict[str, Any]) -> None:
        super().__init__(build_run(recipe, train_data=False), run_dir, log=lambda message: None)
        self.fixed_batch = batch

    def _take_model_and_data(self) -> None:
        self.model = self.built.model
        self.combiner = self.model.combiner
        self.dataset = range(10**9)  # the bad-video accounting asks for its length

    def _build_loader(self) -> None:
        self.batches_per_epoch = 10**9

    def _batch_stream(self) -> Iterator[dict[str, Any]]:
        while True:
            self.micro += 1
            yield self.fixed_batch

    def start(self) -> None:
        self.setup()
        self.register_hooks(self.build_hooks())
        self.status = "running"
        self.before_train()

    def one_step(self, batch: dict[str, Any]) -> None:
        self.before_step()
        self.run_step()
        self.step += 1
        self.after_step()


def hcframe_recipe(variant: str, args: argparse.Namespace) -> Any:
    tasks: dict[str, Any] = {}
    if variant == "supervised":
        tasks["sup"] = {"name": "supervised", "num_classes": NUM_CLASSES}
    else:
        tasks["simclr"] = {"name": "simclr", "temperature": TEMPERATURE, **PROJECTION}
        if variant == "simclr+distill":
            tasks["parsing"] = {"name": "parsing_distill", "teacher": {"name": "synthetic_ground_truth"}, "hidden_dim": PARSING_HIDDEN}
    raw = {
        "data": {"name": "synthetic_humans"},  # never built: the batch is given
        "transform": {"name": "normalize"},
        "model": {"split": "none", "encoder": {"name": "r2plus1d_18", "width": args.width}},
        "tasks": tasks,
        "train": {
            "steps": 10**6, "batch_size": args.batch, "log_every": args.log_every, "checkpoint_every": 10**6,
            "device": args.device, "precision": args.precision, "channels_last": "on" if args.channels_last else "off",
            "compile": args.compile, "cpu_threads": torch.get_num_threads(),
        },
        "optim": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"name": "cosine"},
    }
    return parse_recipe(raw, f"<train_step {variant}>")


# --- timing ---------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[dict[str, Any]], None], batch: dict[str, Any], steps: int, device: torch.device) -> tuple[float, float]:
    """(wall-clock seconds, this process's CPU seconds) of ``steps`` steps, to the end of the
    device's work."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(batch)
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--width", type=int, help="R(2+1)D-18 base width (default: 64 on CUDA, 16 on CPU)")
    parser.add_argument("--batch", type=int, help="clips per step (default: 32 on CUDA, 8 on CPU)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: 16 on CUDA, 8 on CPU)")
    parser.add_argument("--size", type=int, help="crop side (default: 112 on CUDA, 64 on CPU)")
    parser.add_argument("--steps", type=int, help="steps per timed block (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default: 5 on CUDA, 9 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 15 on CUDA, 2 on CPU)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--no-compile", action="store_true", help="CUDA: leave torch.compile out")
    parser.add_argument("--aa", action="store_true", help="also time the first variant's hand-written loop against a copy of itself (the noise floor)")
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch threads (default 1: CPU time then measures the work)")
    args = parser.parse_args(argv)

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    args.device = device.type
    defaults = dict(width=64, batch=32, frames=16, size=112, steps=20, repeats=5, warmup=15) if cuda else dict(width=16, batch=8, frames=8, size=64, steps=3, repeats=9, warmup=2)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.precision = "bf16" if cuda else "fp32"
    args.channels_last = cuda
    args.compile = cuda and not args.no_compile
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; variants are {', '.join(VARIANTS)}")
    get_registry()  # the plugins, as `hcframe run` loads them

    print(f"machine: {machine(device)}; load average {os.getloadavg()[0]:.2f}")
    print(f"R(2+1)D-18 width {args.width}, batch {args.batch}, {args.frames}x{args.size}x{args.size}, {args.precision}"
          f"{', channels_last' if args.channels_last else ''}{', compile' if args.compile else ''}; SGD fused; "
          f"{args.repeats} rounds of {args.steps} steps after {args.warmup} warm-up steps")
    sides: dict[tuple[str, str], tuple[Callable, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            views = 1 if variant == "supervised" else 2
            batch = make_batch(views, args.batch, args.frames, args.size, device, args.channels_last, variant == "simclr+distill")
            trainer = DeviceBatchTrainer(hcframe_recipe(variant, args), Path(tmp) / variant.replace("+", "_"), batch)
            trainer.start()
            encoder = get_registry().create("encoder", "r2plus1d_18", width=args.width)
            hand = HandWritten(variant, encoder, args, device)
            hand.copy_weights(trainer.model)
            sides[(variant, "hand-written")] = (hand.step, batch)
            sides[(variant, "hcframe")] = (trainer.one_step, batch)
            if args.aa and variant == variants[0]:  # the noise floor: the hand-written loop against a copy of itself
                twin = HandWritten(variant, get_registry().create("encoder", "r2plus1d_18", width=args.width), args, device)
                twin.copy_weights(trainer.model)
                sides[(variant, "twin")] = (twin.step, batch)
        for key, (step, batch) in sides.items():
            timed(step, batch, args.warmup, device)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in sides}
        for r in range(args.repeats):
            # The two sides of a variant back to back (which goes first alternates): a ratio
            # compares blocks seconds apart; the variants rotate.
            for variant in variants[r % len(variants):] + variants[: r % len(variants)]:
                pair = ["hand-written", "hcframe"] if r % 2 == 0 else ["hcframe", "hand-written"]
                if (variant, "twin") in sides:
                    pair.append("twin")
                for side in pair:
                    step, batch = sides[(variant, side)]
                    times[(variant, side)].append(timed(step, batch, args.steps, device))
            print(f"round {r + 1}/{args.repeats} done (load average {os.getloadavg()[0]:.2f})", file=sys.stderr)

    # On CPU the process's CPU time (one thread): on a shared machine wall-clock time mostly
    # measures the neighbours. On CUDA wall-clock time, to the end of the device's work.
    clock = 0 if cuda else 1
    clock_name = "wall-clock" if cuda else "CPU time of this process"
    clips = args.batch * args.steps
    print(f"\nclips/s by {clock_name}: medians over rounds; ratio: the median of the per-round ratios, "
          f"and (best) that of each side's fastest block")
    print(f"{'variant':<16}{'hand-written clips/s':>22}{'hcframe clips/s':>18}{'hcframe / hand-written':>24}{'(best)':>8}")
    for variant in variants:
        hand = [t[clock] for t in times[(variant, "hand-written")]]
        ours = [t[clock] for t in times[(variant, "hcframe")]]
        ratio = statistics.median(h / o for h, o in zip(hand, ours))
        print(f"{variant:<16}{clips / statistics.median(hand):>22.2f}{clips / statistics.median(ours):>18.2f}{ratio:>24.3f}{min(hand) / min(ours):>8.3f}")
    if (variants[0], "twin") in times:
        hand = [t[clock] for t in times[(variants[0], "hand-written")]]
        twin = [t[clock] for t in times[(variants[0], "twin")]]
        ratios = [h / t for h, t in zip(hand, twin)]
        print(f"noise floor: {variants[0]} hand-written / its twin: median {statistics.median(ratios):.3f}, "
              f"rounds from {min(ratios):.3f} to {max(ratios):.3f}")
    if "simclr" in variants and "simclr+distill" in variants:
        for side in ("hcframe", "hand-written"):
            pairs = zip(times[("simclr+distill", side)], times[("simclr", side)])
            slower = statistics.median(d[clock] / c[clock] for d, c in pairs)
            print(f"{side}: simclr+distill (cached teacher) takes {slower:.3f}x the time per step of simclr alone")
    if not cuda:
        walls = [t[0] for ts in times.values() for t in ts]
        cpus = [t[1] for ts in times.values() for t in ts]
        print(f"wall-clock / CPU time over all blocks: {sum(walls) / sum(cpus):.2f} (1.0 on an idle machine with one thread)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
