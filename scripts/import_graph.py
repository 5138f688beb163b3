"""Print the package's import graph (function-level imports included) and its cycles: the source of
the import list in ARCHITECTURE.md. Run from the repository root: python scripts/import_graph.py"""
import ast, pathlib, collections
root = pathlib.Path("src/gradsae")
mods = {}
for p in sorted(root.rglob("*.py")):
    rel = p.relative_to(root).with_suffix("")
    name = ".".join(rel.parts)
    if name.endswith("__init__"): name = name[:-9] or "__init__"
    if name in ("__main__",): continue
    mods[name] = p
deps = collections.defaultdict(set)
for name, p in mods.items():
    pkg = name.split(".")[:-1] if not p.name == "__init__.py" else name.split(".")
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            target = ".".join(base + ([node.module] if node.module else []))
            cands = [target] + [f"{target}.{a.name}" for a in node.names] if target else [a.name for a in node.names]
            for c in cands:
                c = c.strip(".")
                if c in mods and c != name: deps[name].add(c)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("gradsae."):
                    c = a.name[8:]
                    if c in mods: deps[name].add(c)
for name in sorted(mods):
    if name in ("__init__",): continue
    d = sorted(deps[name] - {"__init__"})
    print(f"{name:22s} -> {', '.join(d) if d else '(nothing)'}")
# cycles
def cyc():
    out=set()
    def dfs(n, path):
        for m in deps[n]:
            if m in path: out.add(tuple(path[path.index(m):]+[m])); continue
            dfs(m, path+[m]) if len(path)<12 else None
    for n in mods: dfs(n,[n])
    return out
cs = {frozenset(c) for c in cyc()}
print("cycles:", [sorted(c) for c in cs] or "none")
