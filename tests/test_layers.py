"""The layers stay a stack: no import goes from a lower layer to a higher one, and no modules import each other in
a circle. Read from the source with ast (nothing is imported): module-level imports and those inside functions.

Layers, lowest first (docs/ARCHITECTURE.md): muxdeploy.core <- muxdeploy.runtimes (torch-free) <-
muxdeploy.calibration <- muxdeploy.exporters <- the model side (every other muxdeploy module, the API and the CLI).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> source folder (pyproject's package-dir mapping)
FOLDERS = {
    "muxdeploy": ROOT / "muxdeploy",
    "muxdeploy.exporters": ROOT / "exporters",
    "muxdeploy.calibration": ROOT / "calibration",
    "muxdeploy.runtimes": ROOT / "runtimes",
}
LAYERS = ("muxdeploy.core", "muxdeploy.runtimes", "muxdeploy.calibration", "muxdeploy.exporters")
MODEL_SIDE = len(LAYERS)


def modules() -> dict[str, Path]:
    """Every module of the muxdeploy namespace -> its file."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "muxdeploy" and parts[0] in ("exporters", "calibration", "runtimes"):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def layer(module: str) -> int:
    """0 for muxdeploy.core up to MODEL_SIDE for everything that is not in a lower layer."""
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return MODEL_SIDE


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:` (they never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The muxdeploy modules `module` imports. `from a import b` names a.b when that is a module, else a."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for name in names:
            while name and name not in known:  # `import muxdeploy.core.errors.X`-style: the longest known module
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {module: imports_of(module, path, known) for module, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph (its modules, first one repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_walk_sees_the_layers() -> None:
    """The walk finds the modules of every layer and the imports between them (or the checks below prove nothing)."""
    graph = import_graph()
    assert {layer(m) for m in graph} == set(range(MODEL_SIDE + 1))
    assert "muxdeploy.core.errors" in graph["muxdeploy.runtimes.batcher"]
    assert "muxdeploy.runtimes.packing" in graph["muxdeploy.calibration.data"]
    assert "muxdeploy.exporters.onnx" in graph["muxdeploy.checkpoint"]  # a module-level import
    assert "muxdeploy.exporters.parity" in graph["muxdeploy.build"]  # imported inside run_build only


def test_no_import_goes_up_a_layer() -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in graph.items()
        for target in targets
        if layer(target) > layer(module)
    )
    assert upward == []


def test_no_import_circle() -> None:
    assert find_cycle(import_graph()) is None


def test_find_cycle_finds_one() -> None:
    """The cycle finder itself: a circle through three modules is reported, a chain is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
