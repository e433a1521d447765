"""Research code that is not installed: a subclassed task registered through ``--plugin`` on the
command line and through ``hcframe.register_plugin`` from Python (examples/research_subclass.py)."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tomllib

import pytest
import torch

import hcframe
from plugin_testing import EXAMPLES, TOY_RECIPE

SUBCLASS_RECIPE = TOY_RECIPE.replace('name = "supervised"', 'name = "supervised_mlp"\nhidden = 16')


@pytest.fixture
def research_subclass(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("research_subclass")
    yield module
    sys.modules.pop("research_subclass", None)


def test_cli_plugin_option_registers_the_subclassed_task_and_runs(invoke, research_subclass, tmp_path):
    recipe = tmp_path / "sub.toml"
    recipe.write_text(SUBCLASS_RECIPE)
    run_dir = tmp_path / "run"
    result = invoke(
        ["--plugin", "research_subclass:plugin", "--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(run_dir)],
        HCFRAME_DISABLE_PLUGIN_AUTOLOAD="1",  # only the core, the test kit and the script
    )
    assert result.exit_code == 0, result.output
    assert os.environ["HCFRAME_PLUGINS"] == "research_subclass:plugin,hcframe_testkit"  # for child processes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["final_metrics"]["sup/ce"] > 0
    saved = tomllib.loads((run_dir / "recipe.toml").read_text())
    assert saved["tasks"]["sup"] == {"name": "supervised_mlp", "num_classes": 4, "hidden": 16, "label_smoothing": 0.1, "dropout": 0.0}


def test_cli_lists_the_explicit_plugin_as_its_provider(invoke, research_subclass):
    result = invoke(["--plugin", "research_subclass:plugin", "plugins", "--json", "--kind", "task"], HCFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.exit_code == 0, result.output
    providers = {r["name"]: r["provider"] for r in json.loads(result.stdout)}
    assert providers == {"online_probe": "hcframe", "supervised": "hcframe", "supervised_mlp": "research_subclass:plugin (explicit)"}


def test_unimportable_plugin_option_is_one_line_exit_2(invoke):
    result = invoke(["--plugin", "no_such_research_module:plugin", "plugins"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: cannot import plugin 'no_such_research_module:plugin' (named by --plugin or HCFRAME_PLUGINS): "
        "ModuleNotFoundError: No module named 'no_such_research_module'"
    ]


def test_python_register_plugin_and_run_recipe(fresh_registry, research_subclass, tmp_path):
    from hcframe.engine.trainer import build_model
    from hcframe.heads import SupervisedClassification
    from hcframe.recipe import load_recipe
    from hcframe.registry import get_registry
    from hcframe.run import run_recipe

    recipe_path = tmp_path / "sub.toml"
    recipe_path.write_text(SUBCLASS_RECIPE)
    hcframe.register_plugin(research_subclass.plugin, name="research_subclass")
    hcframe.register_plugin("hcframe_testkit")
    record = get_registry().get("task", "supervised_mlp")
    assert record.factory is research_subclass.SmoothedMLPClassification
    assert record.provider == "research_subclass (explicit)"

    recipe = load_recipe(recipe_path)
    task = build_model(recipe).tasks["sup"]
    assert isinstance(task, SupervisedClassification)
    assert task.label_smoothing == 0.1
    assert [type(m).__name__ for m in task.head] == ["Dropout", "Linear", "ReLU", "Linear"]
    assert task.head[1].out_features == 16 and task.head[3].out_features == 4

    summary = run_recipe(recipe, tmp_path / "run", log=lambda m: None)
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_subclassed_loss_is_label_smoothed_cross_entropy_of_its_mlp(research_subclass):
    torch.manual_seed(0)
    task = research_subclass.SmoothedMLPClassification(num_classes=3, hidden=5, label_smoothing=0.2)
    task.setup(torch.nn.Identity(), feature_dim=4)
    task.eval()
    pooled = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    feats = hcframe.EncoderOutput(pooled.view(6, 4, 1, 1, 1), pooled)
    out = task(hcframe.TaskInput(batch={"label": labels}, features=[feats], encoder=torch.nn.Identity(), step=0, max_steps=1))
    # float64 reference: smoothed targets (1 - e) one-hot + e / K, against log-softmax of the MLP.
    w1, b1, w2, b2 = (p.detach().double() for p in (task.head[1].weight, task.head[1].bias, task.head[3].weight, task.head[3].bias))
    logits = torch.relu(pooled.double() @ w1.T + b1) @ w2.T + b2
    target = torch.full((6, 3), 0.2 / 3, dtype=torch.float64)
    target[torch.arange(6), labels] += 0.8
    reference = -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()
    assert out.losses["ce"].item() == pytest.approx(reference.item(), rel=1e-5)
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        research_subclass.SmoothedMLPClassification(num_classes=3, hidden=0)


def test_script_main_registers_and_runs(fresh_registry, research_subclass, tmp_path, capsys):
    recipe_path = tmp_path / "sub.toml"
    recipe_path.write_text(SUBCLASS_RECIPE)
    code = research_subclass.main([str(recipe_path), "--output", str(tmp_path / "run"), "--plugin", "hcframe_testkit", "--set", "train.steps=1"])
    assert code == 0
    assert capsys.readouterr().out.startswith("completed: 1 steps")
    assert research_subclass.main([str(tmp_path / "missing.toml"), "-o", str(tmp_path / "r2")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.toml'}: recipe file not found"
