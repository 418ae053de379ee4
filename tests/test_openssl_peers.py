"""OpenSSL's own tools as peers: ``openssl s_server`` against our ``connect``,
``openssl s_client`` against our ``serve``.

Our side runs in this process (``main_async``), the openssl side as a
subprocess. ``s_server -accept 127.0.0.1:0`` picks a free port and prints it
on its ``ACCEPT`` line, which is also the sign that it is ready; ``-naccept 1``
makes it exit after one connection, ``-rev`` answers each line reversed and
closes (with close_notify) on a line ``CLOSE`` or on the client's
close_notify. ``s_client -no_ign_eof`` sends close_notify and exits at the end
of its stdin. Without openssl the tests skip, or fail when CI is set.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import trio

from .cli_harness import (
    TIMEOUT,
    Captured,
    read_all,
    read_until,
    require_tool,
    run_connect,
    running_serve,
    started_process,
)

VERSIONS = pytest.mark.parametrize("version", ["1.2", "1.3"])
S_CLIENT_VERSION = {"1.2": "-tls1_2", "1.3": "-tls1_3"}


@pytest.fixture(scope="module")
def openssl() -> str:
    return require_tool("openssl")


class SServer:
    """What an ``openssl s_server`` run printed, once it has exited."""

    def __init__(self) -> None:
        self.port = 0
        self.out = b""
        self.err = b""
        self.status: int | None = None


async def run_with_s_server(
    openssl: str, pems: dict[str, str], s_server_options: list[str], *connect_options: str,
    stdin: bytes,
) -> tuple[int, str, bytes, SServer]:  # fmt: skip
    """Start s_server, run our connect against it; (status, its stderr, its stdout, s_server)."""
    command = [
        openssl, "s_server", "-accept", "127.0.0.1:0", "-naccept", "1",
        "-cert", pems["server"], "-rev", *s_server_options,
    ]  # fmt: skip
    server = SServer()
    with trio.fail_after(TIMEOUT):
        async with started_process(command) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            out = bytearray()
            while not (accept := re.search(rb"ACCEPT 127\.0\.0\.1:(\d+)\n", out)):
                out += await process.stdout.receive_some()
            server.port = int(accept[1])
            status, client = await run_connect(
                f"127.0.0.1:{server.port}", "--cafile", pems["ca"], *connect_options, stdin=stdin
            )
            server.out = bytes(out) + await read_all(process.stdout)
            server.err = await read_all(process.stderr)
            server.status = await process.wait()  # -naccept 1: it ends with the connection
    return status, client.err.getvalue(), client.received, server


@VERSIONS
async def test_connect_to_s_server(openssl: str, pems: dict[str, str], version: str) -> None:
    # TLS 1.2 has no half-close: the client waits until the server closes, so ask it to.
    stdin = b"hello\nworld\n" + (b"CLOSE\n" if version == "1.2" else b"")
    status, err, received, server = await run_with_s_server(
        openssl, pems, ["-alpn", "first,second"], "--alpn", "second", f"--tls{version}",
        stdin=stdin,
    )  # fmt: skip
    assert status == 0, err
    assert received == b"olleh\ndlrow\n"
    assert f"protocol   TLSv{version}" in err
    assert "ALPN       second" in err
    assert "(close_notify received)" in err
    assert b"ALPN protocols selected: second" in server.out
    assert f"Protocol version: TLSv{version}".encode() in server.err
    assert b"CONNECTION CLOSED" in server.err
    assert server.status == 0


async def test_half_close_to_s_server(openssl: str, pems: dict[str, str]) -> None:
    """TLS 1.3: our send_eof() right after the data, then the replies still arrive.

    What s_server does with our close_notify: it answers every line that came
    before it, then logs CONNECTION CLOSED and closes with its own
    close_notify (it does not keep the connection open to write more).
    """
    status, err, received, server = await run_with_s_server(
        openssl, pems, [], "--tls1.3", "--trace", stdin=b"one\ntwo\n"
    )
    assert status == 0, err
    assert "SSLObject -> outgoing BIO: 24 bytes (close_notify)" in err  # our send_eof()
    assert received == b"eno\nowt\n"
    assert "closed: sent 8 bytes, received 8 bytes (close_notify received)" in err
    assert b"CONNECTION CLOSED" in server.err
    assert server.status == 0


async def test_client_certificate_to_s_server(openssl: str, pems: dict[str, str]) -> None:
    status, err, received, server = await run_with_s_server(
        openssl, pems, ["-Verify", "1", "-CAfile", pems["ca"]],
        "--cert", pems["client"], "--key", pems["client"], stdin=b"with a certificate\n",
    )  # fmt: skip
    assert status == 0, err
    assert received == b"etacifitrec a htiw\n"
    assert b"CN = test client" in server.out + server.err


@VERSIONS
async def test_missing_client_certificate_to_s_server(
    openssl: str, pems: dict[str, str], version: str
) -> None:
    status, err, received, server = await run_with_s_server(
        openssl, pems, ["-Verify", "1", "-CAfile", pems["ca"]], f"--tls{version}", stdin=b"x\n"
    )
    assert status == 1
    assert received == b""
    fragment = "certificate required" if version == "1.3" else "handshake failure"
    assert fragment in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert b"peer did not return a certificate" in server.err
    assert b"CONNECTION FAILURE" in server.err


async def s_client_session(
    openssl: str, port: int, *options: str, send: bytes | None
) -> tuple[int, bytes, bytes]:
    """Run s_client; if ``send``, wait for its echo, then end its stdin.

    Returns (exit status, stdout, stderr).
    """
    command = [
        openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
        "-verify_return_error", "-no_ign_eof", *options,
    ]  # fmt: skip
    async with started_process(command) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        out = bytearray()
        if send is not None:
            await process.stdin.send_all(send)
            await read_until(process.stdout, send, out)
            await process.stdin.aclose()  # s_client sends close_notify and exits
        out += await read_all(process.stdout)
        err = await read_all(process.stderr)
        return await process.wait(), bytes(out), err


@VERSIONS
async def test_s_client_to_serve(openssl: str, tmp_path: Path, version: str) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path, "--alpn", "other,echo") as (port, server):
            status, out, err = await s_client_session(
                openssl, port, "-CAfile", ca_path, "-alpn", "echo", S_CLIENT_VERSION[version],
                send=b"echo me\n",
            )  # fmt: skip
            await server.out.wait_for("conn 1: closed")
    assert status == 0, err
    assert b"ALPN protocol: echo" in out
    assert f"New, TLSv{version}, Cipher is".encode() in out
    assert b"Verify return code: 0 (ok)" in out
    log = server.out.getvalue()
    assert f"TLSv{version}" in log
    assert "ALPN echo" in log
    assert "conn 1: closed, 8 bytes in, 8 bytes out (close_notify received)" in log


def serve_requiring_client_certificates(
    tmp_path: Path, pems: dict[str, str]
) -> contextlib.AbstractAsyncContextManager[tuple[int, Captured]]:
    """``serve`` with a throwaway CA in tmp_path/ca.pem, refusing clients
    without a certificate from the test CA."""
    return running_serve(
        "--ca-out", str(tmp_path / "ca.pem"), "--require-client-cert", "--cafile", pems["ca"]
    )


async def test_s_client_certificate_to_serve(
    openssl: str, pems: dict[str, str], tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serve_requiring_client_certificates(tmp_path, pems) as (port, server):
            status, _, err = await s_client_session(
                openssl, port, "-CAfile", str(tmp_path / "ca.pem"),
                "-cert", pems["client"], "-key", pems["client"], send=b"mine\n",
            )  # fmt: skip
            await server.out.wait_for("conn 1: closed")
    assert status == 0, err
    assert "client certificate CN=test client" in server.out.getvalue()


@VERSIONS
async def test_s_client_without_certificate_to_serve(
    openssl: str, pems: dict[str, str], tmp_path: Path, version: str
) -> None:
    """Both sides report the missing certificate, and neither hangs."""
    with trio.fail_after(TIMEOUT):
        async with serve_requiring_client_certificates(tmp_path, pems) as (port, server):
            status, _, err = await s_client_session(
                openssl, port, "-CAfile", str(tmp_path / "ca.pem"), S_CLIENT_VERSION[version],
                send=None,
            )  # fmt: skip
            await server.err.wait_for("warning")
    assert status == 1
    fragment = b"alert certificate required" if version == "1.3" else b"alert handshake failure"
    assert fragment in err
    warning = server.err.getvalue()
    assert "peer did not return a certificate (the client sent no certificate)" in warning
    assert "Traceback" not in warning
