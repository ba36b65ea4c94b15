"""The import graph of posttrain/ (built with ast from its own source) has no cycle between modules, and no
package imports one that comes after it in the layer table of docs/ARCHITECTURE.md.

Imports inside functions count (they hide the graph, they do not remove an edge); imports under
``if TYPE_CHECKING:`` do not (they never run)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import posttrain

PACKAGE = Path(posttrain.__file__).parent
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"


def layer_order(text: str) -> list[str]:
    """The first column of the table under '## Layers', in order: ``losses``, ``ops``, ``config``, ..."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| `posttrain/([a-z_]+)(?:/|\.py)`", section, re.M)]


def module_imports(root: Path) -> dict[str, set[str]]:
    """module -> the posttrain modules it imports (``from posttrain.x import name`` counts as ``posttrain.x.name``
    when that is a module, else ``posttrain.x``)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            visit(v)
    return found


def layer_of(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def upward_imports(graph: dict[str, set[str]], order: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = layer_of(source), layer_of(target)
            if a != b and a in rank and b in rank and rank[b] > rank[a]:
                bad.append(f"{source} -> {target} ({a} is above {b} in the layer table)")
    return bad


def test_the_layer_table_names_every_package():
    order = layer_order(ARCHITECTURE.read_text())
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    files = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert set(order) == packages | files, f"layer table {order} vs posttrain/ {sorted(packages | files)}"


def test_no_import_cycles():
    assert cycles(module_imports(PACKAGE)) == []


def test_no_import_goes_up_the_layer_table():
    assert upward_imports(module_imports(PACKAGE), layer_order(ARCHITECTURE.read_text())) == []


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "posttrain"
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    for folder in (pkg, pkg / "low", pkg / "high"):
        (folder / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from posttrain.high import b\n")
    (pkg / "high" / "b.py").write_text("from posttrain.low.a import f\nfrom . import c\n")
    (pkg / "high" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                       "    from posttrain.high import b\n")
    graph = module_imports(pkg)
    assert graph["posttrain.high.b"] == {"posttrain.low.a", "posttrain.high.c"}
    assert graph["posttrain.high.c"] == set()
    assert cycles(graph) == [["posttrain.high.b", "posttrain.low.a"]]
    assert upward_imports(graph, ["low", "high"]) == [
        "posttrain.low.a -> posttrain.high.b (low is above high in the layer table)"]
    text = "## Layers\n| `posttrain/low/` | x | y |\n| `posttrain/cli.py` | x | y |\n## Next\n| `posttrain/no/` |"
    assert layer_order(text) == ["low", "cli"]
