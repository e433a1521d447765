"""The core never imports a plugin: not in its source, and not at run time with autoload off."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from plugin_testing import EXAMPLES, REPO, SUPPORT

CORE = REPO / "core"


def plugin_packages() -> set[str]:
    """Top-level packages of every plugin and example distribution (folders with __init__.py one
    level below plugins/<dist>/ and examples/<dist>/), plus the example scripts' module names."""
    names = set()
    for parent in (REPO / "plugins", EXAMPLES):
        for dist in sorted(p for p in parent.iterdir() if p.is_dir()):
            names.update(pkg.name for pkg in dist.iterdir() if (pkg / "__init__.py").is_file())
    names.update(p.stem for p in EXAMPLES.glob("*.py"))
    return names


def imported_top_level_names(path: Path) -> set[tuple[int, str]]:
    """(line, top-level module) for every absolute import and every literal importlib.import_module
    / __import__ call in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__"):
                found.add((node.lineno, node.args[0].value.split(".")[0]))
    return found


def test_plugin_package_discovery_finds_the_known_plugins():
    packages = plugin_packages()
    assert {"hcframe_backbones", "hcframe_speed", "research_subclass"} <= packages
    assert "hcframe" not in packages


def test_core_source_imports_no_plugin_package():
    packages = plugin_packages()
    sources = sorted(CORE.rglob("*.py"))
    assert len(sources) >= 10
    offending = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in sources
        for line, module in sorted(imported_top_level_names(path))
        if module in packages
    ]
    assert offending == []


def test_the_scan_would_catch_an_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom hcframe_speed.task import x\nimport importlib\nimportlib.import_module('hcframe_backbones.plugin')\n")
    found = imported_top_level_names(bad)
    assert {(2, "hcframe_speed"), (4, "hcframe_backbones")} <= found


def test_core_modules_at_run_time_import_no_plugin_with_autoload_off():
    packages = sorted(plugin_packages())
    program = f"""
import json, sys
import hcframe, hcframe.cli, hcframe.recipe, hcframe.engine.trainer, hcframe.run
from hcframe.registry import get_registry
providers = sorted({{r.provider for r in get_registry().list()}})
packages = {packages!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in packages)
print(json.dumps({{"providers": providers, "loaded": loaded}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCFRAME_")}
    env["HCFRAME_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = str(SUPPORT)
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"providers": ["hcframe"], "loaded": []}


def test_core_source_names_no_plugin_vocabulary():
    """What plugins log and take as arguments is theirs to declare (metric declarations, a dataset's
    clip shape): the core names none of it."""
    words = re.compile(r"\b(miou|pos_sim|neg_sim|queue_fill|pixel_acc|valid_fraction|nce|kl|clip_len|crop_size|contrastive_accuracy|parsing_quality)\b")
    found = [
        f"{path.relative_to(REPO)}:{number}: {match.group(0)}"
        for path in sorted(CORE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for match in words.finditer(line)
    ]
    assert found == []
