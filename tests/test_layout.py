"""The test suite's own layout: test modules share code through helper modules only.

A test module that imports another test module makes pytest's collection
order matter, runs the other module's fixtures and module-level code as a
side effect, and hides shared code where nobody looks for it. Shared code
lives in the helper modules of tests/ (helpers.py, peers.py, transports.py,
cli_harness.py, ...), whose names do not start with ``test_``. The imports
are read with ``ast``, at any depth, so an import inside a function counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent

# Modules that still import a test module, each with the reason; the second
# test below fails once one no longer does, so the list only shrinks.
KNOWN: dict[str, str] = {}


def imported_modules(path: Path) -> set[str]:
    """The module names ``path`` imports, relative ones as ``.name``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            if node.module is None:  # from . import test_x
                names.update(base + alias.name for alias in node.names)
    return names


def imported_test_modules(path: Path) -> set[str]:
    """The test modules of tests/ among what ``path`` imports."""
    found = set()
    for name in imported_modules(path):
        last = name.rpartition(".")[2]
        inside_tests = name.startswith((".", "tests."))
        if inside_tests and last.startswith("test_") and (TESTS / f"{last}.py").exists():
            found.add(f"{last}.py")
    return found


def test_no_test_module_imports_another_test_module() -> None:
    offenders = {
        path.name: sorted(imported_test_modules(path))
        for path in sorted(TESTS.glob("test_*.py"))
        if path.name not in KNOWN and imported_test_modules(path)
    }
    assert offenders == {}, "move what they share into a helper module of tests/"


def test_the_known_exceptions_still_need_their_exception() -> None:
    cleared = [name for name in KNOWN if not imported_test_modules(TESTS / name)]
    assert cleared == [], "no longer imports a test module: remove it from KNOWN"


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    forms = [
        "from .test_cli import Captured\n",
        "from . import test_cli\n",
        "import tests.test_cli\n",
        "from tests.test_cli import Captured\n",
        "def late():\n    from .test_cli import Captured\n",
    ]
    for number, source in enumerate(forms):
        path = tmp_path / f"test_form_{number}.py"
        path.write_text(source)
        assert imported_test_modules(path) == {"test_cli.py"}, source
    helper = tmp_path / "test_helper_import.py"
    helper.write_text("from .helpers import HOSTNAME\nimport test_cli_outside\n")
    assert imported_test_modules(helper) == set()
