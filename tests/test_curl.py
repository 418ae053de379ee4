"""curl against ``serve --mode http``.

The server runs in this process (``main_async``), curl as a subprocess. Each
test checks what curl says (its ``-v`` log, the response) and what the
server saw (its log, and the ``X-TLS-*`` / ``X-Request-Number`` headers it
sends back). ``-q`` ignores any ~/.curlrc and ``--noproxy '*'`` any proxy
settings; ``--resolve`` pins localhost to 127.0.0.1, where serve listens.
Without curl the tests skip, or fail when CI is set.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trio_membio._cli._http_server import HTTP_PATTERN

from .cli_harness import TIMEOUT, Captured, require_tool, running_serve

VERSION_OPTIONS = {"1.2": ["--tlsv1.2", "--tls-max", "1.2"], "1.3": ["--tlsv1.3"]}


@pytest.fixture(scope="module")
def curl_path() -> str:
    return require_tool("curl")


class Server:
    def __init__(self, port: int, log: Captured, ca_path: str) -> None:
        self.port = port
        self.log = log
        self.ca_path = ca_path

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    ca_path = str(tmp_path / "ca.pem")
    async with running_serve("--mode", "http", "--ca-out", ca_path) as (port, log):
        yield Server(port, log, ca_path)


async def curl(
    curl_path: str, server: Server, *arguments: str
) -> tuple[bytes, str]:  # (stdout, stderr)
    command = [
        curl_path, "-q", "--silent", "--show-error", "--noproxy", "*",
        "--cacert", server.ca_path, "--resolve", f"localhost:{server.port}:127.0.0.1",
        *arguments,
    ]  # fmt: skip
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    return result.stdout, stderr


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_versions(curl_path: str, server: Server, version: str) -> None:
    out, err = await curl(
        curl_path, server, "--include", "--verbose", *VERSION_OPTIONS[version], server.url("/")
    )
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"X-TLS-Version: TLSv{version}\r\n".encode() in out
    assert out.endswith(f"hello from trio_membio over TLSv{version}, ALPN http/1.1\n".encode())
    assert re.search(rf"SSL connection using TLSv{version} / \S+", err), err
    await server.log.out.wait_for("conn 1: closed")
    log = server.log.out.getvalue()
    assert "conn 1: from 127.0.0.1:" in log
    assert f"TLSv{version}" in log
    assert "conn 1: GET / -> 200 OK" in log


@pytest.mark.parametrize("http11", [True, False], ids=["http1.1", "default"])
async def test_alpn(curl_path: str, server: Server, http11: bool) -> None:
    # --http1.1 offers only http/1.1; by default curl offers h2 too, and the
    # server (http/1.1 only) picks http/1.1 all the same.
    options = ["--http1.1"] if http11 else []
    out, err = await curl(curl_path, server, "--include", "--verbose", *options, server.url("/"))
    assert b"X-TLS-ALPN: http/1.1\r\n" in out
    offered = "http/1.1" if http11 else "h2,http/1.1"
    assert f"ALPN: offers {offered}" in err or f"ALPN, offering {offered.split(',')[0]}" in err
    assert re.search(r"ALPN[:,] server accepted (to use )?http/1\.1", err), err
    await server.log.out.wait_for("conn 1: closed")
    assert "ALPN http/1.1" in server.log.out.getvalue()


async def test_keep_alive(curl_path: str, server: Server) -> None:
    out, err = await curl(
        curl_path, server, "--include", "--verbose", "--http1.1",
        server.url("/bytes/10"), server.url("/"),
    )  # fmt: skip
    assert "Re-using existing connection" in err, err
    first, second = out.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b"X-Request-Number: 1\r\n" in first
    assert b"Connection: keep-alive\r\n" in first
    assert b"X-Request-Number: 2\r\n" in second
    await server.log.out.wait_for("conn 1: closed")
    log = server.log.out.getvalue()
    assert "conn 1: GET /bytes/10 -> 200 OK (10 bytes)" in log
    assert "conn 1: GET / -> 200 OK" in log
    assert "conn 2" not in log


async def test_multi_megabyte_response(curl_path: str, server: Server, tmp_path: Path) -> None:
    size = 5_000_000
    target = tmp_path / "body"
    await curl(curl_path, server, "--output", str(target), server.url(f"/bytes/{size}"))
    body = target.read_bytes()
    assert len(body) == size
    expected = (HTTP_PATTERN * (size // len(HTTP_PATTERN) + 1))[:size]
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(expected).hexdigest()
    await server.log.out.wait_for("conn 1: closed")
    assert f"conn 1: GET /bytes/{size} -> 200 OK ({size} bytes)" in server.log.out.getvalue()


async def test_other_methods_are_refused(curl_path: str, server: Server) -> None:
    out, _ = await curl(curl_path, server, "--include", "--request", "DELETE", server.url("/"))
    assert out.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"Allow: GET\r\n" in out
