"""The documentation stays true to the code (the Sphinx build is ``nox -s docs``).

- Every public name (each public module's ``__all__``) has an entry on the API
  page, so a new export cannot go undocumented.
- Every ``literalinclude`` names a file and, with ``:pyobject:``, a function or
  class that exist.
- The trace pasted into "How it works" is what docs/examples/trace_handshake.py
  prints today, apart from sizes: if the engine's byte-level behaviour changes
  (held session tickets, say), the walkthrough must be rewritten.
- The benchmark tables are what docs/_tools/bench_tables.py makes of the
  committed benchmark JSON.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Public modules, and how the API page documents them: "each" lists every
#: name with its own directive; "automodule" documents the module's __all__
#: with ``.. automodule:: NAME`` and ``:members:``.
PUBLIC_MODULES = {
    "trio_membio": "each",
    "trio_membio.testing": "each",
    "trio_membio.testing.strategies": "automodule",
    "trio_membio.httpcore": "automodule",
    "trio_membio.httpx": "each",
    "trio_membio.hypercorn": "automodule",
}

DIRECTIVE = re.compile(
    r"^\.\. (?:py:)?(?:auto)?(?:class|function|data|exception|module)::\s+(\S+)", re.MULTILINE
)


def documented_names() -> set[str]:
    """Fully qualified names with an entry on the API page."""
    names: set[str] = set()
    module = ""
    for match in DIRECTIVE.finditer((DOCS / "api.rst").read_text()):
        name = match.group(1)
        line = match.group(0)
        if "module::" in line:
            module = name
            names.add(name)
        elif name.startswith("trio_membio."):
            names.add(name)
        else:
            names.add(f"{module}.{name}")
    return names


@pytest.mark.parametrize("module_name", sorted(PUBLIC_MODULES))
def test_every_public_name_is_on_the_api_page(module_name: str) -> None:
    module = importlib.import_module(module_name)
    documented = documented_names()
    if PUBLIC_MODULES[module_name] == "automodule":
        text = (DOCS / "api.rst").read_text()
        assert re.search(rf"^\.\. automodule:: {re.escape(module_name)}\n   :members:", text, re.M)
        return
    missing = [name for name in module.__all__ if f"{module_name}.{name}" not in documented]
    assert not missing, f"add these to docs/api.rst: {missing}"


LITERALINCLUDE = re.compile(r"```\{literalinclude\} (\S+)\n((?::\S+:.*\n)*)")


def literalincludes() -> list[tuple[str, Path, str | None]]:
    """(page, included file, :pyobject: or None) for every literalinclude in the pages."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for match in LITERALINCLUDE.finditer(page.read_text()):
            options = dict(re.findall(r":(\S+): *(.*)", match.group(2)))
            found.append((page.name, DOCS / match.group(1), options.get("pyobject")))
    return found


@pytest.mark.parametrize(
    ("page", "path", "pyobject"),
    literalincludes(),
    ids=[f"{page}:{path.name}:{obj}" for page, path, obj in literalincludes()],
)
def test_literalincludes_point_at_real_code(page: str, path: Path, pyobject: str | None) -> None:
    assert path.is_file(), f"{page} includes {path}, which does not exist"
    if pyobject is not None:
        tree = ast.parse(path.read_text())
        defined = {
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        assert pyobject in defined, f"{page} includes {pyobject} from {path.name}"


def without_numbers(text: str) -> list[str]:
    """Lines with every number replaced, so that sizes may change."""
    return [re.sub(r"\d+", "N", line.rstrip()) for line in text.strip().splitlines()]


def test_the_traced_connection_on_the_page_is_what_the_example_prints() -> None:
    result = subprocess.run(
        [sys.executable, "docs/examples/trace_handshake.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    page = (DOCS / "how-it-works.md").read_text()
    pasted = "\n".join(re.findall(r"```text\n(== .*?)```", page, re.DOTALL))
    assert without_numbers(pasted) == without_numbers(result.stdout), (
        "docs/how-it-works.md no longer shows what trace_handshake.py prints: "
        "paste the new output and check the walkthrough"
    )


def test_the_benchmark_tables_match_the_committed_results() -> None:
    result = subprocess.run(
        [sys.executable, "docs/_tools/bench_tables.py", "docs/_static/bench.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == (DOCS / "_generated" / "bench-tables.md").read_text(), (
        "regenerate docs/_generated/bench-tables.md (see docs/performance.md)"
    )


def test_the_targets_table_shows_each_ratio_and_the_floors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(DOCS / "_tools"))
    bench_tables = importlib.import_module("bench_tables")

    def result(*rounds: float) -> dict[str, list[float]]:
        return {"rounds": list(rounds)}

    workloads = {
        "handshake-full": {
            "results": {
                "membio": result(120, 150, 100),
                "trio_ssl": result(100, 100, 100),
                "floor": result(130, 160, 110),
            }
        },
        "ping-pong": {"results": {"membio": result(300), "trio_ssl": result(100)}},
    }
    lines = bench_tables.target_table(workloads)
    handshake = next(line for line in lines if line.startswith("| full handshakes"))
    # Ours: 1.2, 1.5, 1.0 (median 1.2); the floor: 1.3, 1.6, 1.1 (median 1.3).
    # Ours / the floor: 120/130, 150/160, 100/110 (median 0.92).
    assert handshake == (
        "| full handshakes, ratio to trio.SSLStream | >= 1.30 | 1.20 (1.00-1.50) "
        "| 1.30 (1.10-1.60) | 0.92 (0.91-0.94) | **no** |"
    )
    ping = next(line for line in lines if line.startswith("| ping-pong, ratio to trio.SSLStream"))
    assert ping.endswith("| 3.00 (3.00-3.00) | n/a | n/a | yes |")
    # Targets whose workload or peer is missing from the run are left out.
    assert not any("memory_stream_pair" in line or "no TLS" in line for line in lines)
