"""A run killed at any step and resumed ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from hcframe.engine.checkpoint import latest_checkpoint, load_checkpoint
from hcframe.engine.trainer import Trainer
from hcframe_testkit import CrashAfterMicroBatches, Crashed

pytestmark = pytest.mark.usefixtures("testkit")


def _final_state(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))


def _train(recipe, run_dir, resume=False, kill_after_micro=None):
    """Train; with ``kill_after_micro``, a fault-injection hook crashes the run in the forward pass
    of the next micro-batch (a kill at that point)."""
    hooks = [CrashAfterMicroBatches(kill_after_micro)] if kill_after_micro is not None else []
    return Trainer(recipe, run_dir, resume=resume, log=lambda m: None, hooks=hooks).train()


@pytest.mark.parametrize(
    "kill_after, accumulate, workers",
    # between checkpoints, right after one (step 4), in the middle of an accumulated step, with workers
    [(5, 1, 0), (4, 1, 0), (11, 2, 0), (9, 1, 2)],
)
def test_kill_and_resume_is_bit_identical(toy_recipe, tmp_path, kill_after, accumulate, workers):
    recipe = toy_recipe(
        train={"steps": 10, "batch_size": 8, "checkpoint_every": 2 if kill_after == 9 else 4, "accumulate": accumulate, "num_workers": workers},
        combiner={"grad_cosine_every": 3},
    )
    _train(recipe, tmp_path / "straight")
    with pytest.raises(Crashed):
        _train(recipe, tmp_path / "killed", kill_after_micro=kill_after)
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints") is not None
    summary = _train(recipe, tmp_path / "killed", resume=True)
    assert summary["steps"] == 10

    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "killed")
    assert a["step"] == b["step"] == 10
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_checkpoint_holds_everything_a_resume_needs(toy_recipe, tmp_path):
    recipe = toy_recipe(train={"steps": 4, "batch_size": 8, "checkpoint_every": 2})
    _train(recipe, tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert files == ["step_00000002.pt", "step_00000004.pt"]  # no temporary files left behind
    state = _final_state(tmp_path / "run")  # loads with weights_only=True
    assert {"model", "optimizer", "scaler", "step", "epoch", "sampler", "rng", "recipe_sha256"} <= state.keys()
    assert state["recipe_sha256"] == recipe.sha256()
    assert state["sampler"] == {"epoch": 1, "batches_done": 0}  # 32 videos / 8 = 4 batches = 1 epoch


def test_resume_warns_when_recipe_changed(toy_recipe, tmp_path):
    _train(toy_recipe(train={"steps": 4, "batch_size": 8, "checkpoint_every": 2}), tmp_path / "run")
    changed = toy_recipe(train={"steps": 6, "batch_size": 8, "checkpoint_every": 2})
    with pytest.warns(UserWarning, match="recipe changed"):
        summary = _train(changed, tmp_path / "run", resume=True)
    assert summary["steps"] == 6
