"""The command line: ``serve`` and ``connect`` against each other, and every user error.

Most tests run both commands in this process, in the test's own trio run,
through ``main_async`` with in-memory standard streams (:class:`Captured`):
fast, and they count for coverage. One subprocess smoke test per command
checks the real ``python -m trio_membio`` with real standard streams and
signals. Nothing sleeps: the server is ready when ``nursery.start`` returns
(in-process) or when it has printed its ``listening on`` line (subprocess).

The helpers here are shared with test_openssl_peers.py and test_curl.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import NoReturn

import pytest
import trio
import trio.testing

from trio_membio._cli import Console, main, main_async

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup
from trio_membio._cli._http_server import KEEP_ALIVE_TIMEOUT

from .helpers import HOSTNAME, ca, server_cert

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


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, str]:
    return write_pems(tmp_path)


@contextlib.contextmanager
def free_port() -> Iterator[int]:
    """A port nothing listens on (bound then closed, so refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


# --------------------------------------------------------------- happy paths


async def test_connect_to_serve_echo_tls13_half_close(tmp_path: Path) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path, "--alpn", "echo") as (port, server):
            status, client = await run_connect(
                f"127.0.0.1:{port}", "--cafile", ca_path, "--alpn", "echo,other", stdin=b"hi\n"
            )
            await server.out.wait_for("conn 1: closed")
    assert status == 0, client.err.getvalue()
    assert client.received == b"hi\n"
    summary = client.err.getvalue()
    assert "connected to 127.0.0.1:" in summary
    assert "protocol   TLSv1.3" in summary
    assert re.search(r"cipher     TLS_\w+ \(\d+ bits\)", summary)
    assert "ALPN       echo" in summary
    assert "resumed    no" in summary
    assert f"verified against {ca_path}" in summary
    assert "names    DNS:localhost, IP Address:127.0.0.1" in summary
    assert re.search(r"expires  \w+ +\d+ [\d:]+ \d{4} GMT \(in \d+ days\)", summary)
    assert "subject  O=trustme" in summary
    assert "closed: sent 3 bytes, received 3 bytes (close_notify received)" in summary
    assert client.errors() == []
    log = server.out.getvalue()
    assert f"throwaway CA certificate in {ca_path}" in log
    assert re.search(r"listening on 127\.0\.0\.1:\d+ \(TLS, echo\)", log)
    assert "conn 1: from 127.0.0.1:" in log
    assert "TLSv1.3" in log
    assert "ALPN echo" in log
    assert "conn 1: closed, 3 bytes in, 3 bytes out (close_notify received)" in log


async def test_connect_tls12_waits_for_the_server_to_close(
    tmp_path: Path, pems: dict[str, str]
) -> None:
    from trio_membio import serve_tls_over_tcp

    from .helpers import server_context

    note_seen = trio.Event()

    async def reply_then_close(stream: trio.abc.Stream) -> None:
        assert await stream.receive_some() == b"question"
        await note_seen.wait()  # the client has read all of stdin
        await stream.send_all(b"answer")
        await stream.aclose()

    captured = Captured(b"question")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_tls_over_tcp, reply_then_close, 0, server_context(), host="127.0.0.1")
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            nursery.start_soon(
                partial(
                    main_async,
                    ["connect", f"127.0.0.1:{port}", "--cafile", pems["ca"], "--tls1.2"],
                    console=captured.console,
                )
            )
            await captured.err.wait_for("no half-close")
            note_seen.set()
            await captured.err.wait_for("closed:")
            nursery.cancel_scope.cancel()
    assert captured.received == b"answer"
    text = captured.err.getvalue()
    assert "protocol   TLSv1.2" in text
    assert "end of input; TLSv1.2 has no half-close, so waiting for the server" in text
    assert "(close_notify received)" in text


