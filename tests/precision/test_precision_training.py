"""Every shipped task and encoder trains in fp32, bf16 autocast and fp16 autocast with a gradient
scaler; the quickstart's combination does so through the real trainer.

Each case takes 3 optimiser steps (batch 4, 8-frame clips) in each precision from the same initial
weights and batches, and asserts that every loss and every weight stays finite and, for fp16, that
the scaler applied every step. Against the fp32 run of the same case:

- the first step's losses (same weights, same batch: the forward pass alone) agree within
  ``|L - L_fp32| <= rtol * |L_fp32| + 0.01`` with rtol 0.15 for bf16 and 0.03 for fp16;
- the first step's gradient (all parameters, unscaled) has a cosine similarity to fp32's of at
  least 0.6 for bf16 and 0.9 for fp16.

Why these bounds: at random initialisation a batch-normalised 3D CNN amplifies a relative
perturbation of its input by a factor that grows with depth, so the bf16 rounding of every
convolution (2**-9 relative) reaches the losses as a few per cent (measured on these cases: at most
6.3 % for bf16 and 0.7 % for fp16; gradient cosines at least 0.82 and 0.94). The bounds leave a
factor 2 or more; what they exist to catch is a garbage gradient (what oneDNN's CPU bf16 conv3d
weight gradient produced, see :mod:`hcframe.engine.precision`), an overflow, or a loss computed at
the wrong scale. Later steps are compared for finiteness only: from the second step on the runs
follow different weights, and at random initialisation their losses drift apart for the same
reason. The float32 arithmetic of each sensitive part is tested exactly in
test_precision_numerics.py.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch

from hcframe.engine.trainer import Trainer
from hcframe.recipe import load_recipe

from precision_helpers import ENCODERS, TASKS, Run, build_model, make_batches, quickstart_pair, quickstart_overrides, r2plus1d, train

ROOT_RECIPE = "examples/quickstart.toml"
LOSS_RTOL = {"bf16": 0.15, "fp16": 0.03}
GRAD_COSINE = {"bf16": 0.6, "fp16": 0.9}
LOW_PRECISIONS = ("bf16", "fp16")


@functools.lru_cache(maxsize=None)
def _task_run(task: str, precision: str) -> Run:
    return train(build_model(r2plus1d, TASKS[task], "layer3"), make_batches(3, size=16), precision)


@functools.lru_cache(maxsize=None)
def _encoder_run(encoder: str, precision: str) -> Run:
    factory, split = ENCODERS[encoder]
    # fp16 scale 2**4: S3D's first gradients reach ~1e3 (r3d_18's ~6), 2**8 would skip every step
    return train(build_model(factory, quickstart_pair, split), make_batches(3, size=16), precision, init_scale=2.0**4)


def _assert_close_to_fp32(run: Run, reference: Run, precision: str) -> None:
    for term, ref in reference.losses[0].items():
        got = run.losses[0][term]
        assert abs(got - ref) <= LOSS_RTOL[precision] * abs(ref) + 0.01, f"{term}: {precision} {got} vs fp32 {ref}"
    g, r = run.first_gradient, reference.first_gradient
    cosine = float(g @ r / (g.norm() * r.norm()))
    assert cosine >= GRAD_COSINE[precision], f"first-step gradient cosine to fp32 {cosine:.3f}"


def _assert_trained(run: Run, precision: str) -> None:
    assert run.all_finite(), run.losses
    assert run.finite_weights
    if precision == "fp16":
        assert run.skipped == 0, f"the gradient scaler skipped {run.skipped} of 3 steps"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_trains_in_fp32(task):
    run = _task_run(task, "fp32")
    _assert_trained(run, "fp32")
    assert run.first_gradient.abs().sum() > 0


@pytest.mark.parametrize("precision", LOW_PRECISIONS)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_trains_in_low_precision_close_to_fp32(task, precision):
    run = _task_run(task, precision)
    _assert_trained(run, precision)
    _assert_close_to_fp32(run, _task_run(task, "fp32"), precision)


@pytest.mark.parametrize("precision", ("fp32", *LOW_PRECISIONS))
@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_encoder_trains_with_the_quickstart_tasks(encoder, precision):
    """Finite losses and weights over 3 steps, every fp16 step applied. S3D is deep and
    un-residual: at random initialisation its rounding amplification is large too (its first-step
    losses differ from fp32's by up to ~25 % in bf16), so closeness is asserted on the task cases
    and the quickstart runs, not per encoder."""
    _assert_trained(_encoder_run(encoder, precision), precision)


# --- the quickstart's combination through the real trainer ------------------------------------------
@functools.lru_cache(maxsize=None)
def _quickstart_run(world: str, run_dir: str, precision: str) -> list[dict]:
    recipe = load_recipe(ROOT_RECIPE, [*quickstart_overrides(world), f"train.precision={precision}"])
    summary = Trainer(recipe, Path(run_dir), log=lambda m: None).train()
    assert summary["steps"] == 3
    state = torch.load(Path(run_dir) / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def quickstart_runs(small_world, tmp_path_factory):
    def get(precision: str) -> list[dict]:
        return _quickstart_run(str(small_world), str(tmp_path_factory.mktemp(f"qs_{precision}")), precision)

    return get


@pytest.mark.parametrize("precision", LOW_PRECISIONS)
def test_quickstart_recipe_trains_in_low_precision(quickstart_runs, precision):
    """examples/quickstart.toml (simclr + parsing_distill on their own branches, the online probe),
    3 steps of the trainer with ``train.precision`` set: every logged loss finite, the checkpoint's
    weights finite, and the first step's losses (same weights and batch as fp32) within the
    tolerances above. (fp16 here uses the trainer's scaler, which starts at 2**16 and may skip the
    first steps: that is compared for finiteness only.)"""
    records, reference = quickstart_runs(precision), quickstart_runs("fp32")
    assert [r["step"] for r in records] == [1, 2, 3]
    loss_keys = [k for k in reference[0] if k == "loss" or k.endswith(("/nce", "/distill", "/ce"))]
    assert {"contrastive/nce", "parsing/distill", "probe/ce", "loss"} <= set(loss_keys)
    for record in records:
        assert all(math.isfinite(record[k]) for k in loss_keys), record
    for key in loss_keys:
        got, ref = records[0][key], reference[0][key]
        assert abs(got - ref) <= LOSS_RTOL[precision] * abs(ref) + 0.01, f"{key}: {precision} {got} vs fp32 {ref}"
