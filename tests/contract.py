"""The layer contract of raymlops, checked over the source's syntax trees.

Every `import` and `from … import` counts, at module level, inside functions and under
`TYPE_CHECKING` alike, so a forbidden dependency cannot hide behind a function-level import.
The rules (README "Development" and each package's docstring say the same):

- each capability package has a layer; a module may import its own package and packages
  of lower layers only (packages on one layer — train, serve, batch, monitor — not each
  other);
- no cycle between modules, whatever the layers;
- no private name (`_x`) or private module is imported from another package;
- only `cli` imports click;
- nothing inside a package imports the package root `raymlops` or a compatibility module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

#: Layer of each capability package, bottom (0) to top.
LAYERS: dict[str, int] = {
    "core": 0,
    "data": 1,
    "model": 2,
    "registry": 3,
    "train": 4,
    "serve": 4,
    "batch": 4,
    "monitor": 4,
    "loop": 5,
    "cluster": 6,
    "cli": 7,
}
#: Modules outside the layers: the package root (lazy re-exports of the public API) and
#: compatibility paths kept for one release. Nothing in a package may import them.
OUTSIDE = frozenset({"raymlops", "raymlops.serving"})


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    names: tuple[str, ...]
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect(root: Path) -> tuple[set[str], list[Edge]]:
    """Every module under `root/raymlops` and every import in it."""
    modules: set[str] = set()
    trees: dict[str, tuple[Path, ast.AST]] = {}
    for path in sorted((root / "raymlops").rglob("*.py")):
        name = module_name(root, path)
        modules.add(name)
        trees[name] = (path, ast.parse(path.read_text(), filename=str(path)))
    edges: list[Edge] = []
    for name, (path, tree) in trees.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges += [Edge(name, alias.name, (), node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node.module, node.level)
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    if child in modules:  # `from raymlops.loop import gate`: a module
                        edges.append(Edge(name, child, (), node.lineno))
                    else:
                        edges.append(Edge(name, base, (alias.name,), node.lineno))
    return modules, edges


def _absolute(module: str, is_package: bool, target: str | None, level: int) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "raymlops" and parts[1] in LAYERS else None


def violations(root: Path) -> list[str]:
    """What breaks the contract, one line each: `source -> target: why`."""
    modules, edges = collect(root)
    found: set[str] = set()
    for edge in edges:
        found.update(_edge_violations(edge, modules))
    found.update(_cycles(modules, edges))
    return sorted(found)


def _edge_violations(edge: Edge, modules: set[str]) -> list[str]:
    source_pkg = package_of(edge.source)
    out = []
    head = f"{edge.source} -> {edge.target}"
    if edge.target.split(".")[0] == "click" and source_pkg != "cli" and edge.source != "raymlops":
        out.append(f"{head}: click outside cli")
    if not edge.target.startswith("raymlops") or edge.source in OUTSIDE:
        return out
    target = edge.target
    if target in OUTSIDE:
        return [*out, f"{head}: imports {target}, which is outside the layers"]
    if source_pkg is None:
        return [*out, f"{head}: {edge.source} is in no capability package"]
    target_pkg = package_of(target)
    if target_pkg is None:
        return [*out, f"{head}: {target} is in no capability package"]
    if target_pkg != source_pkg:
        if LAYERS[target_pkg] >= LAYERS[source_pkg]:
            direction = "sideways" if LAYERS[target_pkg] == LAYERS[source_pkg] else "upward"
            out.append(f"{head}: {direction} ({source_pkg} may not import {target_pkg})")
        private = [n for n in edge.names if n.startswith("_")]
        private += [p for p in target.split(".")[2:] if p.startswith("_")]
        if private:
            out.append(f"{head}: private {', '.join(private)} from another package")
    return out


def _cycles(modules: set[str], edges: list[Edge]) -> list[str]:
    """One line per import cycle (strongly connected group of two or more modules)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for edge in edges:
        if edge.target in modules and edge.source != edge.target:
            if edge.source in OUTSIDE or edge.target in OUTSIDE:
                continue
            if _is_parent_package(edge.source, edge.target):
                continue
            graph[edge.source].add(edge.target)
    out = []
    for group in _strongly_connected(graph):
        if len(group) > 1:
            out.append(f"cycle: {' <-> '.join(sorted(group))}")
    return out


def _is_parent_package(source: str, target: str) -> bool:
    """A package importing its own submodule (re-exports in `__init__`) is no cycle."""
    return target.startswith(source + ".")


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(group)
    return groups
