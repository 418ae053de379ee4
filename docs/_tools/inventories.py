"""Small intersphinx inventories for the outside objects these docs refer to.

The build has no network, so the real ``objects.inv`` files of Python, trio
and hypothesis cannot be downloaded. This module lists each outside object the
pages and the API signatures refer to, with its real address in that
project's documentation, and writes it in the inventory format intersphinx
reads (version 2: four header lines, then zlib-compressed lines of
``name domain:role priority uri display-name``). conf.py calls
:func:`write_all` before the build.

An address ending in ``$`` means "this page, anchored at the object's name",
as in real inventories.
"""

from __future__ import annotations

import zlib
from pathlib import Path

#: Each project's documentation root, as intersphinx_mapping wants it.
PROJECTS: dict[str, str] = {
    "python": "https://docs.python.org/3",
    "trio": "https://trio.readthedocs.io/en/stable",
    "hypothesis": "https://hypothesis.readthedocs.io/en/latest",
}

# (name, role, page relative to the project's root; "$" anchors at the name)
Entry = tuple[str, str, str]

_SSL = "library/ssl.html#$"
_ABC = "library/collections.abc.html#$"
_CORE = "reference-core.html#$"
_IO = "reference-io.html#$"
_TESTING = "reference-testing.html#$"

OBJECTS: dict[str, list[Entry]] = {
    "python": [
        ("ssl", "module", "library/ssl.html#module-ssl"),
        ("ssl.MemoryBIO", "class", _SSL),
        ("ssl.SSLContext", "class", _SSL),
        ("ssl.SSLObject", "class", _SSL),
        ("ssl.SSLSession", "class", _SSL),
        ("ssl.SSLSocket.getpeercert", "method", _SSL),
        ("ssl.create_default_context", "function", _SSL),
        ("ssl.SSLError", "exception", _SSL),
        ("ssl.SSLEOFError", "exception", _SSL),
        ("ssl.SSLWantReadError", "exception", _SSL),
        ("ssl.SSLCertVerificationError", "exception", _SSL),
        ("collections.abc.Awaitable", "class", _ABC),
        ("collections.abc.Callable", "class", _ABC),
        ("collections.abc.Iterable", "class", _ABC),
        ("collections.abc.Sequence", "class", _ABC),
        ("enum.Enum", "class", "library/enum.html#$"),
        ("typing.Generic", "class", "library/typing.html#$"),
        ("typing.Literal", "data", "library/typing.html#$"),
        ("typing.NamedTuple", "class", "library/typing.html#$"),
        ("ValueError", "exception", "library/exceptions.html#$"),
        ("RuntimeError", "exception", "library/exceptions.html#$"),
        ("TypeError", "exception", "library/exceptions.html#$"),
        ("ImportError", "exception", "library/exceptions.html#$"),
        ("OSError", "exception", "library/exceptions.html#$"),
        ("Exception", "exception", "library/exceptions.html#$"),
    ],
    "trio": [
        ("trio.Cancelled", "exception", _CORE),
        ("trio.BrokenResourceError", "exception", _CORE),
        ("trio.BusyResourceError", "exception", _CORE),
        ("trio.ClosedResourceError", "exception", _CORE),
        ("trio.TooSlowError", "exception", _CORE),
        ("trio.CancelScope", "class", _CORE),
        ("trio.Nursery", "class", _CORE),
        ("trio.TaskStatus", "class", _CORE),
        ("trio.open_nursery", "function", _CORE),
        ("trio.abc.Stream", "class", _IO),
        ("trio.abc.HalfCloseableStream", "class", _IO),
        ("trio.abc.Listener", "class", _IO),
        ("trio.abc.Listener.accept", "method", _IO),
        ("trio.abc.SendStream.wait_send_all_might_not_block", "method", _IO),
        ("trio.aclose_forcefully", "function", _IO),
        ("trio.serve_listeners", "function", _IO),
        ("trio.open_tcp_stream", "function", _IO),
        ("trio.open_tcp_listeners", "function", _IO),
        ("trio.SocketStream", "class", _IO),
        ("trio.SSLStream", "class", _IO),
        ("trio.SSLListener", "class", _IO),
        ("trio.NeedHandshakeError", "exception", _IO),
        ("trio.testing.MockClock", "class", _TESTING),
        ("trio.testing.memory_stream_pair", "function", _TESTING),
        ("trio.testing.lockstep_stream_pair", "function", _TESTING),
    ],
    "hypothesis": [
        (
            "hypothesis.strategies.SearchStrategy",
            "class",
            "reference/strategies.html#$",
        ),
    ],
}


def inventory_bytes(project: str, entries: list[Entry]) -> bytes:
    """One project's inventory in the format intersphinx reads."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(f"{name} py:{role} 1 {uri} -\n" for name, role, uri in entries)
    return header.encode() + zlib.compress(body.encode())


def write_all(directory: Path) -> list[Path]:
    """Write every project's inventory into ``directory``, in PROJECTS order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for project in PROJECTS:
        path = directory / f"{project}.inv"
        data = inventory_bytes(project, OBJECTS[project])
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        paths.append(path)
    return paths