async def test_connect_ends_when_the_server_closes_with_stdin_open(tmp_path: Path) -> None:
    ca_path = str(tmp_path / "ca.pem")
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with trio.fail_after(TIMEOUT):
        async with running_serve("--mode", "http", "--ca-out", ca_path) as (port, server):
            captured = Captured(stdin=None)
            captured.stdin.put_data(request)  # and no end of input
            status = await main_async(
                ["connect", f"localhost:{port}", "--cafile", ca_path, "--alpn", "http/1.1"],
                console=captured.console,
            )
    assert status == 0, captured.err.getvalue()
    response = captured.received
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in response
    assert b"X-TLS-ALPN: http/1.1\r\n" in response
    assert response.endswith(b"hello from trio_membio over TLSv1.3, ALPN http/1.1\n")
    assert "conn 1: GET / -> 200 OK" in server.out.getvalue()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405 Method Not Allowed"),
        (b"GET /nowhere HTTP/1.1\r\n\r\n", b"404 Not Found"),
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"400 Bad Request"),
        (b"GET /bytes/99999999999 HTTP/1.1\r\n\r\n", b"400 Bad Request"),
        # Past int()'s digit limit, and a digit int() refuses: they ended the server.
        (b"GET /bytes/" + b"9" * 5000 + b" HTTP/1.1\r\n\r\n", b"400 Bad Request"),
        (b"GET /bytes/\xb2 HTTP/1.1\r\n\r\n", b"404 Not Found"),
        (b"nonsense\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"400 Bad Request"),
    ],
)
async def test_http_mode_refusals(tmp_path: Path, request_bytes: bytes, status: bytes) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--mode", "http", "--ca-out", ca_path) as (port, _):
            code, captured = await run_connect(
                f"localhost:{port}", "--cafile", ca_path, stdin=request_bytes
            )
    assert code == 0, captured.err.getvalue()
    assert captured.received.startswith(b"HTTP/1.1 " + status + b"\r\n")
    # A 404 keeps the connection (until the client's end); refusals close it.
    keeps = b"Connection: keep-alive\r\n" if status.startswith(b"404") else b"Connection: close\r\n"
    assert keeps in captured.received


async def test_http_keep_alive_and_pattern_bytes(tmp_path: Path) -> None:
    from trio_membio._cli._http_server import HTTP_PATTERN

    ca_path = str(tmp_path / "ca.pem")
    requests = b"GET /bytes/300 HTTP/1.1\r\n\r\nGET /bytes/0 HTTP/1.0\r\n\r\n"
    with trio.fail_after(TIMEOUT):
        async with running_serve("--mode", "http", "--ca-out", ca_path) as (port, server):
            code, captured = await run_connect(
                f"localhost:{port}", "--cafile", ca_path, stdin=requests
            )
    assert code == 0, captured.err.getvalue()
    first, _, rest = captured.received.partition(b"\r\n\r\n")
    assert b"X-Request-Number: 1" in first
    assert b"Connection: keep-alive" in first
    assert rest[:300] == (HTTP_PATTERN * 2)[:300]
    assert b"X-Request-Number: 2" in rest
    assert b"Connection: close" in rest  # HTTP/1.0 without keep-alive
    assert "conn 1: GET /bytes/300 -> 200 OK (300 bytes)" in server.out.getvalue()


async def test_idle_keep_alive_connection_is_closed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(KEEP_ALIVE_TIMEOUT * 2):
        async with running_serve("--mode", "http", "--ca-out", ca_path) as (port, _):
            started = trio.current_time()
            # An IP literal: a name would be resolved in a worker thread,
            # which the autojump clock takes for idleness and jumps past.
            code, captured = await run_connect(
                f"127.0.0.1:{port}", "--cafile", ca_path, stdin=None, timeout=KEEP_ALIVE_TIMEOUT * 2
            )
    assert code == 0, captured.err.getvalue()
    assert trio.current_time() - started == pytest.approx(KEEP_ALIVE_TIMEOUT, abs=1)


