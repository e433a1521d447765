"""``[model] init``, ``hcframe export-encoder`` and ``hcframe eval`` on hcframe's own files.

A toy run (test-kit encoder ``tiny3d_test``, split after ``layer1``: branches ``sup`` and ``bright``
hold ``layer2``) is trained once; its checkpoint's encoder (trunk + one branch) is then exported,
used to initialise other recipes (with another split) and evaluated. The torchvision layout is
tested with the backbones (tests/backbones/test_backbones_torchvision.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hcframe.cli import cli
from hcframe.engine.pretrained import EXPORT_FORMAT
from hcframe.engine.trainer import build_model
from hcframe.recipe import RecipeError, dump_toml, load_recipe, parse_recipe

pytestmark = pytest.mark.usefixtures("testkit")  # the toy recipes use the test kit's components

PROBE = {
    "protocol": "linear_probe", "branch": "bright", "max_iter": 30,
    "train_data": {"name": "moving_squares", "num_videos": 16, "seed": 0},
    "test_data": {"name": "moving_squares", "num_videos": 8, "seed": 1},
}


def toy(split="layer2", init=None, init_branch=None, evals=()):
    raw = {
        "data": {"name": "moving_squares", "num_videos": 16},
        "transform": {"name": "normalize"},
        "model": {"split": split, "encoder": {"name": "tiny3d_test", "width": 4}},
        "tasks": {"sup": {"name": "supervised", "num_classes": 4}, "bright": {"name": "brightness"}},
        "train": {"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 2, "device": "cpu"},
        "optim": {"lr": 0.05},
    }
    if init is not None:
        raw["model"]["init"] = str(init)
    if init_branch is not None:
        raw["model"]["init_branch"] = init_branch
    if evals:
        raw["eval"] = list(evals)
    return raw


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    (root / "train.toml").write_text(dump_toml(toy()))
    result = invoke("run", root / "train.toml", "--output", root / "run")
    recipe = root / "eval.toml"  # the same model, with an evaluation
    recipe.write_text(dump_toml(toy(evals=[PROBE])))
    assert result.exit_code == 0, result.output
    checkpoint = root / "run" / "checkpoints" / "step_00000002.pt"
    state = torch.load(checkpoint, weights_only=True)["model"]
    return root, recipe, checkpoint, state


def encoder_of(state, branch):
    """The checkpoint's encoder written out by hand: trunk stages + the branch's stages."""
    out = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.stages.")}
    out.update({k.removeprefix(f"branches.{branch}."): v for k, v in state.items() if k.startswith(f"branches.{branch}.stages.")})
    return out


def assert_model_holds(model, encoder_state):
    """Every copy of every stage in ``model`` equals ``encoder_state``."""
    state = model.state_dict()
    for key, value in encoder_state.items():
        stage = key.split(".")[1]
        copies = [f"trunk.{key}"] if stage in model.trunk.stages else [f"branches.{b}.{key}" for b in model.branches]
        assert copies
        for copy_key in copies:
            assert torch.equal(state[copy_key], value), copy_key


def test_init_from_a_checkpoint_takes_the_trunk_and_the_named_branch_into_every_copy(trained, tmp_path):
    _, _, checkpoint, state = trained
    assert any(k.startswith("branches.sup.stages.layer2") for k in state)  # the toy run has two branches
    with pytest.raises(RecipeError, match=r"holds 2 branches \(sup, bright\); name the one that forms the encoder"):
        parse_recipe(toy(split="layer1", init=checkpoint))
    lines = []
    model = build_model(parse_recipe(toy(split="layer1", init=checkpoint, init_branch="bright")), log=lines.append)
    assert_model_holds(model, encoder_of(state, "bright"))
    assert lines == [f"model.init: 6 tensors from hcframe checkpoint {checkpoint}, trunk + branch 'bright'"]
    with pytest.raises(RecipeError, match=r"model\.init: .*: no branch 'nope'; the checkpoint's branches are sup, bright$"):
        parse_recipe(toy(init=checkpoint, init_branch="nope"))
    with pytest.raises(RecipeError, match=r"model\.init_branch: names a branch of the model\.init checkpoint; set model\.init too"):
        parse_recipe(toy(init_branch="sup"))


def test_export_encoder_round_trip_and_eval_of_the_export(trained, tmp_path):
    root, recipe, checkpoint, state = trained
    out = tmp_path / "bright.pt"
    refused = invoke("export-encoder", checkpoint, out)
    assert refused.exit_code == 2 and "holds 2 branches (sup, bright)" in one_line(refused) and not out.exists()
    concat = invoke("export-encoder", checkpoint, out, "--branch", "concat")
    assert concat.exit_code == 2 and "'concat' is every branch side by side, not one encoder; name one branch (sup, bright)" in one_line(concat)
    result = invoke("export-encoder", checkpoint, out, "--branch", "bright")
    assert result.exit_code == 0, result.output
    export = torch.load(out, weights_only=True)
    assert export["format"] == EXPORT_FORMAT and export["format_version"] == 1
    assert export["encoder_name"] == "tiny3d_test" and export["encoder_args"] == {"width": 4}
    assert export["step"] == 2 and export["source"] == str(checkpoint)
    expected = encoder_of(state, "bright")
    assert sorted(export["encoder"]) == sorted(expected)
    assert all(torch.equal(export["encoder"][k], v) for k, v in expected.items())
    # the export initialises a recipe with another split: every copy holds the exported weights
    model = build_model(parse_recipe(toy(split="layer1", init=out)))
    assert_model_holds(model, expected)
    # tiny3d_test reads and writes no other library's layout
    other = invoke("export-encoder", checkpoint, tmp_path / "tv.pth", "--branch", "bright", "--format", "torchvision")
    assert other.exit_code == 2 and one_line(other).endswith("--format torchvision: encoder 'tiny3d_test' is written as hcframe")
    # eval of the export equals eval of the checkpoint's 'bright' branch (features extracted anew)
    from_checkpoint = invoke("eval", recipe, "--checkpoint", checkpoint, "--output", tmp_path / "e1")
    from_export = invoke("eval", recipe, "--checkpoint", out, "--output", tmp_path / "e2")
    assert from_checkpoint.exit_code == 0 and from_export.exit_code == 0, from_export.output
    first = json.loads((tmp_path / "e1" / "eval.json").read_text())
    second = json.loads((tmp_path / "e2" / "eval.json").read_text())
    assert second["eval"] == first["eval"] and "linear_probe/moving_squares/bright" in second["eval"]
    assert second["weights"].startswith(f"6 tensors from hcframe encoder export {out}")
    assert first["step"] == 2 and second["step"] is None


def test_files_that_are_not_encoder_weights_are_refused_with_one_line(trained, tmp_path):
    _, recipe, checkpoint, state = trained
    garbage = tmp_path / "garbage.pt"
    torch.save({"conv.weight": torch.zeros(1)}, garbage)
    with pytest.raises(RecipeError, match=r"garbage\.pt: not an hcframe checkpoint, an encoder export, or a state dict in a layout encoder 'tiny3d_test' reads \(none\); its first key is 'conv\.weight'$"):
        parse_recipe(toy(init=garbage))
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": Path("x")}, pickled)  # a PosixPath: not loadable with weights_only=True
    with pytest.raises(RecipeError) as info:
        parse_recipe(toy(init=pickled))
    assert str(info.value).startswith(f"<recipe>: model.init: {pickled}: cannot read weights (UnpicklingError: ") and "\n" not in str(info.value)
    with pytest.raises(RecipeError, match=r"model\.init: .*nowhere\.pt: weights file not found$"):
        parse_recipe(toy(init=tmp_path / "nowhere.pt"))
    other_encoder = tmp_path / "other.pt"
    torch.save({"format": EXPORT_FORMAT, "format_version": 1, "encoder_name": "r3d_18", "encoder_args": {}, "encoder": {}}, other_encoder)
    with pytest.raises(RecipeError, match=r"other\.pt: exports encoder 'r3d_18', the recipe's encoder is 'tiny3d_test'$"):
        parse_recipe(toy(init=other_encoder))
    # an export whose shapes do not fit (width 4 -> 6): the key and both shapes are named
    export = tmp_path / "bright.pt"
    assert invoke("export-encoder", checkpoint, export, "--branch", "bright").exit_code == 0
    wider = toy(init=export)
    wider["model"]["encoder"]["width"] = 6
    with pytest.raises(RecipeError, match=r"does not fit encoder 'tiny3d_test': key 'stages\.stem\.0\.weight' has shape \(4, 3, 3, 3, 3\), the encoder's is \(6, 3, 3, 3, 3\) \(and 5 more keys of another shape\)$"):
        parse_recipe(wider)
    # eval refuses a file that does not fit before evaluating anything (exit 2)
    eval_recipe = tmp_path / "wider.toml"
    raw = toy(evals=[PROBE])
    raw["model"]["encoder"]["width"] = 6
    eval_recipe.write_text(dump_toml(raw))
    result = invoke("eval", eval_recipe, "--checkpoint", export, "--output", tmp_path / "e")
    assert result.exit_code == 2 and "has shape (4, 3, 3, 3, 3), the encoder's is (6, 3, 3, 3, 3)" in one_line(result)
    assert not (tmp_path / "e").exists()


def test_cli_refuses_a_bad_init_before_writing_anything(trained, tmp_path):
    """As a user runs it: exit 2, one line on stderr, no traceback, no run directory."""
    _, _, checkpoint, _ = trained
    recipe = tmp_path / "bad.toml"
    recipe.write_text(dump_toml(toy(init=checkpoint)))  # two branches, none named
    env = {**os.environ, "COLUMNS": "300", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "support"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "hcframe", "--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {recipe}: model.init: {checkpoint}: holds 2 branches (sup, bright); name the one that forms the encoder "
                     "(model.init_branch in a recipe, --branch for export-encoder)"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_a_run_starting_from_an_export_logs_it_and_records_it_in_the_recipe(trained, tmp_path):
    _, _, checkpoint, state = trained
    export = tmp_path / "sup.pt"
    assert invoke("export-encoder", checkpoint, export, "--branch", "sup").exit_code == 0
    recipe = tmp_path / "fine.toml"
    recipe.write_text(dump_toml(toy(split="none", init=export)))
    dry = invoke("run", recipe, "--dry-run")
    assert dry.exit_code == 0, dry.output
    result = invoke("run", recipe, "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert f"model.init: 6 tensors from hcframe encoder export {export}" in result.output
    saved = load_recipe(tmp_path / "run" / "recipe.toml")
    assert saved.model.init == str(export) and saved.model.init_branch == ""
