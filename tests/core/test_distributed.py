"""Two gloo processes launched by torchrun train the same model as one process with the same
global batch (the test encoder has no batch norm, whose statistics are per process by design)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from hcframe.engine.checkpoint import latest_checkpoint, load_checkpoint
from hcframe.engine.trainer import build_model
from hcframe.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("testkit")


def _run(args, cwd, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    cmd = [*prefix, "-m", "hcframe", "--plugin", "hcframe_testkit", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_gloo_ranks_equal_one_process(toy_recipe_file, tmp_path):
    recipe = toy_recipe_file(train={"steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 3})
    with_tensorboard = importlib.util.find_spec("tensorboard") is not None
    recipe.write_text(recipe.read_text() + '\n[[loggers]]\nname = "csv"\n' + ('\n[[loggers]]\nname = "tensorboard"\n' if with_tensorboard else ""))
    _run(["run", str(recipe), "--output", "one"], tmp_path, nproc=1)
    two = _run(["run", str(recipe), "--output", "two"], tmp_path, nproc=2)
    assert two.stderr.count("completed 6 steps") == 1  # only rank 0 reports

    a = load_checkpoint(latest_checkpoint(tmp_path / "one" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "two" / "checkpoints"))
    assert b["world_size"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # Training moved the weights: the comparison is not between two untouched initialisations.
    torch.manual_seed(0)
    init = build_model(load_recipe(recipe)).state_dict()
    assert max(float((init[k] - a["model"][k]).abs().max()) for k in init) > 1e-3
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len([l for l in lines if '"lr"' in l]) == 2
    # Loggers run on rank 0 only: one CSV row per logged step, one TensorBoard event file.
    rows = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "3", "6"]
    if with_tensorboard:
        assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1
