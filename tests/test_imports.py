"""No import circles (function-level imports included) among the experiment, influence and report modules."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gradsae"
MINE = (
    "gradsae.squad",
    "gradsae.report",
    "gradsae.explain",
    "gradsae.influence",
    "gradsae.plots",
    "gradsae.distributed",
    "gradsae.io",
    "gradsae.config",
    "gradsae.cli",
    "gradsae.demo",
)


def _graph() -> dict[str, set[str]]:
    mods = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def test_no_import_cycle_through_the_experiment_modules():
    graph = _graph()
    assert "gradsae.squad.run" in graph and "gradsae.report" in graph["gradsae.squad.run"]

    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, seen + (n,))) for n in graph[a])

    circles = [m for m in graph if m.startswith(MINE) and reaches(m, m)]
    assert circles == []
