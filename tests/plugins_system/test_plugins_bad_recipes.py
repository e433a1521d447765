"""Bad recipes through ``hcframe run``: exit code 2, one stderr line ``error: <file>: <key path>: ...``
naming what to do, no traceback, and nothing started (no run directory).

Autoload is off so that only the core and the test kit are registered: the messages (which list
installed components) then do not depend on which plugins this machine has."""

from __future__ import annotations

import pytest

from plugin_testing import TOY_RECIPE


def _expect_one_error_line(stderr: str, expected_start: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith(expected_start), lines[0]
    return lines[0]


CASES = {
    "unknown key with suggestion": (
        TOY_RECIPE.replace("batch_size = 4", "batch_sise = 4"),
        [],
        "train.batch_sise: unknown key; did you mean 'batch_size'?",
    ),
    "unknown key in a component table": (
        TOY_RECIPE.replace("num_classes = 4", "num_classes = 4\nlabel_smothing = 0.1"),
        [],
        "tasks.sup.label_smothing: unknown key for task 'supervised'; did you mean 'label_smoothing'?",
    ),
    "wrong type": (
        TOY_RECIPE.replace("steps = 2", 'steps = "two"'),
        [],
        "train.steps: expected an integer, got str 'two'",
    ),
    "wrong type in a component table": (
        TOY_RECIPE,
        ["--set", "tasks.sup.num_classes=4.5"],
        "tasks.sup.num_classes: expected an integer, got float 4.5",
    ),
    "unknown component with near-miss name": (
        TOY_RECIPE.replace('name = "supervised"', 'name = "supervized"'),
        [],
        "tasks.sup.name: no task 'supervized'; did you mean 'supervised'? installed tasks: brightness, nonfinite_at, online_probe, supervised",
    ),
    "bad --set syntax": (
        TOY_RECIPE,
        ["--set", "train.steps"],
        "--set train.steps: expected KEY.PATH=VALUE",
    ),
    "--set through a value": (
        TOY_RECIPE,
        ["--set", "train.steps.x=1"],
        "--set train.steps.x=1: train.steps is a value, not a table",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_recipe_is_one_error_line_and_exit_2(case, invoke, tmp_path):
    text, extra, problem = CASES[case]
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    run_dir = tmp_path / "run"
    result = invoke(["--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(run_dir), *extra], HCFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.exit_code == 2
    line = _expect_one_error_line(result.stderr, f"error: {recipe}: ")
    assert line == f"error: {recipe}: {problem}"
    assert not run_dir.exists()


def test_missing_recipe_file(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere.toml"
    result = invoke(["--plugin", "hcframe_testkit", "run", str(missing)], HCFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.exit_code == 2
    assert _expect_one_error_line(result.stderr, "error: ") == f"error: {missing}: recipe file not found"
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_message_with_brackets_survives(invoke, tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[transform]\nname = "normalize"\n')
    result = invoke(["run", str(recipe)], HCFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {recipe}: data: missing table [data]"
