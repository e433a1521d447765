"""How closely the ``schp`` teacher follows SCHP's InPlace-ABN semantics, and what bf16 costs.

Two measurements on a randomly initialised AugmentCE2P ResNet-101 (the public checkpoints are not
available here; the layout is the checkpoints' own, values are random):

1. **Sign of stored norm weights.** SCHP's norm layers are InPlace-ABN, whose affine scale is
   ``|weight| + eps`` (eps 1e-5). A state dict gets 10% of the channels of every norm layer
   negated. The reference output is the same network with every norm layer's output recomputed
   from its input by the InPlace-ABN inference formula (forward hooks, written here from the
   kernels' definition, so the reference does not depend on the teacher's own norm code):
   ``y = (x - running_mean) / sqrt(running_var + eps) * (|weight| + eps) + bias``, then the
   layer's activation (identity or leaky ReLU 0.01). Reported: argmax agreement of the teacher's
   frame-grid logits with the reference, and the largest logit difference relative to the
   reference's largest logit.

2. **bf16 against fp32** (only when the teacher has a ``precision`` option): argmax agreement of
   ``precision="bf16"`` (autocast) with the default fp32 teacher on the same frames. On a CPU this
   measures CPU bf16 autocast with random weights, not CUDA with the public checkpoints.

Frames: smooth random colour fields (sums of a few random low-frequency sinusoids), letterboxed
into the variant's input size as the teacher does.

Run: ``OMP_NUM_THREADS=1 python benchmarks/schp_teacher_conformance.py [--frames 2] [--dataset lip]
[--seeds 0 1] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch
import torch.nn.functional as F

from hcframe_parsing.schp import AugmentCE2P, SCHP_VARIANTS, SCHPTeacher

EPS = 1e-5  # InPlace-ABN's default, which SCHP keeps
SLOPE = 0.01


def random_state(num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """Random values in the checkpoint layout: He-like conv weights, norm weights in [0.5, 1],
    small biases and means, running variances in [0.5, 1.5]."""
    with torch.device("meta"):
        layout = AugmentCE2P(num_classes).state_dict()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, meta in layout.items():
        shape = tuple(meta.shape)
        if name.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("running_mean") or name.endswith("bias"):
            t = torch.randn(shape, generator=g) * 0.01
        elif len(shape) == 1:
            t = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:
            t = torch.randn(shape, generator=g) * (1.0 / math.prod(shape[1:])) ** 0.5
        state[name] = t
    return state


def norm_layer_prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    return [k[: -len("running_var")] for k in state if k.endswith("running_var")]


def negate_fraction(state: dict[str, torch.Tensor], fraction: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1000)
    out = dict(state)
    for prefix in norm_layer_prefixes(state):
        w = state[prefix + "weight"].clone()
        n = round(fraction * w.numel())
        idx = torch.randperm(w.numel(), generator=g)[:n]
        w[idx] = -w[idx]
        out[prefix + "weight"] = w
    return out


def smooth_frames(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    frames = torch.zeros(n, 3, h, w)
    for i in range(n):
        for c in range(3):
            for _ in range(4):
                fy, fx, ph = (torch.rand(3, generator=g) * torch.tensor([6.0, 6.0, 6.28])).tolist()
                frames[i, c] += torch.sin(2 * math.pi * (fy * yy + fx * xx) + ph)
    frames = frames - frames.amin(dim=(2, 3), keepdim=True)
    return frames / frames.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def inplace_abn_hooks(teacher: SCHPTeacher) -> list:
    """Replace every norm layer's output by the InPlace-ABN formula applied to its input."""
    handles = []
    for module in teacher.model.modules():
        if not hasattr(module, "running_var"):
            continue

        def hook(mod, inputs, _output):
            x = inputs[0]
            shape = (1, -1, 1, 1)
            scale = (mod.weight.abs() + EPS) * torch.rsqrt(mod.running_var + EPS)
            y = (x - mod.running_mean.view(shape)) * scale.view(shape) + mod.bias.view(shape)
            return F.leaky_relu(y, SLOPE) if mod.activation == "leaky_relu" else y

        handles.append(module.register_forward_hook(hook))
    return handles


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(dim=1) == b.argmax(dim=1)).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="lip", choices=sorted(SCHP_VARIANTS))
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--frame-size", type=int, nargs=2, default=(240, 320))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    variant = SCHP_VARIANTS[args.dataset]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}")
    print(f"dataset {args.dataset} (input {variant.input_size}), {args.frames} frames of {tuple(args.frame_size)}, "
          f"{args.fraction:.0%} of every norm layer's channels negated")
    for seed in args.seeds:
        state = negate_fraction(random_state(variant.num_classes, seed), args.fraction, seed)
        frames = smooth_frames(args.frames, *args.frame_size, seed=seed).to(device)
        teacher = SCHPTeacher.from_state_dict(state, dataset=args.dataset).to(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = teacher(frames)
            handles = inplace_abn_hooks(teacher)
            ref = teacher(frames)
            for h in handles:
                h.remove()
        took = time.perf_counter() - start
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        classes = ref.argmax(dim=1).unique().numel()
        print(f"seed {seed}: teacher vs InPlace-ABN reference: argmax agreement {agreement(out, ref):.2%}, "
              f"max |diff| / max |ref| = {rel:.2e} (reference argmax uses {classes} classes; {took:.1f} s)")
        if "precision" in SCHPTeacher.__init__.__code__.co_varnames:
            bf16 = SCHPTeacher.from_state_dict(state, dataset=args.dataset, precision="bf16").to(device)
            start = time.perf_counter()
            with torch.no_grad():
                low = bf16(frames)
            took = time.perf_counter() - start
            print(f"seed {seed}: bf16 vs fp32 teacher on {device.type}: argmax agreement {agreement(low, out):.2%}, "
                  f"max |diff| / max |fp32| = {((low - out).abs().max() / out.abs().max()).item():.2e} ({took:.1f} s)")


if __name__ == "__main__":
    main()
