"""The wheel, installed in a fresh virtual environment, works as the README says.

One slow test builds the wheel from a copy of the working tree with pip (or
takes the one named by ``TRIO_MEMBIO_WHEEL``, which ``nox -s package`` builds
with ``python -m build``), checks what is inside it, installs it with its
``demo`` extra into a new virtual environment made with ``python -m venv``,
and there imports the package and runs ``python -m trio_membio demo``.

It needs no network: the wheel is built with the setuptools of the running
environment (the ``test`` extra brings it), and the new environment gets the
dependencies the wheel's metadata names, for ``demo``, followed through their
own, copied from the running environment instead of downloaded. A dependency
missing from the metadata is missing there too, and the demo fails.

Another builds the sdist from a copy of the tree with setuptools' own PEP 517
backend (no network, no build isolation) and checks that it carries the
licence and what the test suite needs; both archives must ship ``LICENSE``.

Set ``TRIO_MEMBIO_SKIP_PACKAGING=1`` to skip them; nothing else skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .helpers import run_checked

ROOT = Path(__file__).resolve().parent.parent
#: Seconds one pip, venv or demo step may take.
STEP_TIMEOUT = 75

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("TRIO_MEMBIO_SKIP_PACKAGING") == "1",
        reason="TRIO_MEMBIO_SKIP_PACKAGING=1",
    ),
]

# Everything the wheel must ship: the public modules, every subpackage (found
# by package discovery, not listed by hand) and the typing marker.
REQUIRED_FILES = {
    "trio_membio/__init__.py",
    "trio_membio/__main__.py",
    "trio_membio/py.typed",
    "trio_membio/httpcore.py",
    "trio_membio/httpx.py",
    "trio_membio/hypercorn.py",
    "trio_membio/_cli/__init__.py",
    "trio_membio/_cli/_common.py",
    "trio_membio/_cli/_http_server.py",
    "trio_membio/testing/__init__.py",
    "trio_membio/testing/strategies.py",
}
# What the sdist must carry besides the package: the licence, and what the
# test suite, the benchmarks and the documentation build need.
SDIST_FILES = {
    "LICENSE",
    "PKG-INFO",
    "pyproject.toml",
    "README.md",
    "noxfile.py",
    ".ci/run",
    "trio_membio/_cli/__init__.py",
    "trio_membio/py.typed",
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/helpers.py",
    "tests/transports.py",
    "tests/peers.py",
    "benchmarks/bench.py",
    "docs/index.md",
    "docs/_static/bench.json",
}
# Left out of the copy the wheel is built from: not sources, and some large.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".nox",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    ".coverage*",
    "_build",
)


def run(command: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a step; fail the test with its output if it fails."""
    return run_checked(command, cwd=cwd, timeout=STEP_TIMEOUT)


