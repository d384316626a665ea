"""The import graph of the minimoe package, from the source (ast, nothing is imported): every
module with the package modules it imports, at any depth of the file (function-level imports
count too), and any cycle.

    python bench/import_graph.py            # the graph, bottom-up, and "no cycle" (exit 0)
    python bench/import_graph.py --dot      # the same as Graphviz dot

Exit status 1 when a cycle exists.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minimoe"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute names of what a `from ... import ...` reaches: the module it names, or, for
    `from . import a, b`, the submodules a and b (not the package around them, which every
    submodule sits in anyway)."""
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = importer.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    names = [f"{base}.{a.name}" for a in node.names]
    return names if node.module is None else [base] + names


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                deps.update(resolve(name, path.name == "__init__.py", node))
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        edges[name] = {d for d in deps if d in files and d != name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for d in sorted(edges[n]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def bottom_up(edges: dict[str, set[str]]) -> list[str]:
    """Modules ordered so that each comes after everything it imports."""
    order, done = [], set()

    def place(n: str) -> None:
        if n in done:
            return
        done.add(n)
        for d in sorted(edges[n]):
            place(d)
        order.append(n)
    for n in sorted(edges):
        place(n)
    return order


def main() -> None:
    edges = graph()
    found = cycle(edges)
    if "--dot" in sys.argv:
        print("digraph minimoe {")
        for n in sorted(edges):
            for d in sorted(edges[n]):
                print(f'  "{n}" -> "{d}";')
        print("}")
    else:
        if found is None:
            for n in bottom_up(edges):
                short = sorted(d.removeprefix("minimoe.") for d in edges[n])
                print(f"{n.removeprefix('minimoe.') or 'minimoe':<16} <- {', '.join(short) or '-'}")
        print("cycle: " + " -> ".join(found) if found else "no cycle")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
