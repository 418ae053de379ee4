"""The command line: ``serve`` and ``connect`` against each other in this process.

The happy paths of both commands (echo and HTTP modes, client certificates,
traces, the connection summary) through ``main_async`` with in-memory standard
streams. User errors are in test_cli_errors.py, serve's resilience in
test_cli_serve_resilience.py, real processes and signals in
test_cli_subprocess.py; the shared kit is tests/cli_harness.py.
"""

from __future__ import annotations

import re
import ssl
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_membio._cli import main, main_async
from trio_membio._cli._http_server import KEEP_ALIVE_TIMEOUT

from .cli_harness import (
    TIMEOUT,
    Captured,
    assert_one_error,
    run_connect,
    running_serve,
    write_pem,
)
from .helpers import HOSTNAME, ca, server_cert


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


def test_ipv6_address_and_alpn_lists() -> None:
    from trio_membio._cli import parse_arguments

    arguments = parse_arguments(["connect", "[::1]:4433", "--alpn", "h2,http/1.1", "--alpn", "x"])
    assert arguments.address == ("::1", 4433)
    assert arguments.alpn == ["h2", "http/1.1", "x"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import trio_membio

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trio_membio {trio_membio.__version__} (trio {trio.__version__}, ")
    assert ssl.OPENSSL_VERSION in out


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