def copy_sources(tmp_path: Path) -> Path:
    """A copy of the working tree without build products, caches and the like."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    return source


def build_wheel(tmp_path: Path) -> Path:
    """The wheel named by TRIO_MEMBIO_WHEEL, or one pip builds from a copy of the tree.

    Building from a copy keeps setuptools' build/ and egg-info out of the
    working tree.
    """
    given = os.environ.get("TRIO_MEMBIO_WHEEL")
    if given:
        return Path(given)
    source = copy_sources(tmp_path)
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            dist,
            source,
        ],
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("trio_membio-*.whl")
    return wheel


def check_contents(wheel: Path) -> list[str]:
    """The wheel ships the public modules, py.typed and the right metadata.

    Returns its requirements (Requires-Dist).
    """
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = HeaderParser().parsestr(archive.read(metadata_name).decode())
        (entry_points_name,) = [
            name for name in names if name.endswith(".dist-info/entry_points.txt")
        ]
        entry_points = archive.read(entry_points_name).decode()
    missing = REQUIRED_FILES - names
    assert not missing, f"missing from {wheel.name}: {sorted(missing)}"
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"trio_membio", metadata_name.split("/")[0]}, top_level
    dist_info = metadata_name.split("/")[0]
    assert f"{dist_info}/licenses/LICENSE" in names, sorted(names)
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Name"] == "trio-membio"
    assert metadata["Requires-Python"] == ">=3.10"
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert {"demo", "httpx", "test", "bench"} <= extras, extras
    requirements = metadata.get_all("Requires-Dist") or []
    assert any(requirement.startswith("trio") for requirement in requirements), requirements
    assert "trio-membio = trio_membio._cli:run" in entry_points
    return requirements


def copy_dependencies(requirements: list[str], extra: str, site_packages: Path) -> set[str]:
    """Copy what ``requirements`` (with ``extra``) need, recursively, from this environment.

    Each distribution is copied file by file from its install record, its
    ``.dist-info`` included, as pip would have installed it. Returns the
    names copied.
    """
    copied: set[str] = set()
    pending = [(Requirement(text), extra) for text in requirements]
    while pending:
        requirement, active_extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"extra": active_extra}
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name in copied:
            continue
        copied.add(name)
        distribution = metadata.distribution(requirement.name)
        # What pip would have refused to install must fail here too.
        assert requirement.specifier.contains(distribution.version, prereleases=True), (
            f"{requirement} is not met by the installed {name} {distribution.version}"
        )
        assert distribution.files is not None, f"{name} has no install record to copy"
        for file in distribution.files:
            if ".." in file.parts:  # console scripts and other files outside site-packages
                continue
            target = site_packages / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(distribution.locate_file(file))), target)
        for text in distribution.requires or []:
            for wanted in requirement.extras or {""}:
                pending.append((Requirement(text), wanted))
    return copied


def test_the_wheel_installs_imports_and_runs_the_demo(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    requirements = check_contents(wheel)

    environment = tmp_path / "venv"
    run([sys.executable, "-m", "venv", environment], cwd=tmp_path)
    bin_dir = environment / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    site_packages = Path(
        run(
            [python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            cwd=tmp_path,
        ).stdout.strip()
    )
    copied = copy_dependencies(requirements, "demo", site_packages)
    assert {"trio", "trustme"} <= copied, copied
    run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            wheel,
        ],
        cwd=tmp_path,
    )
    # pip agrees that every requirement of what is installed is met (the demo
    # extra's ranges were checked while copying: pip check ignores extras).
    run([python, "-m", "pip", "check", "--disable-pip-version-check"], cwd=tmp_path)

    # -I: only the virtual environment's site-packages, never this checkout.
    imported = run(
        [
            python,
            "-I",
            "-c",
            "import trio_membio, trio_membio.testing; "
            "print(trio_membio.__version__); print(trio_membio.__file__)",
        ],
        cwd=tmp_path,
    )
    version, location = imported.stdout.split()
    assert version == wheel.name.split("-")[1]
    assert Path(location).is_relative_to(environment), location

    demo = run([python, "-I", "-m", "trio_membio", "demo"], cwd=tmp_path)
    assert "protocol  TLSv1.3" in demo.stdout
    assert "client  closed" in demo.stdout
    assert demo.stderr == ""

    # The console script is installed too.
    run([bin_dir / "trio-membio", "--help"], cwd=tmp_path)

    # Without their extras, the optional modules say what to install.
    for module, extra in [
        ("trio_membio.httpcore", "httpx"),
        ("trio_membio.testing.strategies", "test"),
    ]:
        result = subprocess.run(
            [str(python), "-I", "-c", f"import {module}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        assert result.returncode == 1
        assert f"pip install 'trio-membio[{extra}]'" in result.stderr


def test_the_sdist_carries_the_licence_and_what_the_tests_need(tmp_path: Path) -> None:
    source = copy_sources(tmp_path)
    dist = tmp_path / "dist"
    dist.mkdir()
    # setuptools' PEP 517 backend, as a build frontend calls it, in the copy.
    run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))",
            dist,
        ],
        cwd=source,
    )
    (sdist,) = dist.glob("trio_membio-*.tar.gz")
    root = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(f"{root}/") for name in archive.getnames()}
        licence = archive.extractfile(f"{root}/LICENSE")
        assert licence is not None
        text = licence.read().decode()
    missing = SDIST_FILES - names
    assert not missing, f"missing from {sdist.name}: {sorted(missing)}"
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the trio_membio developers\n")
    assert text == (ROOT / "LICENSE").read_text()


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [("trio_membio.httpx", "httpx", "httpx"), ("trio_membio.hypercorn", "hypercorn", "hypercorn")],
)
def test_an_optional_module_without_its_extra_names_the_extra(
    module: str, missing: str, extra: str
) -> None:
    # sys.modules[name] = None makes "import name" raise ImportError, as if
    # the package were not installed.
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        f"try:\n    import {module}\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert f"pip install 'trio-membio[{extra}]'" in completed.stdout, completed.stdout
