"""Two gloo processes train the same model as one process with the same global batch (the test
encoder has no batch norm, whose statistics are per process by design): launched by one torchrun
(``--standalone``), and as two "nodes", two torchrun launchers meeting at a c10d rendezvous."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hcframe.engine.checkpoint import latest_checkpoint, load_checkpoint
from hcframe.engine.trainer import build_model
from hcframe.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("testkit")

TRAIN = {"steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 3}


def _command(args, launcher: list[str]) -> list[str]:
    return [*launcher, "-m", "hcframe", "--plugin", "hcframe_testkit", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(args, cwd, nproc):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    proc = subprocess.run(_command(args, launcher), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The one-process reference run of a recipe, run once per recipe text in this module."""
    runs: dict[str, Path] = {}

    def run(recipe: Path) -> Path:
        text = recipe.read_text()
        if text not in runs:
            cwd = tmp_path_factory.mktemp("one_process")
            (cwd / recipe.name).write_text(text)
            _run(["run", recipe.name, "--output", "one"], cwd, nproc=1)
            runs[text] = cwd / "one"
        return runs[text]

    return run


def _assert_same_weights(one: Path, two: Path, recipe: Path) -> None:
    a = load_checkpoint(latest_checkpoint(one / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(two / "checkpoints"))
    assert b["world_size"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # Training moved the weights: the comparison is not between two untouched initialisations.
    torch.manual_seed(0)
    init = build_model(load_recipe(recipe)).state_dict()
    assert max(float((init[k] - a["model"][k]).abs().max()) for k in init) > 1e-3


def test_two_gloo_ranks_equal_one_process(toy_recipe_file, tmp_path, one_process):
    recipe = toy_recipe_file(train=TRAIN)
    with_tensorboard = importlib.util.find_spec("tensorboard") is not None
    recipe.write_text(recipe.read_text() + '\n[[loggers]]\nname = "csv"\n' + ('\n[[loggers]]\nname = "tensorboard"\n' if with_tensorboard else ""))
    two = _run(["run", str(recipe), "--output", "two"], tmp_path, nproc=2)
    assert two.stderr.count("completed 6 steps") == 1  # only rank 0 reports
    _assert_same_weights(one_process(recipe), tmp_path / "two", recipe)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len([l for l in lines if '"lr"' in l]) == 2
    # Loggers run on rank 0 only: one CSV row per logged step, one TensorBoard event file.
    rows = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "3", "6"]
    if with_tensorboard:
        assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_by_c10d_rendezvous_equal_one_process(toy_recipe_file, tmp_path, one_process):
    """``torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d`` started twice, as on two
    machines (here both on this one, gloo over loopback): the launchers find each other at the
    rendezvous endpoint, rank 0 and 1 are assigned there, and training equals one process."""
    recipe = toy_recipe_file(train=TRAIN)
    endpoint = f"127.0.0.1:{_free_port()}"
    launchers = []
    for node in range(2):
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=hcframe-two-nodes",
        ]  # fmt: skip
        launchers.append(
            subprocess.Popen(
                _command(["run", str(recipe), "--output", "two"], launcher),
                cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        )
    outputs = [p.communicate(timeout=300) for p in launchers]
    for proc, (_, err) in zip(launchers, outputs):
        assert proc.returncode == 0, err[-3000:]
    # Rank 0 (whichever launcher the rendezvous gave it to) reports once.
    assert sum(err.count("completed 6 steps") for _, err in outputs) == 1
    _assert_same_weights(one_process(recipe), tmp_path / "two", recipe)
