"""``serve`` keeps serving, whatever happens to one connection.

Port probes, half-sent ClientHellos, clients that reject our certificate, and
a bug in any per-connection code path each cost that connection only: the
next client is served.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
from pathlib import Path
from typing import NoReturn

import pytest
import trio
import trio.testing

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

from .cli_harness import (
    TIMEOUT,
    assert_one_error,
    run_connect,
    running_serve,
)


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
            # After the five failures above (the probe logged at DEBUG only,
            # so the CLI neither prints nor numbers it): the server still serves.
            status, client = await run_connect(
                f"localhost:{port}", "--cafile", ca_path, stdin=b"still here"
            )
            assert status == 0, client.err.getvalue()
            assert client.received == b"still here"
            await server.out.wait_for("conn 5: closed")
    warnings = [line for line in server.err.getvalue().splitlines() if "warning" in line]
    assert len(warnings) == 4, warnings  # not the port probe: it sent nothing
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
