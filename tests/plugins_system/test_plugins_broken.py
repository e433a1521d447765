"""Installed plugins that misbehave: one that raises on import is reported by name and skipped
(fatal only in strict mode, never imported with autoload off); two that register the same name
stop with an error naming both distributions.

The "installed" distributions are fake ones: a ``*.dist-info`` folder with METADATA and
entry_points.txt on the path, which is all ``importlib.metadata`` looks at."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hcframe.registry import PluginError, Registry, build_registry, hookimpl
from plugin_testing import run_hcframe


def make_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write an installed-looking distribution ``name`` (version 1.0) into ``root``."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hcframe]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


BROKEN_SOURCE = """\
import os, pathlib
# Leave a trace, so a test can tell whether the module was imported at all.
pathlib.Path(os.environ["BROKEN_PLUGIN_MARKER"]).write_text("imported")
raise RuntimeError("this plugin is broken on purpose")
"""


@pytest.fixture
def broken_site(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "hcframe-broken-example", {"broken": "broken_plugin_mod"}, {"broken_plugin_mod": BROKEN_SOURCE})
    marker = tmp_path / "imported.txt"
    return site, {"BROKEN_PLUGIN_MARKER": str(marker)}, marker


def test_broken_plugin_is_reported_and_the_cli_still_works(broken_site):
    site, env, marker = broken_site
    result = run_hcframe(["plugins", "--json"], pythonpath=(site,), env=env)
    assert result.returncode == 0, result.stderr
    assert marker.exists()  # it was imported, raised, and was skipped
    warning = [line for line in result.stderr.splitlines() if "broken_plugin_mod" in line]
    assert len(warning) == 1
    assert warning[0].startswith("warning: plugin broken = broken_plugin_mod from hcframe-broken-example failed to load")
    assert "RuntimeError: this plugin is broken on purpose" in warning[0]
    assert "Traceback" not in result.stderr
    records = json.loads(result.stdout)
    providers = {r["provider"] for r in records}
    assert "hcframe" in providers and "hcframe-backbones" in providers
    assert "hcframe-broken-example" not in providers


STRICT_ERROR = (
    "error: plugin broken = broken_plugin_mod from hcframe-broken-example failed to load: "
    "RuntimeError: this plugin is broken on purpose"
)


def test_broken_plugin_is_fatal_with_strict_option(broken_site):
    site, env, marker = broken_site
    result = run_hcframe(["--strict-plugins", "plugins"], pythonpath=(site,), env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [STRICT_ERROR]


def test_broken_plugin_is_fatal_with_strict_environment(broken_site, invoke, monkeypatch):
    # In this process: the fake distribution goes on sys.path, where importlib.metadata looks.
    site, env, marker = broken_site
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("BROKEN_PLUGIN_MARKER", env["BROKEN_PLUGIN_MARKER"])
    result = invoke(["plugins"], HCFRAME_STRICT_PLUGINS="1")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [STRICT_ERROR]
    assert "broken_plugin_mod" not in sys.modules


def test_autoload_off_lists_only_the_core_and_never_imports_the_broken_plugin(broken_site):
    site, env, marker = broken_site
    result = run_hcframe(["plugins", "--json"], pythonpath=(site,), env={**env, "HCFRAME_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert not marker.exists()
    records = json.loads(result.stdout)
    assert records and {r["provider"] for r in records} == {"hcframe"}
    assert {(r["kind"], r["name"]) for r in records} >= {("task", "supervised"), ("transform", "normalize"), ("head", "linear")}


# --- duplicates ----------------------------------------------------------------------------------
class _Registers:
    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name

    @hookimpl
    def hcframe_register(self, registry: Registry) -> None:
        registry.add(self.kind, self.name, dict)


def test_duplicate_name_names_both_providers():
    registry = Registry()
    registry.register_plugin(_Registers("encoder", "twin"), name="a", provider="hcframe-first", version="1.0")
    # The same name in another kind is not a clash.
    registry.register_plugin(_Registers("head", "twin"), name="b", provider="hcframe-second", version="2.0")
    with pytest.raises(PluginError) as info:
        registry.register_plugin(_Registers("encoder", "twin"), name="c", provider="hcframe-third", version="3.0")
    assert str(info.value) == (
        "encoder 'twin' is registered twice: by hcframe-first 1.0 and by hcframe-third 3.0; uninstall one of them"
    )
    assert registry.get("encoder", "twin").provider == "hcframe-first"


DUPLICATE_SOURCE = """\
import hcframe
from hcframe.heads import SupervisedClassification

@hcframe.hookimpl
def hcframe_register(registry):
    registry.add("task", "twin_task", SupervisedClassification)
"""


def test_duplicate_from_two_installed_distributions_is_fatal_even_when_not_strict(tmp_path, monkeypatch, fresh_registry):
    site = tmp_path / "site"
    make_distribution(site, "hcframe-dup-one", {"one": "dup_one_mod"}, {"dup_one_mod": DUPLICATE_SOURCE})
    make_distribution(site, "hcframe-dup-two", {"two": "dup_two_mod"}, {"dup_two_mod": DUPLICATE_SOURCE})
    monkeypatch.syspath_prepend(str(site))
    try:
        with pytest.raises(PluginError, match=r"task 'twin_task' is registered twice: by hcframe-dup-one 1\.0 and by hcframe-dup-two 1\.0"):
            build_registry(autoload=True, strict=False)
    finally:
        for module in ("dup_one_mod", "dup_two_mod"):
            sys.modules.pop(module, None)


def test_strict_option_after_plugin_option_is_still_strict(broken_site, invoke, monkeypatch):
    site, env, marker = broken_site
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("BROKEN_PLUGIN_MARKER", env["BROKEN_PLUGIN_MARKER"])
    result = invoke(["--plugin", "hcframe_testkit", "--strict-plugins", "plugins"])
    assert result.exit_code == 2