async def test_client_certificate_presented(pems: dict[str, str], tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_serve(
            "--cert", pems["server"], "--key", pems["server"],
            "--require-client-cert", "--cafile", pems["ca"],
        ) as (port, server):  # fmt: skip
            status, client = await run_connect(
                f"127.0.0.1:{port}", "--cafile", pems["ca"], "--servername", HOSTNAME,
                "--cert", pems["client"], "--key", pems["client"], stdin=b"ok",
            )  # fmt: skip
            await server.out.wait_for("closed")
    assert status == 0, client.err.getvalue()
    assert client.received == b"ok"
    assert f"client certificate  {pems['client']}" in client.err.getvalue()
    assert f"server name {HOSTNAME}" in client.err.getvalue()
    assert "client certificate CN=test client" in server.out.getvalue()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_client_certificate_missing(pems: dict[str, str], version: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_serve("--require-client-cert", "--cafile", pems["ca"]) as (
            port,
            server,
        ):
            # No --cafile: the throwaway CA is unknown, so skip verification here.
            status, client = await run_connect(
                f"127.0.0.1:{port}", "--insecure", f"--tls{version}", stdin=b"x"
            )
            await server.err.wait_for("warning")
    assert status == 1
    if version == "1.3":
        # The client's handshake ends before the server checks its certificate.
        assert_one_error(client, "certificate required", "pass --cert and --key")
    else:
        assert_one_error(client, "handshake failure", "client certificate (--cert/--key)")
    warning = server.err.getvalue()
    assert "trio_membio: warning: conn 1: TLS handshake with 127.0.0.1:" in warning
    assert "failed: TLS handshake failed" not in warning
    assert "peer did not return a certificate (the client sent no certificate)" in warning


async def test_client_certificate_from_another_ca(pems: dict[str, str], tmp_path: Path) -> None:
    import trustme

    stranger = trustme.CA().issue_cert("client.example.org")
    path = write_pem(
        tmp_path / "stranger.pem",
        stranger.private_key_pem.bytes(),
        *(blob.bytes() for blob in stranger.cert_chain_pems),
    )
    with trio.fail_after(TIMEOUT):
        async with running_serve(
            "--ca-out", str(tmp_path / "ca.pem"), "--require-client-cert", "--cafile", pems["ca"]
        ) as (port, server):
            status, client = await run_connect(
                f"localhost:{port}", "--cafile", str(tmp_path / "ca.pem"),
                "--cert", path, "--key", path, stdin=b"x",
            )  # fmt: skip
            await server.err.wait_for("warning")
    assert status == 1
    assert_one_error(client, "unknown ca", "the server rejected our client certificate")
    assert "certificate verify failed: unable to get local issuer certificate" in (
        server.err.getvalue()
    )


async def test_insecure_summary_decodes_the_unverified_certificate(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", str(tmp_path / "ca.pem")) as (port, _):
            status, client = await run_connect(f"localhost:{port}", "--insecure")
    assert status == 0, client.err.getvalue()
    text = client.err.getvalue()
    assert "NOT verified (--insecure)" in text
    assert "names    DNS:localhost, IP Address:127.0.0.1, IP Address:::1" in text
    assert "subject  O=trustme" in text


async def test_connect_trace(tmp_path: Path) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path) as (port, _):
            status, client = await run_connect(
                f"localhost:{port}", "--cafile", ca_path, "--trace", stdin=b"traced"
            )
    assert status == 0
    lines = client.err.getvalue().splitlines()
    pattern = r"\[ *\d+\.\d{6}\] transport -> incoming BIO: \d+ bytes \(receive\)"
    assert any(re.fullmatch(pattern, line) for line in lines), lines
    assert any(line.endswith("application -> SSLObject: 6 bytes (write)") for line in lines)
    assert any(line.endswith("SSLObject -> application: 6 bytes (read)") for line in lines)
    assert client.received == b"traced"


async def test_serve_trace_labels_connections(tmp_path: Path) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path, "--trace") as (port, server):
            for _ in range(2):
                status, _ = await run_connect(f"localhost:{port}", "--cafile", ca_path)
                assert status == 0
            await server.out.wait_for("conn 2: closed")
    trace = server.err.getvalue()
    assert re.search(r"\] conn 1: transport -> incoming BIO: \d+ bytes \(receive\)", trace)
    assert re.search(r"\] conn 2: SSLObject -> outgoing BIO: \d+ bytes \(handshake\)", trace)


async def test_serve_stops_on_sigterm_in_process(tmp_path: Path) -> None:
    captured = Captured()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            statuses: list[int] = []

            async def serve(task_status: trio.TaskStatus[object]) -> None:
                statuses.append(
                    await main_async(
                        ["serve", "--ca-out", str(tmp_path / "ca.pem")],
                        console=captured.console,
                        task_status=task_status,
                    )
                )
                done.set()

            await nursery.start(serve)
            signal.raise_signal(signal.SIGTERM)
            await done.wait()
    assert statuses == [0]
    assert "trio_membio: SIGTERM received, server stopped" in captured.err.getvalue()


async def test_serve_handshake_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path, "--handshake-timeout", "3") as (port, srv):
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            async with idle:
                started = trio.current_time()
                assert await idle.receive_some() == b""
                assert trio.current_time() - started == pytest.approx(3)
            await srv.err.wait_for("timed out")
    assert re.search(
        r"trio_membio: warning: conn 1: TLS handshake with 127\.0\.0\.1:\d+ timed out "
        r"after 3\.0 seconds",
        srv.err.getvalue(),
    )


