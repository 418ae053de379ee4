"""Every program in docs/examples/ runs and succeeds.

The convention (docs/testing.md): an example is a script that runs as
``python docs/examples/NAME.py`` from the repository root, needs nothing
beyond the ``test`` extra, finishes within EXAMPLE_TIMEOUT seconds, exits
with status 0 when what it demonstrates holds, and emits no warnings (it runs
with ``-W error``, as the test suite does). New files are picked up by
themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
#: Seconds an example may take.
EXAMPLE_TIMEOUT = 120


def test_the_examples_are_found() -> None:
    assert "fuzz_line_protocol.py" in {path.name for path in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(example: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(example.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"python {example.relative_to(ROOT)} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
