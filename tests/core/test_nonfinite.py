"""Non-finite steps: skipped without touching weights or optimiser state, counted and logged; a row
of them stops the run naming the step, the task and the loss term; non-finite weights stop the run
and are never written to a checkpoint; a resume after skipped steps is bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import hcframe
from hcframe.cli import cli
from hcframe.engine.checkpoint import latest_checkpoint, load_checkpoint
from hcframe.engine.loop import RunFailed
from hcframe.engine.nonfinite import gradients_finite, step_if_finite
from hcframe.engine.trainer import Trainer
from hcframe_testkit import CrashAfterMicroBatches, Crashed

pytestmark = pytest.mark.usefixtures("testkit")


def _recipe(toy_recipe, bad=None, **train):
    """The toy recipe with a third task, ``bad`` (``nonfinite_at`` with the arguments ``bad``)."""
    tasks = {"sup": {"name": "supervised", "num_classes": 4}, "bright": {"name": "brightness"}}
    if bad is not None:
        tasks["bad"] = {"name": "nonfinite_at", **bad}
    settings = {"steps": 6, "batch_size": 8, "log_every": 1, "checkpoint_every": 1, "keep_checkpoints": 20, **train}
    return toy_recipe(tasks=tasks, train=settings)


def _train(recipe, run_dir, hooks=(), resume=False):
    messages: list[str] = []
    trainer = Trainer(recipe, run_dir, resume=resume, log=messages.append, hooks=list(hooks))
    try:
        summary = trainer.train()
    finally:
        trainer.messages = messages
    return trainer, summary


def _state(run_dir, step):
    return load_checkpoint(run_dir / "checkpoints" / f"step_{step:08d}.pt")


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _momentum(state):
    return [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]


@pytest.mark.parametrize("where, named", [("loss", "loss term 'toy' of task 'bad' (= nan)"),
                                          ("gradient", "the gradient (every loss term was finite)")])
def test_a_nonfinite_step_changes_nothing_and_is_counted_and_logged(toy_recipe, tmp_path, where, named):
    trainer, summary = _train(_recipe(toy_recipe, bad={"steps": [3], "where": where}), tmp_path / "run")
    run = tmp_path / "run"
    two, three, four = _state(run, 2), _state(run, 3), _state(run, 4)
    # Step 3 was skipped: weights, momentum and the optimiser's own state are those of step 2 ...
    assert _same_tensors(two["model"], three["model"])
    assert all(torch.equal(a, b) for a, b in zip(_momentum(two), _momentum(three)))
    # ... and the run went on learning afterwards.
    assert not _same_tensors(three["model"], four["model"])
    assert f"step 3: {named} is not finite; the step was skipped (1 skipped so far)" in trainer.messages
    skipped = {line["step"]: line["skipped_steps"] for line in _lines(run)}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 1}
    assert summary["nonfinite_steps"] == {"count": 1, "last": {"step": 3, "nonfinite": ["bad/toy", "bad/loss", "loss"] if where == "loss" else ["gradients"]}}
    assert summary["steps"] == 6


def test_adamw_skips_on_the_device_leaving_its_moments_and_step_count(toy_recipe, tmp_path):
    recipe = toy_recipe(
        tasks={"bad": {"name": "nonfinite_at", "steps": [3]}}, optim={"name": "adamw", "lr": 1e-3},
        train={"steps": 3, "batch_size": 8, "checkpoint_every": 1, "keep_checkpoints": 5},
    )
    _train(recipe, tmp_path / "run")
    two, three = _state(tmp_path / "run", 2), _state(tmp_path / "run", 3)
    assert _same_tensors(two["model"], three["model"])
    for a, b in zip(two["optimizer"]["state"].values(), three["optimizer"]["state"].values()):
        assert float(a["step"]) == float(b["step"]) == 2.0
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


@pytest.mark.parametrize("poison", [None, "nan", "inf", "-inf"])
def test_gradients_finite_finds_any_nonfinite_entry_and_leaves_the_gradients_alone(poison):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape)) for shape in [(3, 4), (5,), (2, 3, 3, 3, 3), (1,)]]
    params.append(torch.nn.Parameter(torch.randn(4, dtype=torch.float64)))  # another dtype: the fallback
    for p in params[:-1]:
        p.grad = torch.randn_like(p)
    if poison is not None:
        params[2].grad[1, 2, 0, 1, 2] = float(poison)
    before = [p.grad.clone() for p in params if p.grad is not None]
    expected = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
    assert bool(gradients_finite(params)) is expected is (poison is None)
    after = [p.grad for p in params if p.grad is not None]
    assert all(torch.equal(a, b) or (torch.isnan(a).any() and torch.equal(a.isnan(), b.isnan())) for a, b in zip(before, after))
    params[4].grad = torch.full((4,), float(poison or 1.0), dtype=torch.float64)
    assert bool(gradients_finite(params)) is (poison is None)


def test_skipping_an_optimisers_first_step_leaves_no_state_behind():
    # Fused SGD allocates its momentum uninitialised on its first step; a skipped first step
    # must leave the optimiser as if it had never been called (the next step equals a fresh one's).
    def final(skip_first):
        torch.manual_seed(0)
        layer = torch.nn.Linear(6, 3)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, fused=True)
        x = torch.randn(4, 6)
        if skip_first:
            layer(x).sum().backward()
            step_if_finite(opt, torch.tensor(False))
            opt.zero_grad()
        for _ in range(2):
            layer(x).pow(2).sum().backward()
            step_if_finite(opt, torch.tensor(True))
            opt.zero_grad()
        return layer.weight.detach().clone()

    assert torch.equal(final(False), final(True))


def test_fp16_the_scaler_backs_off_and_the_step_is_skipped(toy_recipe, tmp_path):
    if not torch.amp.GradScaler("cpu").is_enabled():
        pytest.skip("this torch has no CPU loss scaler")
    trainer, summary = _train(_recipe(toy_recipe, bad={"steps": [5]}, steps=5, precision="fp16"), tmp_path / "run")
    four, five = _state(tmp_path / "run", 4), _state(tmp_path / "run", 5)
    assert _same_tensors(four["model"], five["model"])
    assert float(five["scaler"]["scale"]) == 0.5 * float(four["scaler"]["scale"])  # backoff_factor 0.5
    assert "step 5: loss term 'toy' of task 'bad' (= nan) is not finite; the step was skipped" in " ".join(trainer.messages)
    # The scaler's own overflow skips (its scale starts at 2^16) are counted as well, each logged.
    assert summary["nonfinite_steps"]["count"] == sum("the step was skipped" in m for m in trainer.messages) >= 1


def test_a_row_of_nonfinite_steps_stops_the_run_naming_step_task_and_term(toy_recipe, tmp_path):
    recipe = _recipe(toy_recipe, bad={"from_step": 3, "value": "inf"}, max_nonfinite_steps=3, steps=10)
    with pytest.raises(RunFailed) as failure:
        _train(recipe, tmp_path / "run")
    assert str(failure.value).startswith(
        "3 optimisation steps in a row were not finite (steps 3-5; train.max_nonfinite_steps = 3): "
        "at step 5 loss term 'toy' of task 'bad' (= inf);"
    )
    # Nothing after the last finite step was written; what is on disk is finite.
    newest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert newest.name == "step_00000004.pt"  # step 4's, written when step 5 began
    assert all(bool(torch.isfinite(v).all()) for v in load_checkpoint(newest)["model"].values() if v.is_floating_point())


def test_the_cli_reports_the_stop_in_one_line_and_the_summary(toy_recipe_file, tmp_path):
    recipe = toy_recipe_file(
        tasks={"bad": {"name": "nonfinite_at", "from_step": 2}},
        train={"steps": 8, "batch_size": 8, "max_nonfinite_steps": 2, "device": "cpu"},
    )
    result = CliRunner().invoke(cli, ["run", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "2 optimisation steps in a row were not finite (steps 2-3; train.max_nonfinite_steps = 2): at step 3 loss term 'toy' of task 'bad' (= nan)" in result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["nonfinite_steps"] == {"count": 2, "last": {"step": 3, "nonfinite": ["bad/toy", "bad/loss", "loss"]}}


class PoisonAfter(hcframe.Hook):
    """After optimisation step ``step``, set one weight to NaN (an update that overflowed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        if self.trainer.step == self.step:
            with torch.no_grad():
                self.trainer.model.trunk.stages["stem"][0].weight[0, 0, 0, 0, 0] = float("nan")


def test_a_checkpoint_is_never_written_with_nonfinite_weights(toy_recipe, tmp_path):
    recipe = _recipe(toy_recipe, checkpoint_every=2)
    with pytest.raises(RunFailed) as failure:
        _train(recipe, tmp_path / "run", hooks=[PoisonAfter(2)])
    message = str(failure.value)
    assert "not writing the checkpoint of step 2" in message
    total = sum(1 for v in _state_keys(recipe) if v)
    assert f"1 of {total} model tensors are not finite (first: trunk.stages.stem.0.weight)" in message
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None  # nor a temporary file
    assert not list((tmp_path / "run").rglob("*.pt*"))


def _state_keys(recipe):
    from hcframe.engine.trainer import build_model

    return [v.is_floating_point() for v in build_model(recipe).state_dict().values()]


def test_nonfinite_weights_stop_the_run_at_the_next_step(toy_recipe, tmp_path):
    # The weights turned non-finite by step 2's update: step 3's loss is NaN, and skipping cannot
    # help, so the run stops there without waiting for a row of skipped steps.
    recipe = _recipe(toy_recipe, checkpoint_every=100, steps=8)
    with pytest.raises(RunFailed) as failure:
        _train(recipe, tmp_path / "run", hooks=[PoisonAfter(2)])
    message = str(failure.value)
    assert message.startswith("step 3: loss term ")
    assert "is not finite because the weights are: 1 of " in message
    assert "(first: trunk.stages.stem.0.weight); the update of step 2 made them so;" in message
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None


def test_optim_lr_inf_is_refused_before_any_work(toy_recipe_file, tmp_path):
    # The case: `--set optim.lr=inf` used to write a checkpoint with 105 of 204 tensors
    # non-finite at step 1. Now the recipe is refused (exit 2) before the run directory exists.
    recipe = toy_recipe_file(train={"steps": 3, "batch_size": 8, "device": "cpu", "checkpoint_every": 1})
    result = CliRunner().invoke(cli, ["run", str(recipe), "--output", str(tmp_path / "run"), "--set", "optim.lr=inf"])
    assert result.exit_code == 2
    assert "optim.lr: inf is not a finite number; give a finite value" in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_overflowing_learning_rate_never_reaches_a_checkpoint(toy_recipe, tmp_path):
    # A finite learning rate so large that the first update overflows the weights: the run stops,
    # naming the weights, and no checkpoint on disk holds a NaN or an infinity.
    recipe = toy_recipe(optim={"lr": 1e38}, train={"steps": 4, "batch_size": 8, "checkpoint_every": 1})
    with pytest.raises(RunFailed) as failure:
        _train(recipe, tmp_path / "run")
    message = str(failure.value)
    assert message.startswith("not writing the checkpoint of step 1 to ")
    assert "model tensors are not finite (first: " in message and message.endswith("lower optim.lr or set train.clip_grad")
    for path in (tmp_path / "run").rglob("*.pt"):
        assert all(bool(torch.isfinite(v).all()) for v in load_checkpoint(path)["model"].values() if v.is_floating_point()), path


def test_an_infinite_learning_rate_from_the_api_is_refused_before_the_first_update(toy_recipe, tmp_path):
    # A Recipe built in code skips the parser's check; the trainer refuses it before updating.
    import attrs

    recipe = toy_recipe(train={"steps": 3, "batch_size": 8})
    recipe = attrs.evolve(recipe, optim=attrs.evolve(recipe.optim, lr=float("inf")))
    with pytest.raises(RunFailed, match=r"the learning rate is inf at step 1 \(optim.lr = inf\)"):
        _train(recipe, tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None


def test_resume_after_skipped_steps_is_bit_identical(toy_recipe, tmp_path):
    recipe = _recipe(toy_recipe, bad={"steps": [3, 4]}, steps=7, checkpoint_every=2, log_every=2)
    _, straight = _train(recipe, tmp_path / "straight")
    with pytest.raises(Crashed):
        _train(recipe, tmp_path / "killed", hooks=[CrashAfterMicroBatches(5)])
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step_00000004.pt"
    _, resumed = _train(recipe, tmp_path / "killed", resume=True)
    a, b = _state(tmp_path / "straight", 7), _state(tmp_path / "killed", 7)
    assert _same_tensors(a["model"], b["model"])
    assert all(torch.equal(x, y) for x, y in zip(_momentum(a), _momentum(b)))
    assert straight["nonfinite_steps"] == resumed["nonfinite_steps"] == {"count": 2, "last": {"step": 4, "nonfinite": ["bad/toy", "bad/loss", "loss"]}}
