"""The supported Python versions are said once and agree everywhere.

pyproject.toml's "Programming Language :: Python :: 3.X" classifiers are the
list: nox makes a ``tests-3.X`` session for each and ``.ci/run`` runs the
suite on each. ``requires-python`` must start at the first of them, with no
gap in between, and the interpreter running this test must be one of them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_classifiers_and_requires_python_name_the_same_versions() -> None:
    # Read as text, as .ci/run does (tomllib is 3.11+, and this runs on 3.10 too).
    pyproject = (ROOT / "pyproject.toml").read_text()
    versions = [
        (3, int(minor))
        for minor in re.findall(r'"Programming Language :: Python :: 3\.(\d+)"', pyproject)
    ]
    (requires_python,) = re.findall(r'^requires-python = "(.*)"$', pyproject, re.MULTILINE)
    assert versions, "no 'Programming Language :: Python :: 3.X' classifiers"
    assert versions == sorted(versions), versions
    minors = [minor for _, minor in versions]
    assert minors == list(range(minors[0], minors[-1] + 1)), "a gap in the classifiers"
    assert requires_python == f">=3.{versions[0][1]}"
    assert sys.version_info[:2] in versions, f"Python {sys.version_info[:2]} is not supported"
    ci_run = (ROOT / ".ci" / "run").read_text()
    # .ci/run reads the same classifiers rather than keeping its own list.
    assert "Programming Language :: Python :: 3" in ci_run
