"""Unknown component names: the error suggests the near miss and lists what is installed, both from
Python and through a recipe on the command line."""

from __future__ import annotations

import pytest

from hcframe.registry import UnknownComponentError, get_registry
from plugin_testing import TOY_RECIPE, error_lines


def test_create_unknown_encoder_suggests_the_near_miss_and_lists_installed(fresh_registry):
    registry = get_registry()
    installed = registry.names("encoder")
    assert {"r2plus1d_18", "r3d_18", "s3d"} <= set(installed)
    with pytest.raises(UnknownComponentError) as info:
        registry.create("encoder", "r2plus1d18")
    message = str(info.value)
    assert message.startswith("no encoder 'r2plus1d18'; did you mean 'r2plus1d_18'")
    assert message.endswith(f"installed encoders: {', '.join(installed)}")
    assert "\n" not in message


def test_unknown_kind_lists_the_kinds(fresh_registry):
    with pytest.raises(UnknownComponentError, match="no component kind 'encoders'; kinds are dataset, transform, encoder, head, task, teacher, hook"):
        get_registry().get("encoders", "r3d_18")


def test_unknown_encoder_in_a_recipe_is_exit_2_naming_the_key_path(invoke, tmp_path):
    recipe = tmp_path / "toy.toml"
    recipe.write_text(TOY_RECIPE.replace('"tiny3d_test"', '"r2plus1d18"'))
    result = invoke(["--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: {recipe}: model.encoder.name: no encoder 'r2plus1d18'; did you mean 'r2plus1d_18'")
    assert "tiny3d_test" in line and "r3d_18" in line  # the installed list
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_plugins_of_an_unknown_kind_is_a_usage_error(invoke):
    result = invoke(["plugins", "--kind", "encoders"])
    assert result.exit_code == 2
    assert "'encoders' is not one of 'dataset', 'transform', 'encoder'" in result.stderr
    assert result.stdout == ""  # no empty table
