"""Sessions (`nox -s NAME`): tests, lint, typing, demo, bench, fuzz, docs, verifytypes, package.

Each check is defined once, in ``.ci/check``; a session installs what the
check needs and runs it. ``tests`` is one session per supported Python
(``tests-3.10`` ... ``tests-3.13``), the versions read from pyproject.toml's
classifiers, so that adding a version there adds its session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typing", "tests"]
nox.options.default_venv_backend = "venv"

#: The supported Pythons: pyproject.toml's "Programming Language :: Python :: 3.X".
PYTHONS = nox.project.python_versions(nox.project.load_toml("pyproject.toml"))


def install(session: nox.Session, *extras: str) -> None:
    """Install the project with the given extras: one helper for every session."""
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


def check(session: nox.Session, name: str, *arguments: str) -> None:
    """Run ``.ci/check NAME``, with this session's environment first on PATH."""
    session.run("bash", ".ci/check", name, *arguments, external=True)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite with branch coverage and the coverage gate, on one Python."""
    install(session, "test")
    check(session, "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.6")
    check(session, "lint")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and this file (which import the test extra)."""
    install(session, "test", "lint")
    check(session, "typing")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks (benchmarks/README.md); options after --, e.g. -- --quick --json out.json."""
    install(session, "bench")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Hypothesis campaigns: every property with 10,000 examples (tests/conftest.py "fuzz").

    Prints the example counts; failures are saved to .hypothesis/ and replayed
    first on the next run. Pass pytest options after --, e.g. -- -k fragmentation.
    """
    install(session, "test")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_properties.py",
        "tests/test_engine_state_machine.py",
        "tests/test_socket_fast_path.py::test_any_sends_through_a_small_socket_buffer_arrive_whole",
        "--hypothesis-show-statistics",
        "-q",
        *session.posargs,
        env={"HYPOTHESIS_PROFILE": "fuzz"},
    )


@nox.session
def demo(session: nox.Session) -> None:
    """The main job."""
    install(session, "demo")
    session.run("python", "-m", "trio_membio", "demo")


@nox.session
def docs(session: nox.Session) -> None:
    """The Sphinx site: warnings are errors, every reference is checked, no network needed."""
    install(session, "docs")
    check(session, "docs", *session.posargs)


@nox.session
def verifytypes(session: nox.Session) -> None:
    """pyright's type completeness report for the public API: it must say 100%."""
    # Not editable: pyright cannot see through setuptools' editable-install
    # import hook, and would find no package at all.
    session.install(".[test]", "pyright>=1.1.400")
    check(session, "verifytypes")


@nox.session
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel with `build`, then run tests/test_packaging.py on the wheel.

    The test checks what the wheel and an sdist contain (the licence among
    them), installs the wheel in a fresh venv and runs the demo.
    """
    install(session, "test")
    session.install("build>=1.2")
    shutil.rmtree("dist", ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", "dist")
    (wheel,) = Path("dist").glob("trio_membio-*.whl")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_packaging.py",
        *session.posargs,
        env={"TRIO_MEMBIO_WHEEL": str(wheel.resolve())},
    )