@pytest.fixture
def pipes() -> Iterator[tuple[io.BufferedReader, io.BufferedWriter, io.BufferedReader]]:
    """(stdin, stdout, what was written to stdout) as files on pipes.

    stdin holds an HTTP/1.0 request (answered, then the connection closes).
    """
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    os.write(stdin_write, b"GET /bytes/10 HTTP/1.0\r\n\r\n")
    os.close(stdin_write)
    with (
        open(stdin_read, "rb") as stdin,
        open(stdout_write, "wb") as stdout,
        open(stdout_read, "rb") as result,
    ):
        yield stdin, stdout, result


async def test_real_standard_streams_in_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pipes: tuple[io.BufferedReader, io.BufferedWriter, io.BufferedReader],
) -> None:
    """connect's own stdin/stdout (worker-thread reads and writes), through pipes."""
    stdin, stdout, result = pipes
    # Patched here, not in the fixture: pytest resets sys.stdout between phases.
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stdout", stdout)
    ca_path = str(tmp_path / "ca.pem")
    err = WatchedText()
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path, "--mode", "http") as (port, _):
            status = await main_async(
                ["connect", f"localhost:{port}", "--cafile", ca_path],
                console=Console(out=io.StringIO(), err=err),
            )
    monkeypatch.undo()
    stdout.close()  # the pipe's writing end, so that the reader sees the end
    assert status == 0, err.getvalue()
    response = result.read()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\n" + bytes(range(10)))


# --------------------------------------------------------------- user errors


async def test_connection_refused() -> None:
    with free_port() as port:
        status, captured = await run_connect(f"127.0.0.1:{port}")
    assert status == 1
    assert_one_error(
        captured, f"cannot connect to 127.0.0.1:{port}: Connection refused", "is the server running"
    )


class _NoSuchHosts(trio.abc.HostnameResolver):
    """A resolver that knows no names: the test asks no DNS server."""

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> NoReturn:
        await trio.lowlevel.checkpoint()
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> NoReturn:
        raise NotImplementedError


async def test_unresolvable_host() -> None:
    previous = trio.socket.set_custom_hostname_resolver(_NoSuchHosts())
    try:
        status, captured = await run_connect("no-such-host.invalid:443")
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
    assert status == 1
    assert_one_error(captured, "cannot resolve 'no-such-host.invalid': Name or service not known")


async def test_untrusted_certificate(tmp_path: Path, pems: dict[str, str]) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", str(tmp_path / "ca.pem")) as (port, server):
            status, client = await run_connect(f"localhost:{port}", "--cafile", pems["other_ca"])
            await server.err.wait_for("warning")
    assert status == 1
    line = assert_one_error(
        client,
        "TLS handshake failed: certificate verify failed: unable to get local issuer certificate",
        "(is --cafile right?)",
    )
    assert "[SSL" not in line
    assert "_ssl.c" not in line
    assert "alert unknown ca (the client rejected our certificate" in server.err.getvalue()


