"""The trainer as a step plus hooks: the lifecycle, a hook stopping a run cleanly, hook state in
checkpoints, and hooks from a recipe's [[hooks]] tables."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import hcframe
from hcframe.cli import cli
from hcframe.engine.checkpoint import latest_checkpoint, load_checkpoint
from hcframe.engine.trainer import Trainer
from hcframe.recipe import RecipeError

pytestmark = pytest.mark.usefixtures("testkit")


class Recorder(hcframe.Hook):
    """Writes down every call with the step and status the trainer showed at that moment."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    def _note(self, what: str) -> None:
        self.calls.append((what, self.trainer.step, self.trainer.status))

    def before_train(self) -> None:
        self._note("before_train")

    def before_step(self) -> None:
        self._note("before_step")

    def after_step(self) -> None:
        self._note("after_step")

    def after_train(self) -> None:
        self._note("after_train")


class StopAt(hcframe.Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        if self.trainer.step == self.step:
            self.trainer.request_stop(f"asked to stop at step {self.step}")


class CountSteps(hcframe.Hook):
    """A stateful hook that logs a number of its own."""

    def __init__(self) -> None:
        self.count = 0

    def metric_info(self):
        return (hcframe.MetricInfo("count/steps", "other", plot="counts"),)

    def after_step(self) -> None:
        self.count += 1
        self.trainer.metrics.put("count/steps", float(self.count))

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state) -> None:
        self.count = state["count"]


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_hooks_run_around_every_step_in_order(toy_recipe, tmp_path):
    recipe = toy_recipe(train={"steps": 3, "batch_size": 8, "log_every": 1})
    first, second = Recorder(), Recorder()
    Trainer(recipe, tmp_path / "run", log=lambda m: None, hooks=[first, second]).train()
    expected = [("before_train", 0, "running")]
    for step in range(3):
        expected += [("before_step", step, "running"), ("after_step", step + 1, "running")]
    expected.append(("after_train", 3, "completed"))
    assert first.calls == expected and second.calls == expected


def test_after_train_runs_and_sees_the_failure_when_a_step_raises(toy_recipe, tmp_path):
    from hcframe_testkit import CrashAfterMicroBatches, Crashed

    recipe = toy_recipe(train={"steps": 4, "batch_size": 8, "checkpoint_every": 10})
    recorder = Recorder()
    with pytest.raises(Crashed):
        Trainer(recipe, tmp_path / "run", log=lambda m: None, hooks=[CrashAfterMicroBatches(2), recorder]).train()
    assert recorder.calls[-1] == ("after_train", 2, "failed")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None  # a failed run writes no final checkpoint


def test_a_hook_stops_a_run_cleanly_and_the_run_resumes_to_the_same_weights(toy_recipe, tmp_path):
    recipe = toy_recipe(train={"steps": 6, "batch_size": 8, "log_every": 4, "checkpoint_every": 4})
    Trainer(recipe, tmp_path / "straight", log=lambda m: None).train()
    summary = Trainer(recipe, tmp_path / "run", log=lambda m: None, hooks=[StopAt(3)]).train()
    assert summary["steps"] == 3
    assert summary["stopped_early"] == {"step": 3, "reason": "asked to stop at step 3"}
    # The stop is clean: the last step is logged and checkpointed although neither period says so.
    assert _lines(tmp_path / "run")[-1]["step"] == 3
    assert load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))["step"] == 3
    Trainer(recipe, tmp_path / "run", resume=True, log=lambda m: None).train()
    a = load_checkpoint(latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_hook_state_is_checkpointed_and_restored_and_its_metric_declared(toy_recipe, tmp_path):
    recipe = toy_recipe(train={"steps": 6, "batch_size": 8, "log_every": 3, "checkpoint_every": 4})
    Trainer(recipe, tmp_path / "run", log=lambda m: None, hooks=[CountSteps(), StopAt(4)]).train()
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["hooks"]["CountSteps"] == {"count": 4}
    resumed = CountSteps()
    Trainer(recipe, tmp_path / "run", resume=True, log=lambda m: None, hooks=[resumed]).train()
    assert resumed.count == 6  # continued from the checkpoint's 4, not from 0
    counts = {line["step"]: line["count/steps"] for line in _lines(tmp_path / "run") if "count/steps" in line}
    assert counts == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0, 6: 6.0}  # every step: a value of its own
    schema = json.loads((tmp_path / "run" / "metrics_schema.json").read_text())["metrics"]
    assert {"name": "count/steps", "kind": "other", "progress": False, "plot": "counts"} in schema


def test_recipe_hooks_are_built_from_the_registry_and_saved_in_the_resolved_recipe(toy_recipe_file, tmp_path):
    from hcframe.recipe import load_recipe

    path = toy_recipe_file(train={"steps": 4, "batch_size": 8})
    text = path.read_text() + '\n[[hooks]]\nname = "crash_after"\nmicro_batches = 2\n'
    path.write_text(text)
    recipe = load_recipe(path)
    assert [h.name for h in recipe.hooks] == ["crash_after"] and recipe.raw["hooks"] == [{"name": "crash_after", "micro_batches": 2}]
    result = CliRunner().invoke(cli, ["run", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "Crashed: crashed in micro-batch 3" in result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"
    assert "[[hooks]]" in (tmp_path / "run" / "recipe.toml").read_text()


@pytest.mark.parametrize(
    "hooks, message",
    [
        ('[[hooks]]\nname = "crash_aftr"\n', "hooks[0].name: no hook 'crash_aftr'; did you mean 'crash_after'?"),
        ('[[hooks]]\nname = "crash_after"\n', "hooks[0]: hook 'crash_after' needs 'micro_batches'"),
        ('[[hooks]]\nname = "crash_after"\nmicro_batches = "x"\n', "hooks[0].micro_batches: expected an integer"),
        ('hooks = 3\n', "hooks: expected [[hooks]] tables"),
    ],
)
def test_bad_hook_tables_are_refused_before_any_work(toy_recipe_file, tmp_path, hooks, message):
    path = toy_recipe_file()
    path.write_text(hooks + path.read_text() if hooks.startswith("hooks =") else path.read_text() + "\n" + hooks)
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")):
        from hcframe.recipe import load_recipe

        load_recipe(path)
    result = CliRunner().invoke(cli, ["run", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
