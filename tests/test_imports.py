"""The house has no circles: no module of texforce or of the benchmarks imports, through any chain, a module that
imports it back.

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:`, and the `"module:attr"` strings
of the lazy registries (rewards). `import a.b` and `from a.b import c` are edges to the most specific module named
(`a.b.c` when that is a module), as import-linter counts them; a package's `__init__` is a module like any other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [ROOT / "src" / "texforce", ROOT / "benchmarks"]
LAZY = re.compile(r"(texforce(?:\.\w+)+):\w+")  # "texforce.rewards.clip:build_clipscore"


# The one circle left, in the world being rewritten: reward.py loads preference.py's model, preference.py judges
# with reward.py and samples with evaluate.py, which judges with reward.py. Remove this when world v2 breaks it.
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            parts = list(path.relative_to(package.parent).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the modules it imports (only ours)."""
    found = modules()

    def known(name: str) -> str | None:  # the most specific of our modules that `name` starts with
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets |= {
                    known(f"{base}.{a.name}") if f"{base}.{a.name}" in found else known(base) for a in node.names
                }
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                targets |= {known(m) for m in LAZY.findall(node.value)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_walker_sees_every_kind_of_import():
    graph = import_graph()
    assert "texforce.trainer" in graph["texforce.run"]  # module level
    assert "texforce.config" in graph["texforce.algorithms.base"]  # under TYPE_CHECKING
    assert "texforce.world.preference_model" in graph["texforce.world.learned"]  # inside a function
    assert "texforce.rewards.clip" in graph["texforce.rewards"]  # a lazy registry string
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_circles():
    assert circles(import_graph()) == []