async def test_wrong_hostname(tmp_path: Path) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path) as (port, _):
            status, client = await run_connect(
                f"127.0.0.1:{port}", "--cafile", ca_path, "--servername", "wrong.example"
            )
    assert status == 1
    assert_one_error(client, "Hostname mismatch", "'wrong.example'", "does --servername")


async def test_expired_certificate(tmp_path: Path, pems: dict[str, str]) -> None:
    now = datetime.now(timezone.utc)
    expired = ca().issue_cert(
        "localhost", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    path = write_pem(
        tmp_path / "expired.pem",
        expired.private_key_pem.bytes(),
        *(blob.bytes() for blob in expired.cert_chain_pems),
    )
    with trio.fail_after(TIMEOUT):
        async with running_serve("--cert", path, "--key", path) as (port, _):
            status, client = await run_connect(f"localhost:{port}", "--cafile", pems["ca"])
    assert status == 1
    assert_one_error(client, "certificate has expired", "must be renewed")


async def test_not_a_tls_server() -> None:
    async def speak_http(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, speak_http, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            status, client = await run_connect(f"127.0.0.1:{port}")
            nursery.cancel_scope.cancel()
    assert status == 1
    assert_one_error(client, "wrong version number", "is the peer speaking TLS?")


async def test_handshake_timeout_on_connect(autojump_clock: trio.testing.MockClock) -> None:
    # A listener that never accepts: the kernel completes the TCP handshake,
    # then nobody speaks TLS.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        status, client = await run_connect(f"127.0.0.1:{port}", "--timeout", "2.5")
    assert status == 1
    assert_one_error(client, "did not finish within 2.5 s", "is it a TLS server?")


async def test_server_closes_without_close_notify(pems: dict[str, str]) -> None:
    from trio_membio import serve_tls_over_tcp

    from .helpers import server_context

    async def answer_then_drop(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"partial")
        await stream.aclose()  # https_compatible: no close_notify

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(
                    serve_tls_over_tcp, answer_then_drop, 0, server_context(),
                    host="127.0.0.1", https_compatible=True,
                )
            )  # fmt: skip
            port = listeners[0].transport_listener.socket.getsockname()[1]
            status, client = await run_connect(
                f"127.0.0.1:{port}", "--cafile", pems["ca"], stdin=None
            )
            nursery.cancel_scope.cancel()
    assert status == 1
    assert client.received == b"partial"
    assert_one_error(client, "the server closed the connection without a TLS close_notify")


async def test_client_vanishes_without_close_notify(tmp_path: Path) -> None:
    from trio_membio import MemoryBIOStream

    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path) as (port, server):
            context = ssl.create_default_context(cafile=ca_path)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = MemoryBIOStream(tcp, context, server_hostname="localhost")
            await client.send_all(b"bye")
            assert await client.receive_some() == b"bye"
            await tcp.aclose()  # under TLS: no close_notify
            await server.out.wait_for("conn 1: closed")
            await client.aclose()
    assert (
        "conn 1: closed, 3 bytes in, 3 bytes out (truncated); the client closed the "
        "connection without a TLS close_notify"
    ) in server.out.getvalue()


async def test_no_common_version(tmp_path: Path) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path, "--tls1.2") as (port, server):
            status, client = await run_connect(f"localhost:{port}", "--cafile", ca_path, "--tls1.3")
            await server.err.wait_for("warning")
    assert status == 1
    assert_one_error(client, "protocol version", "share no TLS version")
    assert "unsupported protocol (the two sides share no TLS version" in server.err.getvalue()


