"""Recipes: validation against constructor signatures, overrides, the resolved recipe on disk."""

from __future__ import annotations

import tomllib

import pytest

import hcframe
from hcframe.recipe import RecipeError, apply_override, dump_toml, load_recipe, parse_recipe
from hcframe.registry import Registry
from hcframe.engine.trainer import Trainer

pytestmark = pytest.mark.usefixtures("testkit")


class ToyTeacher(hcframe.Teacher):
    """A teacher for nested-table tests."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.size = size
        self.label_names = ("bg", "person")

    def identity(self):
        return {"size": self.size}

    def forward(self, frames, output_size=None):
        raise NotImplementedError


class TaskWithTeacher(hcframe.PretextTask):
    """A task taking a nested teacher table."""

    def __init__(self, teacher: hcframe.Teacher, temperature: float = 1.0, mode: str = "kl") -> None:
        super().__init__()
        self.teacher, self.temperature = teacher, temperature

    def forward(self, inp):
        raise NotImplementedError


def _registry() -> Registry:
    r = hcframe.get_registry()
    if "toy_teacher" not in r.names("teacher"):
        r.add("teacher", "toy_teacher", ToyTeacher)
        r.add("task", "with_teacher", TaskWithTeacher)
    return r


BASE = {
    "data": {"name": "moving_squares"},
    "transform": {"name": "normalize"},
    "model": {"encoder": {"name": "tiny3d_test"}},
    "tasks": {"t": {"name": "with_teacher", "teacher": {"name": "toy_teacher", "size": 4}}},
}


def test_nested_component_tables_build_through_the_registry():
    recipe = parse_recipe(BASE, "r.toml", _registry())
    task = recipe.tasks["t"].build()
    assert isinstance(task.teacher, ToyTeacher) and task.teacher.size == 4
    # Defaults of every constructor are written into the resolved recipe.
    assert recipe.raw["tasks"]["t"] == {"name": "with_teacher", "teacher": {"name": "toy_teacher", "size": 4}, "temperature": 1.0, "mode": "kl"}
    assert recipe.raw["train"]["steps"] == 100


def test_resolved_recipe_round_trips_through_toml():
    recipe = parse_recipe({**BASE, "combiner": {"weights": {"t": 2.0}}}, "r.toml", _registry())
    text = recipe.to_toml()
    again = parse_recipe(tomllib.loads(text), "again.toml", _registry())
    assert again.raw == recipe.raw and again.sha256() == recipe.sha256()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train": {"stpes": 3}}, "r.toml: train.stpes: unknown key; did you mean 'steps'?"),
        ({"train": {"steps": "ten"}}, "r.toml: train.steps: expected an integer, got str 'ten'"),
        ({"train": {"steps": -1}}, "r.toml: train.steps: must be >= 0, got -1"),
        ({"train": {"batch_size": 0}}, "r.toml: train.batch_size: must be > 0, got 0"),
        ({"optim": {"name": "adam"}}, "r.toml: optim.name: 'adam' is not allowed; use one of 'sgd', 'adamw'"),
        ({"model": {"encoder": {"name": "tiny3d_tset"}}}, "r.toml: model.encoder.name: no encoder 'tiny3d_tset'; did you mean 'tiny3d_test'?"),
        ({"tasks": {"t": {"name": "with_teacher", "teacher": {"name": "toy_teacher", "sise": 4}}}}, "r.toml: tasks.t.teacher.sise: unknown key for teacher 'toy_teacher'; did you mean 'size'?"),
        ({"tasks": {"t": {"name": "with_teacher", "temperature": "hot", "teacher": {"name": "toy_teacher"}}}}, "r.toml: tasks.t.temperature: expected a number"),
        ({"tasks": {"t": {"name": "with_teacher"}}}, "r.toml: tasks.t: task 'with_teacher' needs 'teacher'; add it to the table"),
        ({"combiner": {"weights": {"s": 1.0}}}, "r.toml: combiner.weights.s: no such task"),
        ({"combiner": {"pcgrad": True, "weighting": "uncertainty"}}, "r.toml: combiner.pcgrad:"),
        ({"dat": {}}, "r.toml: dat: unknown top-level key; did you mean 'data'?"),
    ],
)
def test_bad_recipes_name_file_key_and_fix(change, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe({**BASE, **change}, "r.toml", _registry())
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_overrides_use_toml_values_and_bare_strings(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(dump_toml(BASE))
    recipe = load_recipe(path, ["train.steps=7", "tasks.t.teacher.size=2", "optim.name=adamw", "optim.betas=[0.5, 0.6]"], registry=_registry())
    assert recipe.train.steps == 7 and recipe.optim.name == "adamw" and recipe.optim.betas == (0.5, 0.6)
    assert recipe.tasks["t"].args["teacher"].args["size"] == 2
    raw = {"a": 1}
    with pytest.raises(RecipeError, match="a is a value, not a table"):
        apply_override(raw, "a.b=2")
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        apply_override(raw, "nothing")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nname=1")
    with pytest.raises(RecipeError, match="bad.toml: not valid TOML"):
        load_recipe(bad)


def test_run_writes_resolved_recipe_metrics_and_summary(toy_recipe, tmp_path):
    recipe = toy_recipe(train={"steps": 4, "batch_size": 8, "log_every": 2}, combiner={"weighting": "uncertainty", "grad_cosine_every": 2})
    from hcframe.run import run_recipe
    import json

    summary = run_recipe(recipe, tmp_path / "run", log=lambda m: None)
    saved = tomllib.loads((tmp_path / "run" / "recipe.toml").read_text())
    assert saved == recipe.raw
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [l for l in lines if "lr" in l]
    assert [l["step"] for l in logged] == [2, 4]
    assert {"sup/ce", "sup/acc", "bright/mse", "weight/sup", "weight/bright", "grad_cos/sup~bright", "clips_per_s"} <= logged[-1].keys()
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["steps"] == 4 and on_disk["bad_videos"]["count"] == 0
    assert on_disk["final_metrics"]["step"] == 4


def test_pcgrad_run_trains(toy_recipe, tmp_path):
    recipe = toy_recipe(train={"steps": 3, "batch_size": 8, "log_every": 1}, combiner={"pcgrad": True})
    summary = Trainer(recipe, tmp_path / "run", log=lambda m: None).train()
    assert summary["steps"] == 3 and summary["final_metrics"]["loss"] > 0


def test_zero_steps_is_the_untrained_baseline(toy_recipe, tmp_path):
    from hcframe.engine.checkpoint import latest_checkpoint, load_checkpoint
    from hcframe.engine.trainer import build_model

    recipe = toy_recipe(train={"steps": 0, "batch_size": 8})
    summary = Trainer(recipe, tmp_path / "run", log=lambda m: None).train()
    assert summary["steps"] == 0
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    import torch

    torch.manual_seed(recipe.train.seed)
    init = build_model(recipe).state_dict()
    assert all(torch.equal(init[k], state["model"][k]) for k in init)
