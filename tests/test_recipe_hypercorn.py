"""Recipe: hypercorn serving HTTPS over MemoryBIOStream (docs/recipes.md).

hypercorn's trio worker builds trio.SSLListener itself and has no hook for
another listener, so trio_membio.hypercorn.serve stands in for
hypercorn.trio.serve (its module docstring says why and how). These tests
serve a real ASGI app on loopback, on TLS 1.2 and 1.3, over HTTP/1.1 and
HTTP/2, and request it with httpcore over trio_membio's own backend; the
server ends HTTP/1.1 connections with send_eof(), which is the call that
used to take the whole server down on TLS 1.2.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpcore
import pytest
import trio
from hypercorn.config import Config
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Scope,
)

from trio_membio import TraceEvent
from trio_membio.httpcore import MemoryBIOBackend
from trio_membio.hypercorn import serve

from .helpers import TLSVersion, client_context, server_cert

trio_ssl_listener = trio.SSLListener
#: The logger MemoryBIOStream traces to (its docstring: ``trace=``).
TRACE_LOGGER = "trio_membio.trace"


async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """A tiny ASGI app: says which scheme, HTTP version and path it served."""
    if scope["type"] == "lifespan":  # nothing to set up or tear down
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = f"{scope['scheme']} HTTP/{scope['http_version']} {scope['path']}".encode()
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        "trailers": False,
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


def hypercorn_config(tmp_path: Path) -> Config:
    """hypercorn's own configuration, as for hypercorn.trio.serve."""
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert().cert_chain_pems[0].write_to_path(certfile)
    server_cert().private_key_pem.write_to_path(keyfile)
    config = Config()
    config.bind = ["127.0.0.1:0"]  # port 0: task_status says which one
    config.certfile, config.keyfile = str(certfile), str(keyfile)
    return config


@contextlib.asynccontextmanager
async def running_hypercorn(tmp_path: Path) -> AsyncIterator[str]:
    """hypercorn serving :func:`app` through trio_membio.hypercorn; yields its URL.

    On the way out, asks for a graceful shutdown and waits for serve() to return.
    """
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(
            partial(serve, app, hypercorn_config(tmp_path), shutdown_trigger=shutdown.wait)
        )
        yield url
        shutdown.set()


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_hypercorn_serves_https_over_memorybio(
    tmp_path: Path, version: TLSVersion, http2: bool
) -> None:
    with trio.fail_after(20):
        async with running_hypercorn(tmp_path) as url:
            assert url.startswith("https://127.0.0.1:")
            async with httpcore.AsyncConnectionPool(
                ssl_context=client_context(version),  # pins the TLS version
                network_backend=MemoryBIOBackend(),
                http2=http2,
            ) as pool:
                response = await pool.request("GET", f"{url}/hello")
                assert response.status == 200
                http_version = "2" if http2 else "1.1"  # ALPN chose it
                assert response.content == f"https HTTP/{http_version} /hello".encode()
                ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
                assert ssl_object.version() == f"TLSv{version}"


async def test_hypercorn_rejects_quic(tmp_path: Path) -> None:
    config = hypercorn_config(tmp_path)
    config.quic_bind = ["127.0.0.1:0"]
    with pytest.raises(ValueError, match=r"HTTP/3 \(config.quic_bind\) carries its own TLS"):
        await serve(app, config)


#: The sha256 of hypercorn.trio.run.worker_serve's source that
#: trio_membio.hypercorn._worker_serve copies (hypercorn 0.18.0).
WORKER_SERVE_SHA256 = "8dc8347a9fc357ca334f8c3e4bcf0368176510a96d434f21a5eb4c9ec4103726"


def test_the_copied_hypercorn_worker_is_current() -> None:
    """trio_membio.hypercorn copies hypercorn's worker loop: notice when it changes.

    If this fails, hypercorn changed hypercorn.trio.run.worker_serve: compare
    it with trio_membio.hypercorn._worker_serve, carry the change over (the
    only intended difference is MemoryBIOListener for trio.SSLListener, and
    no QUIC or ``sockets``), then update WORKER_SERVE_SHA256.
    """
    import hypercorn.trio.run

    source = inspect.getsource(hypercorn.trio.run.worker_serve)
    assert hashlib.sha256(source.encode()).hexdigest() == WORKER_SERVE_SHA256
    assert "trio.SSLListener(" in source  # still the one line we replace


def fetch_and_see_close_notify(url: str, version: TLSVersion) -> tuple[bytes, str]:
    """GET ``url`` over a blocking ssl socket with ``Connection: close``; read to the end.

    Run in a thread. The read ends with b"" only if the server sent
    close_notify: a bare TCP close raises ssl.SSLEOFError here. hypercorn
    sends close_notify through send_eof() (it skips aclose()'s, being
    https_compatible), so this sees send_eof() work, on TLS 1.2 too.
    """
    host, port = url.removeprefix("https://").split(":")
    context = client_context(version)
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # some builds set it
    with (
        socket.create_connection((host, int(port))) as tcp,
        # suppress_ragged_eofs=False: else recv() takes a bare TCP close for b"".
        context.wrap_socket(tcp, server_hostname=host, suppress_ragged_eofs=False) as tls,
    ):
        negotiated = str(tls.version())
        tls.sendall(
            b"GET /stdlib HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host.encode()
        )
        received = bytearray()
        while chunk := tls.recv(65536):
            received += chunk
        return bytes(received), negotiated


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_the_server_side_is_memorybio(
    tmp_path: Path, version: TLSVersion, caplog: pytest.LogCaptureFixture
) -> None:
    """No global monkeypatch, and yet the server's TLS is MemoryBIOStream's.

    Also: the server ends the connection with send_eof() (close_notify) and
    stays up, on TLS 1.2 as on 1.3.

    The client here is the standard library's, so the only MemoryBIOStreams
    in the process are the server's, and the trace records prove they exist.
    """
    caplog.set_level(logging.DEBUG, logger=TRACE_LOGGER)
    with trio.fail_after(20):
        async with running_hypercorn(tmp_path) as url:
            for _ in range(2):  # the server survives the close, and serves again
                response, negotiated = await trio.to_thread.run_sync(
                    fetch_and_see_close_notify, url, version
                )
                assert response.startswith(b"HTTP/1.1 200 ")
                assert response.endswith(b"\r\n\r\nhttps HTTP/1.1 /stdlib")
                assert negotiated == f"TLSv{version}"
    assert trio.SSLListener is trio_ssl_listener  # nothing was replaced
    events = [
        event
        for record in caplog.records
        if record.name == TRACE_LOGGER and isinstance(record.args, tuple)
        for event in record.args
        if isinstance(event, TraceEvent)
    ]
    assert any(event.operation == "handshake" for event in events)
