"""trio_membio's modules import each other without a cycle.

The graph is read from the source with ``ast``, not from ``sys.modules``:
every ``import`` and ``from ... import`` in every module of the package, at
any depth (a function-level import that dodges a cycle at run time is still a
cycle in the design), with relative imports resolved against the importing
module's package. ``from package import name`` points at the submodule
``package.name`` when there is one, else at ``package``. Importing a
submodule also runs its package's ``__init__``; that implicit edge is left
out, or every ``__init__`` that re-exports from its submodules would form a
cycle with them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trio_membio

PACKAGE = "trio_membio"
ROOT = Path(trio_membio.__file__).resolve().parent


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` (at ``path``) imports."""
    own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = own_package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    targets.add(f"{base}.{alias.name}")
                elif base in modules:
                    targets.add(base)
    targets.discard(name)
    return targets


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in ``graph`` (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                found = visit(target)
                if found:
                    return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(module_names())
    # The walk sees what it must: the command line's modules and their edges.
    assert f"{PACKAGE}._cli._common" in graph[f"{PACKAGE}._cli._serve"]
    assert f"{PACKAGE}._cli._serve" in graph[f"{PACKAGE}._cli"]
    assert f"{PACKAGE}._stream" in graph[f"{PACKAGE}"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cli_helpers_are_a_leaf() -> None:
    graph = import_graph(module_names())
    cli_modules = {name for name in graph if name.startswith(f"{PACKAGE}._cli")}
    assert not graph[f"{PACKAGE}._cli._common"] & cli_modules


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        # The shape of the old _cli.py / _cli_serve.py pair: a lazy import back.
        (
            {
                "__init__.py": "",
                "_a.py": "def f():\n    from ._b import g\n",
                "_b.py": "from ._a import f\n",
            },
            ["pkg._a", "pkg._b", "pkg._a"],
        ),
        # Through a subpackage, with "from .. import module" and absolute imports.
        (
            {
                "__init__.py": "",
                "_a.py": "import pkg.sub._c\n",
                "sub/__init__.py": "",
                "sub/_c.py": "from .. import _a\n",
            },
            ["pkg._a", "pkg.sub._c", "pkg._a"],
        ),
        # No cycle: __init__ re-exports, a submodule imports a sibling.
        (
            {
                "__init__.py": "from ._a import f as f\n",
                "_a.py": "from ._b import g\n",
                "_b.py": "import os\n",
            },
            None,
        ),
    ],
)
def test_the_walk_finds_a_cycle_when_there_is_one(
    tmp_path: Path, files: dict[str, str], cycle: list[str] | None
) -> None:
    for relative, text in files.items():
        path = tmp_path / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    graph = import_graph(module_names(tmp_path / "pkg", "pkg"))
    assert find_cycle(graph) == cycle
