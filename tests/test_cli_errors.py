"""The command line's user errors: one error line that says what to do next, no traceback."""

from __future__ import annotations

import io
import os
import socket
import ssl
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import NoReturn

import pytest
import trio
import trio.testing

from trio_membio._cli import Console, main, main_async

from .cli_harness import (
    ERROR,
    TIMEOUT,
    Captured,
    assert_one_error,
    free_port,
    run_connect,
    running_serve,
    write_pem,
)
from .helpers import ca


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


@pytest.mark.parametrize("stream", ["out", "err"])
def test_a_reader_that_goes_away_does_not_stop_the_log(stream: str) -> None:

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