async def test_port_in_use(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", str(tmp_path / "ca.pem")) as (port, _):
            captured = Captured()
            status = await main_async(
                ["serve", "--port", str(port), "--ca-out", str(tmp_path / "ca2.pem")],
                console=captured.console,
            )
    assert status == 1
    assert_one_error(captured, f"cannot listen on 127.0.0.1 port {port}", "try another --port")


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["connect", "127.0.0.1:1", "--cafile", "/nonexistent/ca.pem"], ["--cafile", "No such"]),
        (["connect", "127.0.0.1:1", "--cert", "/nonexistent.pem", "--key", "k"], ["--cert"]),
        (["serve", "--cert", "/nonexistent.pem", "--key", "/nonexistent.pem"], ["--cert"]),
        (["serve", "--ca-out", "/nonexistent/dir/ca.pem"], ["--ca-out", "No such"]),
        (["serve", "--cafile", __file__], ["cannot load --cafile", "PEM file of CAs"]),
        (["connect", "127.0.0.1:1", "--cert", __file__, "--key", __file__], ["PEM files"]),
    ],
)
def test_file_errors(
    arguments: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(arguments) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(ERROR)
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["connect", "127.0.0.1:1", "--cert", "c.pem"], "--cert and --key go together"),
        (["serve", "--key", "k.pem"], "--cert and --key go together"),
        (["serve", "--require-client-cert"], "--require-client-cert needs --cafile"),
        (["serve", "--cert", "c", "--key", "k", "--ca-out", "x"], "--ca-out is for"),
        (["connect", "localhost"], "'localhost' is not HOST:PORT"),
        (["connect", "localhost:http"], "is not HOST:PORT"),
        (["connect", "x:1", "--insecure", "--cafile", "c"], "not allowed with argument"),
        (["connect", "x:1", "--tls1.2", "--tls1.3"], "not allowed with argument"),
        (["serve", "--port", "70000"], "not a port number (0 to 65535)"),
        (["serve", "--port", "http"], "not a port number"),
        (["serve", "--handshake-timeout", "0"], "give a positive number"),
        (["connect", "x:1", "--timeout", "soon"], "not a number of seconds"),
        (["connect", "x:1", "--alpn", "h" * 256], "1 to 255 ASCII characters"),
        (["serve", "--alpn", "h2,caf\u00e9"], "1 to 255 ASCII characters"),
    ],
)
def test_usage_errors(
    arguments: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(arguments)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(ERROR)
    assert fragment in err
    assert "--help" in err


async def test_a_handler_bug_costs_one_connection_not_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_membio._cli import _http_server

    def broken_route(stream: object, target: str) -> tuple[str, bytes]:
        raise RuntimeError(f"bug while routing {target}")

    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--mode", "http", "--ca-out", ca_path) as (port, server):
            with monkeypatch.context() as patch:
                patch.setattr(_http_server, "_route", broken_route)
                await run_connect(
                    f"localhost:{port}", "--cafile", ca_path, stdin=b"GET / HTTP/1.1\r\n\r\n"
                )
            code, captured = await run_connect(
                f"localhost:{port}", "--cafile", ca_path, stdin=b"GET / HTTP/1.1\r\n\r\n"
            )
    assert code == 0, captured.err.getvalue()
    assert captured.received.startswith(b"HTTP/1.1 200 OK\r\n")  # still serving
    log = server.out.getvalue()
    assert "conn 1: closed" in log
    assert "internal error, connection dropped: RuntimeError('bug while routing /')" in log


@pytest.mark.parametrize("stream", ["out", "err"])
def test_a_reader_that_goes_away_does_not_stop_the_log(stream: str) -> None:
    from trio_membio._cli import Console

    read_end, write_end = os.pipe()
    os.close(read_end)  # the script that read "listening on" has exited
    with open(write_end, "w") as gone:
        if stream == "out":
            console = Console(out=gone, err=io.StringIO())
            console.say("conn 1: from 127.0.0.1:5555")  # BrokenPipeError inside
            console.say("conn 1: closed")
        else:  # serve 2>&1 | head -1: warnings go to the same closed pipe
            console = Console(out=io.StringIO(), err=gone)
            console.note("trio_membio: warning: conn 1: TLS handshake with ... failed")
            console.error("and one more line")
        assert console.out_gone if stream == "out" else console.err_gone


def test_ipv6_address_and_alpn_lists() -> None:
    from trio_membio._cli import parse_arguments

    arguments = parse_arguments(["connect", "[::1]:4433", "--alpn", "h2,http/1.1", "--alpn", "x"])
    assert arguments.address == ("::1", 4433)
    assert arguments.alpn == ["h2", "http/1.1", "x"]


@pytest.mark.parametrize(("command", "status"), [("serve", 0), ("connect", 130)])
def test_keyboard_interrupt(
    command: str, status: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(trio, "run", interrupted)
    argv = ["serve"] if command == "serve" else ["connect", "localhost:1"]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("trio_membio: interrupted")
    assert "Traceback" not in err


# ------------------------------------------------------- subprocess smoke tests


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


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_serve_subprocess(tmp_path: Path, stop: signal.Signals) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        command = python_module("serve", "--port", "0", "--ca-out", ca_path)
        async with started_process(command) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            out = bytearray()
            await read_until(process.stdout, b"(TLS, echo)\n", out)
            match = re.search(rb"listening on 127\.0\.0\.1:(\d+) \(TLS, echo\)\n", out)
            assert match, out
            status, client = await run_connect(
                f"localhost:{int(match[1])}", "--cafile", ca_path, stdin=b"ping"
            )
            assert status == 0, client.err.getvalue()
            assert client.received == b"ping"
            await read_until(process.stdout, b"conn 1: closed", out)
            process.send_signal(stop)
            err = bytearray()
            await read_until(process.stderr, b"server stopped\n", err)
            assert await process.wait() == 0
    assert f"trio_membio: {stop.name} received, server stopped" in err.decode()
    assert b"Traceback" not in err


async def test_connect_subprocess(tmp_path: Path) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path) as (port, _):
            result = await trio.run_process(
                python_module("connect", f"localhost:{port}", "--cafile", ca_path),
                stdin=b"hello, subprocess\n",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert result.stdout == b"hello, subprocess\n"
    assert "protocol   TLSv1.3" in err
    assert "closed: sent 18 bytes, received 18 bytes (close_notify received)" in err


# ---------------------------------------- serve keeps serving, whatever happens


def client_hello() -> bytes:
    """The first flight of a TLS client, made with the stdlib's own SSLObject."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


async def test_serve_survives_probes_and_failed_handshakes(tmp_path: Path) -> None:
    """Port probes, clients leaving mid-handshake or rejecting us: each costs its connection."""
    ca_path = str(tmp_path / "ca.pem")
    hello = client_hello()
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path) as (port, server):
            # A port probe: connect, close (the handshake sees a bare EOF).
            with socket.create_connection(("127.0.0.1", port)):
                pass
            for partial_hello in (hello[:5], hello[: len(hello) // 2], hello):
                tcp = await trio.open_tcp_stream("127.0.0.1", port)
                await tcp.send_all(partial_hello)
                await tcp.aclose()
            # A client that does not trust our throwaway CA: it sends an alert.
            status, rejecting = await run_connect(f"localhost:{port}")
            assert status == 1
            assert_one_error(rejecting, "certificate verify failed")
            # One more than the five failures above: the server still serves.
            status, client = await run_connect(
                f"localhost:{port}", "--cafile", ca_path, stdin=b"still here"
            )
            assert status == 0, client.err.getvalue()
            assert client.received == b"still here"
            await server.out.wait_for("conn 6: closed")
    warnings = [line for line in server.err.getvalue().splitlines() if "warning" in line]
    assert len(warnings) == 5, warnings
    assert all(line.startswith("trio_membio: warning: conn ") for line in warnings), warnings
    assert "closed the connection without a TLS close_notify" not in server.err.getvalue()
    assert any("TLS handshake with 127.0.0.1:" in line for line in warnings)
    assert any("the client rejected our certificate" in line for line in warnings), warnings
    assert "Traceback" not in server.err.getvalue()


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("bug"),
        KeyError("bug"),
        OSError(5, "bug"),
        ExceptionGroup("bugs", [ValueError("bug")]),
    ],
    ids=["RuntimeError", "KeyError", "OSError", "ExceptionGroup"],
)
@pytest.mark.parametrize(
    ("module", "attribute"),
    [
        ("_serve", "_client_certificate"),  # the connection's first log line
        ("_serve", "tls_hint"),  # the log handler, on a failed handshake
        ("_http_server", "_route"),  # the request handler
    ],
)
async def test_any_failure_costs_only_its_connection(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    module: str,
    attribute: str,
) -> None:
    from importlib import import_module

    def broken(*args: object, **kwargs: object) -> NoReturn:
        raise failure

    ca_path = str(tmp_path / "ca.pem")
    request = b"GET / HTTP/1.1\r\n\r\n"
    with trio.fail_after(TIMEOUT):
        async with running_serve("--mode", "http", "--ca-out", ca_path) as (port, server):
            with monkeypatch.context() as patch:
                patch.setattr(import_module(f"trio_membio._cli.{module}"), attribute, broken)
                await run_connect(f"localhost:{port}", stdin=request)  # rejects our cert
                await run_connect(f"localhost:{port}", "--cafile", ca_path, stdin=request)
            status, captured = await run_connect(
                f"localhost:{port}", "--cafile", ca_path, stdin=request
            )
            if attribute != "tls_hint":
                await server.out.wait_for("internal error, connection dropped")
    assert status == 0, captured.err.getvalue()
    assert captured.received.startswith(b"HTTP/1.1 200 OK\r\n")  # still serving
    log = server.out.getvalue() + server.err.getvalue()
    assert "Traceback" not in log
    if attribute != "tls_hint":
        assert "internal error, connection dropped" in log


def test_http_mode_refuses_alpn_it_cannot_speak(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_membio._cli import parse_arguments

    for alpn in ("h2", "http/1.1,h2", "h2,http/1.1", "spdy/3"):
        with pytest.raises(SystemExit) as info:
            parse_arguments(["serve", "--mode", "http", "--alpn", alpn])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{ERROR}--mode http speaks only HTTP/1.1"), err
        assert "--alpn http/1.1" in err
    assert parse_arguments(["serve", "--mode", "http", "--alpn", "http/1.1"]).alpn == ["http/1.1"]
    assert parse_arguments(["serve", "--alpn", "h2"]).alpn == ["h2"]  # echo: any protocol


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import trio_membio

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trio_membio {trio_membio.__version__} (trio {trio.__version__}, ")
    assert ssl.OPENSSL_VERSION in out


async def test_demo_trace() -> None:
    captured = Captured()
    with trio.fail_after(TIMEOUT):
        status = await main_async(["demo", "--trace"], console=captured.console)
    assert status == 0
    assert "client  closed" in captured.out.getvalue()
    lines = captured.err.getvalue().splitlines()
    for side in ("client", "server"):
        pattern = rf"\[ *\d+\.\d{{6}}\] {side}: SSLObject -> outgoing BIO: \d+ bytes \(handshake\)"
        assert any(re.fullmatch(pattern, line) for line in lines), lines[:20]
    assert all(re.match(r"\[ *\d+\.\d{6}\] (client|server): ", line) for line in lines)


def test_demo_without_trace_prints_no_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    captured = capsys.readouterr()
    assert "client  closed" in captured.out
    assert captured.err == ""


def test_certificate_chain_as_python_3_13_gives_it() -> None:
    """From 3.13 the chain methods exist and give DER bytes; before, only the leaf is shown."""
    from typing import Any, cast

    from trio_membio._cli._connect import _chain

    leaf_pem, *_ = server_cert().cert_chain_pems
    der_chain = [
        ssl.PEM_cert_to_DER_cert(leaf_pem.bytes().decode()),
        ssl.PEM_cert_to_DER_cert(ca().cert_pem.bytes().decode()),
    ]

    class SSLObject313:
        def get_verified_chain(self) -> list[bytes]:
            return der_chain

        def get_unverified_chain(self) -> list[bytes]:
            return der_chain[:1]

    class Stream:
        ssl_object = SSLObject313()

    stream = cast(Any, Stream())
    chain, whole = _chain(stream, verified=True)
    assert whole
    assert [certificate.subject.startswith("O=trustme") for certificate in chain] == [True, True]
    assert f"DNS:{HOSTNAME}" in chain[0].names
    assert chain[1].names == ""
    assert chain[0].issuer == chain[1].subject
    unverified, whole = _chain(stream, verified=False)
    assert whole
    assert unverified == chain[:1]
