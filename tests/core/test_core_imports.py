"""The core's modules import each other without cycles, counting imports inside functions too (a
lazy import that closes a loop only hides the tangle) and the packages an import runs first
(``import a.b.c`` runs ``a/b/__init__``); ``if TYPE_CHECKING:`` blocks do not run and are left out."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return test is not None and ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The core modules ``path`` imports: ``import a.b`` and ``from a.b import c`` name ``a.b``, or
    ``a.b.c`` when that is a module itself; relative imports are resolved against ``path``."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    # Importing a.b.c runs a/__init__ and a/b/__init__ first: those count too, except the
    # importer's own enclosing packages (already being imported when it runs).
    enclosing = {".".join(own.split(".")[:i]) for i in range(1, own.count(".") + 1)}
    with_parents = set(found)
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {m for m in with_parents if m in modules and m != own and m not in enclosing}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(CORE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_core_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) >= 20 and "hcframe.engine.trainer" in graph
    assert cycles(graph) == []


def test_the_cycle_finder_finds_lazy_and_relative_loops(tmp_path, monkeypatch):
    pkg = tmp_path / "core" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.d import y\n")
    (pkg / "sub" / "d.py").write_text("from pkg.e import z\n")
    (pkg / "e.py").write_text("from pkg.sub.f import w\n")  # runs pkg/sub/__init__ first: a loop
    (pkg / "sub" / "f.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "CORE", tmp_path / "core")
    graph = import_graph()
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == set()
    assert graph["pkg.sub.d"] == {"pkg.e"} and graph["pkg.e"] == {"pkg.sub", "pkg.sub.f"}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.e", "pkg.sub", "pkg.sub.d"]]
