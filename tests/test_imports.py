"""The house is layered and has no circles: every folder of texforce imports only folders below it (`LAYERS`, drawn in
docs/concepts.md), and no module of texforce or of the benchmarks imports, through any chain, a module that imports
it back.

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

# Bottom to top. "basics" are the few shared top-level modules; "api" is `texforce/__init__.py` and `__main__.py`.
# The world's top-level modules (scenes, rendering, detection, its CLIP) are "world"; its sub-packages are layers
# of their own, interleaved with the library's: its judges are rewards, its models are trained with the library.
LAYERS = [
    "basics",
    "world",
    "config",
    "sampling",
    "bases",
    "adapters",
    "world.judges",
    "rewards",
    "world.models",
    "world.headroom",
    "prompts",
    "training",
    "observe",
    "algorithms",
    "run",
    "experiments",
    "cli",
    "api",
]
BASICS = {"errors", "files", "images", "reward_fn", "stats", "tokenizer", "assets", "configs"}  # the last two: data
WORLD_LAYERS = {"judges", "models", "headroom"}


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


def layer(module: str) -> str:
    """The layer of one of texforce's modules (`texforce.world.judges.exact` → "world.judges")."""
    parts = module.split(".")[1:]
    if not parts or parts[0] == "__main__":
        return "api"
    if parts[0] in BASICS:
        return "basics"
    if parts[0] == "world" and len(parts) > 1 and parts[1] in WORLD_LAYERS:
        return f"world.{parts[1]}"
    return parts[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a layer above the importer's, as "importer (layer) → imported (layer)"."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    found = []
    for source, targets in sorted(graph.items()):
        if not source.startswith("texforce"):
            continue
        for target in sorted(targets):
            low, high = layer(source), layer(target)
            if rank[high] > rank[low]:
                found.append(f"{source} ({low}) → {target} ({high})")
    return found


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
    assert "texforce.run.trainer" in graph["texforce.run.train"]  # module level
    assert "texforce.config" in graph["texforce.algorithms.base"]  # under TYPE_CHECKING
    assert "texforce.world.judges.preference_model" in graph["texforce.world.judges.learned"]  # inside a function
    assert "texforce.rewards.clip" in graph["texforce.rewards"]  # a lazy registry string
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_every_module_has_a_layer():
    assert {layer(name) for name in modules() if name.startswith("texforce")} == set(LAYERS)


def test_no_folder_imports_a_folder_above_it():
    assert upward_imports(import_graph()) == []


def test_the_layer_rule_sees_an_upward_import():
    graph = {"texforce.algorithms.ddpo": {"texforce.run.trainer", "texforce.sampling.step"}}
    assert upward_imports(graph) == ["texforce.algorithms.ddpo (algorithms) → texforce.run.trainer (run)"]
    assert layer("texforce.world.judges.exact") == "world.judges" and layer("texforce.world.scenes") == "world"


def test_the_concepts_page_draws_every_layer():
    page = (ROOT / "docs" / "concepts.md").read_text()
    drawn = [name for name in LAYERS if name != "api"]
    folders = [f"{name.replace('.', '/')}/" for name in drawn if name != "basics"]
    assert all(folder in page for folder in folders), [f for f in folders if f not in page]
