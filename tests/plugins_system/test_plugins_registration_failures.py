"""A plugin whose registration fails is all or nothing: an explicit ``--plugin`` whose hook raises,
or that registers an invalid name, is one line (exit 2); an installed one is reported and skipped
whole: the components it registered before it raised are neither listed nor buildable, and its
commands are not added."""

from __future__ import annotations

import json
import sys

import pytest

from hcframe.registry import PluginError, Registry, hookimpl
from plugin_testing import TOY_RECIPE, error_lines
from test_plugins_broken import make_distribution

PARTIAL_SOURCE = """\
import click
import hcframe
from hcframe.heads import SupervisedClassification

@hcframe.hookimpl
def hcframe_register(registry):
    registry.add("task", "half_registered_task", SupervisedClassification)
    registry.add("head", "half_registered_head", SupervisedClassification)
    raise RuntimeError("the third component failed to import")

@hcframe.hookimpl
def hcframe_add_commands(cli):
    @cli.command("half-plugin-command")
    def command():
        click.echo("should not exist")
"""

BAD_NAME_SOURCE = """\
import hcframe
from hcframe.heads import SupervisedClassification

@hcframe.hookimpl
def hcframe_register(registry):
    registry.add("task", "fine_name", SupervisedClassification)
    registry.add("task", "bad name!", SupervisedClassification)
"""


@pytest.fixture
def plugin_modules(tmp_path, monkeypatch):
    """Importable modules ``partial_plugin_mod`` and ``bad_name_plugin_mod``."""
    (tmp_path / "partial_plugin_mod.py").write_text(PARTIAL_SOURCE)
    (tmp_path / "bad_name_plugin_mod.py").write_text(BAD_NAME_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("partial_plugin_mod", "bad_name_plugin_mod"):
        sys.modules.pop(module, None)


def test_explicit_plugin_whose_hook_raises_is_one_line_exit_2(invoke, plugin_modules):
    result = invoke(["--plugin", "partial_plugin_mod", "plugins"], HCFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: plugin 'partial_plugin_mod' (named by --plugin or HCFRAME_PLUGINS) failed to register: "
        "RuntimeError: the third component failed to import"
    ]


def test_explicit_plugin_with_an_invalid_name_is_one_line_exit_2(invoke, plugin_modules, tmp_path):
    recipe = tmp_path / "toy.toml"
    recipe.write_text(TOY_RECIPE)
    result = invoke(["--plugin", "hcframe_testkit", "--plugin", "bad_name_plugin_mod", "run", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: plugin 'bad_name_plugin_mod' (named by --plugin or HCFRAME_PLUGINS) failed to register: "
        "bad_name_plugin_mod (explicit): task name 'bad name!' is not valid: use letters, digits, '_', '.' and '-', "
        "starting with a letter or '_'"
    ]
    assert not (tmp_path / "run").exists()


def test_installed_plugin_that_raised_midway_is_skipped_whole(invoke, tmp_path, monkeypatch):
    site = tmp_path / "site"
    make_distribution(site, "hcframe-half", {"half": "half_dist_mod"}, {"half_dist_mod": PARTIAL_SOURCE})
    monkeypatch.syspath_prepend(str(site))
    from hcframe.cli import cli

    monkeypatch.setattr(cli, "_plugins_loaded", False)  # report plugin failures again in this process
    try:
        listed = invoke(["plugins", "--json"])
        assert listed.exit_code == 0, listed.output
        [warning] = [l for l in listed.stderr.splitlines() if "half_dist_mod" in l]
        assert warning == (
            "warning: plugin half = half_dist_mod from hcframe-half failed to load and was skipped: "
            "RuntimeError: the third component failed to import"
        )
        names = {r["name"] for r in json.loads(listed.stdout)}
        assert "half_registered_task" not in names and "half_registered_head" not in names
        assert {"supervised", "linear"} <= names  # the others are all there

        recipe = tmp_path / "toy.toml"
        recipe.write_text(TOY_RECIPE.replace('name = "supervised"', 'name = "half_registered_task"'))
        run = invoke(["--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(tmp_path / "run")])
        assert run.exit_code == 2
        [line] = error_lines(run.stderr)
        assert line.startswith(f"error: {recipe}: tasks.sup.name: no task 'half_registered_task'")
        assert "Traceback" not in run.output

        help_text = invoke(["--help"])
        assert "half-plugin-command" not in help_text.stdout  # its commands were not added
    finally:
        sys.modules.pop("half_dist_mod", None)


class _AddsThenRaises:
    @hookimpl
    def hcframe_register(self, registry: Registry) -> None:
        registry.add("encoder", "kept_if_not_rolled_back", dict)
        raise ValueError("boom")


class _AddsFine:
    @hookimpl
    def hcframe_register(self, registry: Registry) -> None:
        registry.add("encoder", "kept_if_not_rolled_back", dict)


def test_registry_rolls_back_a_failed_plugin_and_can_register_its_names_again():
    registry = Registry()
    with pytest.raises(ValueError, match="boom"):
        registry.register_plugin(_AddsThenRaises(), name="half", provider="half-dist")
    assert "kept_if_not_rolled_back" not in registry.names("encoder")
    assert not registry._pm.has_plugin("half")
    registry.register_plugin(_AddsFine(), name="fine", provider="fine-dist")  # no "registered twice"
    assert registry.get("encoder", "kept_if_not_rolled_back").provider == "fine-dist"


def test_invalid_names_and_factories_are_one_line_plugin_errors():
    registry = Registry()
    for name in ("bad name!", "", "1starts_with_digit", "ok/slash"):
        with pytest.raises(PluginError, match=rf"^<python>: task name {name!r} is not valid"):
            registry.add("task", name, dict)
    with pytest.raises(PluginError, match=r"^<python>: task 'x': 3 is not a class or function$"):
        registry.add("task", "x", 3)
    assert registry.names("task") == []
