"""Sessions (`nox -s NAME`): tests, lint, typing, demo, bench, fuzz, docs, verifytypes, package."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typing", "tests"]
nox.options.default_venv_backend = "venv"


def install(session: nox.Session, *extras: str) -> None:
    """Install the project with the given extras: one helper for every session."""
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite with branch coverage (the README's test command)."""
    install(session, "test")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report", "--fail-under=90")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and this file."""
    install(session, "lint")
    session.run("mypy")


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
    session.run(
        "sphinx-build",
        "-W",
        "-n",
        "--keep-going",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


@nox.session
def verifytypes(session: nox.Session) -> None:
    """pyright's type completeness report for the public API: it must say 100%."""
    # Not editable: pyright cannot see through setuptools' editable-install
    # import hook, and would find no package at all.
    session.install(".[test]", "pyright>=1.1.400")
    session.run("pyright", "--verifytypes", "trio_membio", "--ignoreexternal")


#: Files the sdist must contain (checked by `package`).
SDIST_FILES = (
    "pyproject.toml",
    "README.md",
    "noxfile.py",
    "trio_membio/py.typed",
    "trio_membio/testing/__init__.py",
    "trio_membio/testing/strategies.py",
    # what the test suite needs besides the test files themselves
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/helpers.py",
    "tests/transports.py",
    "tests/peers.py",
    "benchmarks/bench.py",
    "docs/index.md",
    "docs/_static/bench.json",
)


@nox.session
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel, then install the wheel in a fresh venv and run the demo."""
    install(session, "test")
    session.install("build>=1.2")
    shutil.rmtree("dist", ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", "dist")
    (sdist,) = Path("dist").glob("trio_membio-*.tar.gz")
    with tarfile.open(sdist) as archive:
        root = sdist.name.removesuffix(".tar.gz")
        names = set(archive.getnames())
    missing = [name for name in SDIST_FILES if f"{root}/{name}" not in names]
    if missing:
        session.error(f"{sdist.name} lacks {missing}")
    (wheel,) = Path("dist").glob("trio_membio-*.whl")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_packaging.py",
        *session.posargs,
        env={"TRIO_MEMBIO_WHEEL": str(wheel.resolve())},
    )
