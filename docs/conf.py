"""Sphinx configuration for trio_membio's documentation.

Build it with warnings as errors and every reference checked::

    sphinx-build -W -n -b html docs docs/_build/html

(``nox -s docs`` does the same in its own virtualenv). The build needs no
network: see "Links to other projects' documentation" below.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from docutils.nodes import Element, TextElement
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.domains.python import PythonDomain
from sphinx.environment import BuildEnvironment
from sphinx.ext import intersphinx

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_tools"))

import inventories  # noqa: E402 - docs/_tools is only importable after the line above

import trio_membio  # noqa: E402 - keep the project imports together, after the path setup

project = "trio_membio"
author = "the trio_membio developers"
copyright = "2026, the trio_membio developers"
release = trio_membio.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# _generated holds fragments that pages {include}; they are not pages themselves.
exclude_patterns = ["_build", "_generated", "_tools", "examples"]
templates_path: list[str] = []

# ---------------------------------------------------------------- Markdown

myst_enable_extensions = ["colon_fence", "deflist"]
# Headings up to ### get anchors, so [text](page.md#a-heading) links work.
myst_heading_anchors = 3

# ----------------------------------------------------------------- autodoc

# The project's docstrings are Google style.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections become attribute entries, so they can be linked to
# (FaultyStream.operations, say).
napoleon_use_ivar = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Show hypercorn's alias by name, not as the 20-member union it stands for.
autodoc_type_aliases = {"Framework": "hypercorn.typing.Framework"}

# ------------------------------------------- links to other projects' docs
#
# The build must work without network access (CI and the developers'
# machines cannot reach docs.python.org or trio.readthedocs.io), so intersphinx
# cannot download the real objects.inv files. Instead, docs/_tools/
# inventories.py lists every outside object these pages refer to, each with
# its real address in the Python, trio and hypothesis documentation, and
# writes small inventories from that list before the build. The links in the
# built pages therefore go to the real documentation; only the list of names
# is ours. With -n, a reference to anything not in the list fails the build,
# so the list stays complete: add the object there (with its real address)
# rather than silencing the warning.
#
# With network access, TRIO_MEMBIO_DOCS_ONLINE=1 uses the real inventories
# instead, which checks the hand-made list against them.
intersphinx_mapping: dict[str, tuple[str, str | None]]
if os.environ.get("TRIO_MEMBIO_DOCS_ONLINE") == "1":
    intersphinx_mapping = {name: (url, None) for name, url in inventories.PROJECTS.items()}
else:
    _inventory_dir = DOCS / "_build" / "inventories"
    intersphinx_mapping = {
        name: (url, str(path))
        for (name, url), path in zip(
            inventories.PROJECTS.items(),
            inventories.write_all(_inventory_dir),
            strict=True,
        )
    }
intersphinx_timeout = 5

# Names that cannot link anywhere, each for a reason:
nitpick_ignore = [
    # The type parameters of MemoryBIOStream[...] and MemoryBIOListener[...]:
    # the transport's type. The API page says so in prose.
    *(
        (role, f"trio_membio.{module}.TransportStream")
        for role in ("py:class", "py:obj")
        for module in ("_stream", "_listener")
    ),
]
nitpick_ignore_regex = [
    # httpcore documents its API with MkDocs and publishes no Sphinx inventory,
    # so its names in trio_membio.httpcore's signatures and docstrings cannot
    # link; the API page links httpcore's own page instead.
    ("py:(class|exc)", r"httpcore\..*"),
    # The same for httpx (MkDocs too), in trio_membio.httpx's signatures,
    # base class and Raises sections; docs/httpx.md names them in prose.
    ("py:(class|exc)", r"httpx\..*"),
    # hypercorn's Sphinx inventory is not in docs/_tools/inventories.py;
    # trio_membio.hypercorn's signature names its Config and app type, and
    # docs/recipes.md links hypercorn's own documentation.
    ("py:(class|obj|data)", r"hypercorn\..*"),
]

# Names as Python reports them that the Python docs spell differently.
PRIVATE_STDLIB_NAMES = {"_ssl.SSLSession": "ssl.SSLSession", "_ssl.MemoryBIO": "ssl.MemoryBIO"}

# -------------------------------------------------------------------- HTML

html_theme = "furo"
html_title = f"trio_membio {release}"
html_static_path = ["_static"]


def setup(app: Sphinx) -> None:
    """Hook the build (each hook says why)."""
    app.connect("autodoc-process-bases", _hide_private_bases)
    app.connect("autodoc-process-signature", _readable_class_defaults)
    # After napoleon (priority 500), which turns docstrings into fields first.
    app.connect("autodoc-process-docstring", _keep_attribute_prose, priority=600)
    app.connect("missing-reference", _resolve_package_names)


def _hide_private_bases(
    app: Sphinx, name: str, obj: object, options: object, bases: list[object]
) -> None:
    """Drop our own private bases (e.g. ``typing.Generic`` parameterised privately).

    Their public methods are documented on the class itself (inherited members).
    """
    bases[:] = [
        base for base in bases if not getattr(base, "__module__", "").startswith("trio_membio._")
    ]


_CLASS_REPR = re.compile(r"<class '([\w.]+)'>")


def _readable_class_defaults(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """Show a class default as its name, not its repr.

    A dataclass field defaulting to a class (``FaultPlan.error``) has no
    source to preserve, so autodoc shows ``<class 'trio.BrokenResourceError'>``,
    which is not Python and makes Sphinx give up parsing the whole signature.
    """
    if signature is None or "<class '" not in signature:
        return None
    return _CLASS_REPR.sub(r"\1", signature), return_annotation


def _keep_attribute_prose(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Undo napoleon's reading of "Some words: more words" as "type: description".

    napoleon reads the first line of an attribute's docstring as "type:
    description" (Google style), so the doc comment ``#: The peer sent
    close_notify: a clean end of its data.`` came out as a type "The peer sent
    close_notify". A type has no spaces outside brackets; when the "type" it
    found has some, put the sentence back together.
    """
    if what not in ("attribute", "data"):
        return
    for index, line in enumerate(lines):
        if line.startswith(":type: "):
            found = line.removeprefix(":type: ")
            if " " in re.sub(r"\[.*\]", "", found).strip() and lines[0]:
                del lines[index]
                lines[0] = f"{found}: {lines[0]}"
            return


def _resolve_package_names(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: TextElement
) -> Element | None:
    """Resolve names that docstrings write relative to the package.

    The package's docstrings name its public objects as its own modules
    import them (``MemoryBIOStream``, ``FaultyStream.operations``), not by
    their public path (``trio_membio.MemoryBIOStream``); look those up under
    the public modules. Also map private stdlib names (``_ssl.SSLSession``,
    the module Python reports) to the documented ones.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    if target in PRIVATE_STDLIB_NAMES:
        aliased = node.deepcopy()
        aliased["reftarget"] = PRIVATE_STDLIB_NAMES[target]
        return intersphinx.missing_reference(app, env, aliased, contnode)
    domain = env.get_domain("py")
    assert isinstance(domain, PythonDomain)
    if target.startswith("trio_membio._"):
        # A name typing resolved before the package set its public
        # __module__ (a generic base such as Listener[MemoryBIOStream[...]]).
        target = target.rsplit(".", 1)[-1]
    for module in ("trio_membio", "trio_membio.testing"):
        candidate = f"{module}.{target}"
        if candidate in domain.objects:
            return domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], candidate, node, contnode
            )
    return None
