"""``torch.compile``: every encoder's stages trace into one graph, and ``train.compile = true``
trains like eager on CPU (inductor), with checkpoints an eager run reads and resumes.

Compiled and eager runs differ only in the order of floating-point operations (inductor fuses
batch norm, ReLU and the additions of a residual block into its own kernels). Bounds on every logged
loss of the quickstart recipe: a relative 1e-4 at the first step (same weights and batch), 1e-3 at
the next two. The learning rate is lowered to 2e-4 for this comparison: AdamW moves each weight by
about the learning rate whatever the size of its gradient, so a rounding-level difference in a
small gradient becomes a full-size difference in the weight, and at the recipe's rate the runs
drift apart by ~3e-3 in three steps (measured) without anything being wrong.

Inductor compiles each kernel with the C++ compiler: the quickstart model's 60-odd kernels take
1-4 minutes from an empty cache on 2 CPU cores (seconds once cached), hence ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hcframe.engine.checkpoint import load_checkpoint
from hcframe.engine.model import StageStack
from hcframe.engine.precision import autocast
from hcframe.engine.trainer import Trainer
from hcframe.recipe import load_recipe

from precision_helpers import ENCODERS, quickstart_overrides


# Plain S3D is left out: it runs the code of S3D-G without the gates (and tracing S3D takes ~5 s).
@pytest.mark.parametrize("encoder", sorted(e for e in ENCODERS if e != "s3d"))
def test_encoder_stages_trace_into_one_graph(encoder):
    """All stages of each encoder, as the trainer compiles them (a trunk or branch is a
    StageStack), under bf16 autocast with the CPU conv3d guard active: one graph, no break."""
    factory, _ = ENCODERS[encoder]
    stages = StageStack(dict(factory().stages))
    torch._dynamo.reset()
    with autocast(torch.device("cpu"), "bf16"):
        explained = torch._dynamo.explain(stages)(torch.randn(2, 3, 8, 16, 16))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def _run(world: Path, run_dir: Path, *overrides: str, resume: bool = False) -> list[dict]:
    recipe = load_recipe("examples/quickstart.toml", [*quickstart_overrides(world), "optim.lr=0.0002", *overrides])
    Trainer(recipe, run_dir, resume=resume, log=lambda m: None).train()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(record: dict) -> dict[str, float]:
    return {k: v for k, v in record.items() if k == "loss" or k.endswith(("/nce", "/distill", "/ce"))}


@pytest.mark.slow
def test_compiled_quickstart_trains_like_eager_and_its_checkpoints_resume(small_world, tmp_path):
    eager = _run(small_world, tmp_path / "eager")
    torch._dynamo.reset()
    compiled = _run(small_world, tmp_path / "compiled", "train.compile=true")
    assert [r["step"] for r in compiled] == [1, 2, 3]
    for got, ref in zip(compiled, eager):
        for key, value in _losses(ref).items():
            assert got[key] == pytest.approx(value, rel=1e-4 if got["step"] == 1 else 1e-3), (got["step"], key)
    # Module.compile() compiles in place: the checkpoint has the eager model's keys (no _orig_mod.)
    eager_state = load_checkpoint(tmp_path / "eager" / "checkpoints" / "step_00000003.pt")["model"]
    compiled_state = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "step_00000003.pt")["model"]
    assert list(compiled_state) == list(eager_state)
    assert not any("_orig_mod" in key for key in compiled_state)
    # each resumes from the other's checkpoint: eager from the compiled run's, compiled from eager's
    resumed = {}
    for name, flags in (("compiled", []), ("eager", ["train.compile=true"])):
        torch._dynamo.reset()
        with pytest.warns(UserWarning, match="the recipe changed since this checkpoint"):
            resumed[name] = _run(small_world, tmp_path / name, *flags, "train.steps=4", resume=True)
        assert [r["step"] for r in resumed[name]] == [1, 2, 3, 4]
    for key, value in _losses(resumed["eager"][3]).items():
        assert resumed["compiled"][3][key] == pytest.approx(value, rel=1e-3), key
