"""No import cycles among offterm's own modules.

A cycle makes the import order matter (a name is missing while the other module is half
initialised) and ties two modules that should be one, or should share a third.  Every
import counts: at module level, under ``if TYPE_CHECKING:`` and inside functions (a lazy
import only postpones the cycle).  A module's own packages are not edges: Python imports
them before the module in any case.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    """Every offterm.* module, by name, from the package-dir mapping in pyproject.toml."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found: dict[str, Path] = {}
    for package, folder in setuptools["package-dir"].items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            subs: list[str] = []
        else:
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            bases = [base]
            subs = [f"{base}.{alias.name}" for alias in node.names]
        for target in bases + subs:
            # importing a.b.c runs a and a.b first: the nearest known module stands for the import
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a module's own packages are imported before it by definition: not an edge of a cycle
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
    return targets


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert "offterm.core.config" in graph["offterm.plugins.policies.limits"]
    assert "offterm.plugins.readers.protocol.framing" in graph["offterm.plugins.readers.protocol"]


def test_no_import_cycles_among_offterm_modules() -> None:
    assert _cycles(_graph()) == []


def _private_part(module: str) -> str | None:
    """The package a ``_private`` module belongs to (``offterm.plugins.readers`` for ``..._ble_link``)."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and part != "__init__":
            return ".".join(parts[:i])
    return None


def test_no_module_imports_another_packages_private_module() -> None:
    """``_name`` modules are not API: only their own package (and its sub-packages) imports them.

    The torture harness (``offterm.testing.torture``) injects faults inside the store on purpose.
    """
    offenders = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if not name.startswith("offterm.testing.torture")
        for target in targets
        if target.startswith("offterm.plugins.")
        if (owner := _private_part(target)) is not None and not name.startswith(owner + ".") and name != owner
    ]
    assert offenders == []


def test_every_plugins_package_says_what_is_public() -> None:
    import importlib

    for name, path in _modules().items():
        if not name.startswith("offterm.plugins") or path.name != "__init__.py":
            continue
        package = importlib.import_module(name)
        public = getattr(package, "__all__", None)
        assert public is not None, f"{name} has no __all__"
        for item in public:
            assert hasattr(package, item) or f"{name}.{item}" in _modules(), f"{name}.__all__ names {item}, absent"
