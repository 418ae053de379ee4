"""Running the command line in a test: ``serve`` and ``connect`` in this trio run, or as processes.

In process, both commands run through ``main_async`` with in-memory standard
streams (:class:`Captured`): fast, and they count for coverage. Nothing
sleeps: the server is ready when ``nursery.start`` returns (in process) or
when it has printed its ``listening on`` line (subprocess). Used by every
test_cli* module, test_curl.py and test_openssl_peers.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_membio._cli import Console, main_async

from .helpers import ca, server_cert

TIMEOUT = 10.0


ERROR = "trio_membio: error: "


class WatchedText(io.StringIO):
    """A text stream that a test can wait on, instead of sleeping and polling."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self._changed.set()
        self._changed = trio.Event()
        return written

    async def wait_for(self, text: str) -> None:
        while text not in self.getvalue():
            await self._changed.wait()


class Captured:
    """A Console whose four streams are in memory.

    Args:
        stdin: What connect reads; None keeps stdin open until :meth:`end_input`.
    """

    def __init__(self, stdin: bytes | None = b"") -> None:
        self.out = WatchedText()
        self.err = WatchedText()
        self.stdin = trio.testing.MemoryReceiveStream()
        self.stdout = trio.testing.MemorySendStream()
        self._received = bytearray()
        if stdin is not None:
            self.stdin.put_data(stdin)
            self.stdin.put_eof()
        self.console = Console(out=self.out, err=self.err, stdin=self.stdin, stdout=self.stdout)

    def end_input(self) -> None:
        self.stdin.put_eof()

    @property
    def received(self) -> bytes:
        """Everything connect wrote to stdout so far."""
        with contextlib.suppress(trio.WouldBlock):  # nothing new
            self._received += self.stdout.get_data_nowait()
        return bytes(self._received)

    def errors(self) -> list[str]:
        return [line for line in self.err.getvalue().splitlines() if line.startswith(ERROR)]


@contextlib.asynccontextmanager
async def running_serve(*arguments: str) -> AsyncIterator[tuple[int, Captured]]:
    """``serve`` in this trio run; yields its port and its console."""
    captured = Captured()
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            partial(main_async, ["serve", *arguments], console=captured.console)
        )
        yield addresses[0][1], captured
        nursery.cancel_scope.cancel()


async def run_connect(
    *arguments: str, stdin: bytes | None = b"", timeout: float = TIMEOUT
) -> tuple[int, Captured]:
    captured = Captured(stdin)
    with trio.fail_after(timeout):
        status = await main_async(["connect", *arguments], console=captured.console)
    return status, captured


def assert_one_error(captured: Captured, *fragments: str) -> str:
    """Exactly one error line, containing every fragment, and no traceback."""
    text = captured.err.getvalue()
    assert "Traceback" not in text
    errors = captured.errors()
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def write_pem(path: Path, *parts: bytes) -> str:
    path.write_bytes(b"".join(parts))
    return str(path)


def write_pems(tmp_path: Path) -> dict[str, str]:
    """PEM files: the test CA, a server chain+key, a client chain+key, a foreign CA."""
    import trustme

    client = ca().issue_cert("client.example.org", common_name="test client")
    server = server_cert()
    return {
        # Not ca.pem: the tests use that name for serve's throwaway CA.
        "ca": write_pem(tmp_path / "test-ca.pem", ca().cert_pem.bytes()),
        "server": write_pem(
            tmp_path / "server.pem",
            server.private_key_pem.bytes(),
            *(blob.bytes() for blob in server.cert_chain_pems),
        ),
        "client": write_pem(
            tmp_path / "client.pem",
            client.private_key_pem.bytes(),
            *(blob.bytes() for blob in client.cert_chain_pems),
        ),
        "other_ca": write_pem(tmp_path / "other.pem", trustme.CA().cert_pem.bytes()),
    }


@contextlib.contextmanager
def free_port() -> Iterator[int]:
    """A port nothing listens on (bound then closed, so refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, buffer: bytearray) -> None:
    while marker not in buffer:
        data = await stream.receive_some()
        if not data:
            raise AssertionError(f"stream ended before {marker!r}: {bytes(buffer)!r}")
        buffer += data


@contextlib.asynccontextmanager
async def started_process(command: list[str]) -> AsyncIterator[trio.Process]:
    """A subprocess with all three standard streams piped; killed if still running."""
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


def require_tool(name: str) -> str:
    """The path of a command-line tool; without it, skip locally but fail in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required when CI is set: install it")
        pytest.skip(f"{name} is not installed (in CI, with CI set, this fails)")
    return path


def python_module(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "trio_membio", *arguments]
