"""Every program in docs/examples/ runs and succeeds.

The convention (docs/testing.md): an example is a script that runs as
``python docs/examples/NAME.py`` from the repository root, needs nothing
beyond the ``test`` extra, finishes within EXAMPLE_TIMEOUT seconds, exits
with status 0 when what it demonstrates holds, and emits no warnings (it runs
with ``-W error``, as the test suite does). New files are picked up by
themselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .helpers import run_checked

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
#: Seconds an example may take.
EXAMPLE_TIMEOUT = 120


def test_the_examples_are_found() -> None:
    assert "fuzz_line_protocol.py" in {path.name for path in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(example: Path) -> None:
    run_checked(
        [sys.executable, "-W", "error", str(example.relative_to(ROOT))],
        cwd=ROOT,
        timeout=EXAMPLE_TIMEOUT,
    )
