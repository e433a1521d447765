"""Resume in a run directory that is not in perfect order: a truncated or foreign newest checkpoint
is named, set aside and skipped for the newest one that loads; ``metrics.jsonl`` is cut back to
the resumed step so every step appears once; the run keeps its ``--set`` options, so ``--resume``
alone resumes the same recipe (also from the Ctrl-C hint)."""

from __future__ import annotations

import json
import shlex
import tomllib

import pytest
import torch
from click.testing import CliRunner

import hcframe
from hcframe.cli import cli
from hcframe.engine.checkpoint import load_checkpoint
from hcframe.loggers import cut_metric_log
from hcframe.engine.trainer import Trainer
from hcframe_testkit import CrashAfterMicroBatches, Crashed

pytestmark = pytest.mark.usefixtures("testkit")


def _train(recipe, run_dir, resume=False, hooks=(), log=None):
    return Trainer(recipe, run_dir, resume=resume, log=log or (lambda m: None), hooks=list(hooks)).train()


def _metric_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(toy_recipe, tmp_path):
    recipe = toy_recipe(train={"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 1})
    _train(recipe, tmp_path / "run")
    newest = tmp_path / "run" / "checkpoints" / "step_00000004.pt"
    uninterrupted = load_checkpoint(newest)
    logged = _metric_lines(tmp_path / "run")
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short

    messages: list[str] = []
    summary = _train(recipe, tmp_path / "run", resume=True, log=messages.append)

    skipped = [m for m in messages if m.startswith("skipping")]
    assert len(skipped) == 1 and "\n" not in skipped[0]
    assert skipped[0].startswith(f"skipping {newest}: cannot load checkpoint (")
    assert skipped[0].endswith("renamed it step_00000004.pt.unreadable")
    assert f"resumed from {newest.with_name('step_00000002.pt')} at step 2" in messages
    assert summary["steps"] == 4
    # Steps 3 and 4 were trained again from step 2: the result is the first run's, bit for bit.
    resumed = load_checkpoint(newest)
    assert resumed["step"] == 4
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert newest.with_name("step_00000004.pt.unreadable").is_file()  # kept for inspection
    # ... and metrics.jsonl holds every logged step once, with the same losses.
    relogged = _metric_lines(tmp_path / "run")
    assert [r["step"] for r in relogged] == [1, 2, 3, 4]
    assert [r["loss"] for r in relogged] == [r["loss"] for r in logged]


def test_foreign_checkpoints_are_named_and_skipped(toy_recipe, tmp_path):
    recipe = toy_recipe(train={"steps": 4, "batch_size": 8, "checkpoint_every": 4})
    _train(recipe, tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    torch.save([1, 2, 3], folder / "step_00000012.pt")  # safe to load, but a list
    torch.save({"model": {}, "step": 8}, folder / "step_00000008.pt")  # a dict without the fields

    messages: list[str] = []
    longer = toy_recipe(train={"steps": 6, "batch_size": 8, "checkpoint_every": 4})
    with pytest.warns(UserWarning, match="recipe changed"):
        summary = _train(longer, tmp_path / "run", resume=True, log=messages.append)
    skipped = [m for m in messages if m.startswith("skipping")]
    assert skipped == [
        f"skipping {folder / 'step_00000012.pt'}: not a training checkpoint (it holds a list, not a dict); "
        "renamed it step_00000012.pt.unreadable",
        f"skipping {folder / 'step_00000008.pt'}: not a training checkpoint "
        "(no optimizer, scaler, sampler, rng, recipe_sha256); renamed it step_00000008.pt.unreadable",
    ]
    assert summary["steps"] == 6
    assert sorted(p.name for p in folder.iterdir()) == [
        "step_00000004.pt", "step_00000006.pt", "step_00000008.pt.unreadable", "step_00000012.pt.unreadable",
    ]


def test_kill_between_checkpoints_then_resume_logs_every_step_once(toy_recipe, tmp_path):
    recipe = toy_recipe(train={"steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 1})
    with pytest.raises(Crashed):
        _train(recipe, tmp_path / "run", hooks=[CrashAfterMicroBatches(5)])  # killed in step 6
    before = _metric_lines(tmp_path / "run")
    assert [r["step"] for r in before] == [1, 2, 3, 4, 5]  # 4 and 5 come after the checkpoint of step 3
    messages: list[str] = []
    _train(recipe, tmp_path / "run", resume=True, log=messages.append)
    assert f"{tmp_path / 'run' / 'metrics.jsonl'}: dropped 2 lines after step 3 (those steps are logged again)" in messages
    after = _metric_lines(tmp_path / "run")
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in after[:5]] == [r["loss"] for r in before]  # steps 4, 5 trained again alike


def test_cut_metric_log_drops_later_steps_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "grad_cos/a~b": 0.5}\n{"step": 3, "loss": 0.5}\n{"step": 4, "lo')
    assert cut_metric_log(path, 2) == 2
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "grad_cos/a~b": 0.5}\n'
    assert cut_metric_log(path, 2) == 0 and cut_metric_log(tmp_path / "none.jsonl", 0) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_no_loadable_checkpoint_is_one_line_exit_1(toy_recipe_file, tmp_path):
    recipe = toy_recipe_file(train={"steps": 2, "batch_size": 8, "checkpoint_every": 2})
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "step_00000002.pt").write_bytes(b"PK\x03\x04 not really a zip")
    result = CliRunner().invoke(cli, ["run", str(recipe), "--output", str(tmp_path / "run"), "--resume"])
    assert result.exit_code == 1, result.output
    [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert line.startswith(f"error: no checkpoint in {folder} can be resumed from ({folder / 'step_00000002.pt'}: cannot load checkpoint (")
    assert line.endswith("move them away to start the run again from step 0")
    assert "Traceback" not in result.output
    assert [p.name for p in folder.iterdir()] == ["step_00000002.pt"]  # nothing renamed


class _InterruptAt(hcframe.Hook):
    """Ctrl-C after step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        if self.trainer.step == self.step:
            raise KeyboardInterrupt


class _InterruptPlugin:
    @hcframe.hookimpl
    def hcframe_register(self, registry) -> None:
        registry.add("hook", "interrupt_at_for_tests", _InterruptAt)


def test_resume_needs_no_set_and_the_ctrl_c_hint_continues_the_same_recipe(toy_recipe_file, tmp_path):
    hcframe.register_plugin(_InterruptPlugin(), name="interrupt_plugin_for_tests")
    recipe = toy_recipe_file(train={"steps": 10, "batch_size": 8, "checkpoint_every": 2, "log_every": 1})
    raw = recipe.read_text() + '\n[[hooks]]\nname = "interrupt_at_for_tests"\nstep = 5\n'
    recipe.write_text(raw)
    run_dir = tmp_path / "run"
    sets = ["--set", "optim.lr=0.02", "--set", "train.steps=6"]
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(recipe), "--output", str(run_dir), *sets])
    assert first.exit_code == 130, first.output
    [hint] = [l for l in first.stderr.splitlines() if l.startswith("error: interrupted")]
    command = hint.split("continue with: ", 1)[1]
    assert "--set" not in command and command.endswith(f"run {recipe} --output {run_dir} --resume")
    assert json.loads((run_dir / "overrides.json").read_text())["overrides"] == ["optim.lr=0.02", "train.steps=6"]

    # The hint, as printed (the hook that interrupted is taken out of the recipe first).
    recipe.write_text(raw.replace("step = 5", "step = 99"))
    args = shlex.split(command)[1:]  # without the program name
    with pytest.warns(UserWarning, match="recipe changed"):  # only the hook's step differs
        second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "resuming with the run's options: --set optim.lr=0.02 --set train.steps=6" in second.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6  # train.steps=6, not the file's 10
    saved = tomllib.loads((run_dir / "recipe.toml").read_text())
    assert saved["optim"]["lr"] == 0.02 and saved["train"]["steps"] == 6
    assert [r["step"] for r in _metric_lines(run_dir)] == [1, 2, 3, 4, 5, 6]

    # An option given with --resume replaces the stored one of the same key and is stored.
    with pytest.warns(UserWarning, match="recipe changed"):  # train.steps
        third = runner.invoke(cli, ["run", str(recipe), "--output", str(run_dir), "--resume", "--set", "train.steps=8"])
    assert third.exit_code == 0, third.output
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 8
    assert json.loads((run_dir / "overrides.json").read_text())["overrides"] == ["optim.lr=0.02", "train.steps=8"]
