"""The layering of ARCHITECTURE.md, checked on the source: imports point down, and no module cycles.

Every import counts, including those inside functions (they hide cycles, they do not remove them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> import prefix (pyproject's package-dir).
FOLDERS = {"hark": "hark", "training": "hark.training", "exporters": "hark.exporters", "plugin": "hark.plugin",
           "workers": "hark.workers", "demo": "hark.demo", "cli": "hark.cli"}
# Layer of each prefix, and the layers each may import. `core` is everything else under hark.
ALLOWED = {
    "core": {"core"},
    "training": {"training", "core"},
    "exporters": {"exporters", "training", "core"},
    "plugin": {"plugin", "core"},
    "workers": {"workers", "plugin", "core"},
    "demo": {"demo", "workers", "plugin", "exporters", "training", "core"},
    "cli": {"cli", "demo", "workers", "plugin", "exporters", "training", "core"},
}


def layer_of(module: str) -> str:
    for name in ("training", "exporters", "plugin", "workers", "demo", "cli"):
        if module == f"hark.{name}" or module.startswith(f"hark.{name}."):
            return name
    return "core"


def source_modules() -> dict[str, Path]:
    found = {}
    for folder, prefix in FOLDERS.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if folder == "hark" and parts and parts[0] in {"training", "exporters", "plugin", "workers", "demo",
                                                            "cli"}:
                continue
            found[".".join([prefix, *parts])] = path
    return found


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """hark modules that `module` imports anywhere in its source (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in known and name.startswith("hark") and name != module:
                targets.add(name)
    return targets


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    return {m: imports_of(m, p, known) for m, p in modules.items()}


def test_the_scan_sees_the_package(graph):
    # A scan that found nothing would pass every check below.
    assert {"hark.bundle", "hark.store", "hark.workers.app", "hark.plugin.search", "hark.cli.main"} <= set(graph)
    assert "hark.workers.reindex" in graph["hark.workers.app"]
    assert "hark.workers.submit" in graph["hark.workers.reindex"]


def test_imports_point_down_the_layers(graph):
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                   if layer_of(t) not in ALLOWED[layer_of(m)])
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles(graph):
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(sorted(c)) for c in cycles)


def test_cycle_finder_finds_cycles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(component)
    return result
