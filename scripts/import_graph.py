"""The package's import graph (function-level imports included) and its cycles: the import list in
ARCHITECTURE.md, which a test keeps equal to the code.

    python scripts/import_graph.py            # print it
    python scripts/import_graph.py --write    # rewrite the block between the markers in ARCHITECTURE.md
"""

from __future__ import annotations

import ast
import collections
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- import-graph: begin -->", "<!-- import-graph: end -->"


def module_deps(root: pathlib.Path = REPO / "src" / "gradsae") -> dict[str, set[str]]:
    """Module name (``squad.run``) -> the package modules it imports, at any depth of the file."""
    mods = {}
    for p in sorted(root.rglob("*.py")):
        name = ".".join(p.relative_to(root).with_suffix("").parts)
        if name.endswith("__init__"):
            name = name[:-9] or "__init__"
        if name != "__main__":
            mods[name] = p
    deps: dict[str, set[str]] = collections.defaultdict(set)
    for name, p in mods.items():
        pkg = name.split(".") if p.name == "__init__.py" else name.split(".")[:-1]
        for node in _runtime_nodes(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" if target else a.name for a in node.names]
                # ``from . import x`` where x is a module imports x (the package is already loaded)
                cands = [s for s in subs if s in mods] if node.module is None else [target] + subs
                deps[name].update(c.strip(".") for c in cands if c.strip(".") in mods and c.strip(".") != name)
            elif isinstance(node, ast.Import):
                deps[name].update(
                    a.name[8:] for a in node.names if a.name.startswith("gradsae.") and a.name[8:] in mods
                )
    return {name: deps[name] - {"__init__"} for name in mods if name != "__init__"}


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                todo.extend(child.orelse)
                continue
            todo.append(child)


def cycles(deps: dict[str, set[str]]) -> list[list[str]]:
    """The sets of modules that import each other (directly or through others), each sorted."""
    found = set()

    def dfs(n: str, path: list[str]) -> None:
        for m in deps.get(n, ()):
            if m in path:
                found.add(frozenset(path[path.index(m) :]))
            elif len(path) < 12:
                dfs(m, path + [m])

    for n in deps:
        dfs(n, [n])
    return sorted(sorted(c) for c in found)


def render(deps: dict[str, set[str]]) -> str:
    lines = [f"{name:22s} -> {', '.join(sorted(d)) if d else '(nothing)'}" for name, d in sorted(deps.items())]
    cyc = cycles(deps)
    lines.append("cycles: " + ("; ".join(" <-> ".join(c) for c in cyc) if cyc else "none"))
    return "\n".join(lines)


def documented(text: str) -> str:
    """The import list as ARCHITECTURE.md has it (between the markers, inside a code fence)."""
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return block.strip().removeprefix("```").removesuffix("```").strip()


def main() -> None:
    graph = render(module_deps())
    if sys.argv[1:] == ["--write"]:
        path = REPO / "ARCHITECTURE.md"
        text = path.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        path.write_text(f"{head}{BEGIN}\n```\n{graph}\n```\n{END}{tail}")
    else:
        print(graph)


if __name__ == "__main__":
    main()
