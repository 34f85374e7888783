"""Import cycles between flowerid's modules and between its packages (ast only: nothing is imported).

Every import counts, at module level or inside a function (a lazy import still ties the layers),
except those under `if TYPE_CHECKING:`, which never run. `flowerid/__init__.py` is left out: it is the
Python API, a facade that imports from every layer lazily (on attribute access), and no module imports it
for anything but its subpackages; so are `__main__.py` and `cli.py`, entry points that only forward to
apps/cli.py. Exit 1 and list the cycles when there are any.

    python scripts/import_cycles.py [src/flowerid]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path, modules: set[str]) -> set[str]:
    """The flowerid modules `path` imports (a `from pkg import name` that names a module counts as it)."""
    here = module_name(root, path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            named = {f"{base}.{a.name}" for a in node.names}
            found |= (named & modules) or {base}  # `from pkg import module` imports the module
    ancestors = {".".join(here.split(".")[:i]) for i in range(1, here.count(".") + 1)}
    return {m for m in found if m in modules and m != here and m not in ancestors}  # parents always load first


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "flowerid")
    files = sorted(root.rglob("*.py"))
    modules = {module_name(root, p) for p in files}
    entry = {root / "__init__.py", root / "__main__.py", root / "cli.py"}  # the API facade, the entry points
    graph = {module_name(root, p): imports(root, p, modules) for p in files if p not in entry}
    graph = {m: deps - {root.name} for m, deps in graph.items()}
    top = root.name

    def package(m: str) -> str:  # flowerid.backbones.cache -> flowerid.backbones; base modules -> flowerid
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or (m in graph and (root / parts[-1]).is_dir()) else top

    packages: dict[str, set[str]] = {}
    for m, deps in graph.items():
        packages.setdefault(package(m), set()).update(package(d) for d in deps if package(d) != package(m))
    packages[top] = {p for p in packages.get(top, set()) if p != top}
    found = False
    for kind, g in (("module", graph), ("package", packages)):
        for c in cycles(g):
            found = True
            print(f"{kind} cycle: {' <-> '.join(c)}")
    print(f"{len(graph)} modules, {len(packages)} packages: " + ("cycles above" if found else "no import cycle"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
