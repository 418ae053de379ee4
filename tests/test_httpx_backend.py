"""trio_membio.httpcore: MemoryBIOBackend and MemoryBIONetworkStream under httpcore alone.

These drive the network backend directly or through a plain httpcore pool,
without httpx; tests/test_httpx_transport.py has the same backend under
httpx. Also here: trio-websocket over MemoryBIOStream, which docs/httpx.md
describes next to httpx.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import sys
from functools import partial

import httpcore
import pytest
import trio
import trio.testing
import trio_websocket

from trio_membio import MemoryBIOStream, serve_tls_over_tcp
from trio_membio.httpcore import MemoryBIOBackend, MemoryBIONetworkStream

from .helpers import HOSTNAME, client_context, server_context
from .httpx_servers import Corked, HTTPSServer, TLSServerStream, port_of


async def test_an_httpcore_pool_over_the_backend(nursery: trio.Nursery) -> None:
    """What docs/httpx.md shows under "With httpcore"."""
    server = await HTTPSServer().start(nursery)
    async with httpcore.AsyncConnectionPool(
        ssl_context=client_context(), network_backend=MemoryBIOBackend()
    ) as pool:
        first = await pool.request("GET", f"https://127.0.0.1:{server.port}/hello")
        second = await pool.request("GET", f"https://127.0.0.1:{server.port}/hello")
        network_stream = second.extensions["network_stream"]
        assert isinstance(network_stream, MemoryBIONetworkStream)
        assert isinstance(network_stream.stream, MemoryBIOStream)
    assert first.status == second.status == 200
    assert first.content == second.content == b"hello from connection 1"


async def _connected_pair(
    corked: bool = False,
) -> tuple[MemoryBIONetworkStream, MemoryBIOStream[trio.abc.Stream], trio.SocketStream]:
    """A handshaken (client network stream, server TLS stream, client socket)."""
    client_sock, server_sock = trio.socket.socketpair()
    client_tcp, server_tcp = trio.SocketStream(client_sock), trio.SocketStream(server_sock)
    server_transport: trio.abc.Stream = Corked(server_tcp) if corked else server_tcp
    server = MemoryBIOStream(server_transport, server_context(), server_side=True)
    plain = MemoryBIONetworkStream(client_tcp)
    result: list[MemoryBIONetworkStream] = []

    async def client_handshake() -> None:
        result.append(await plain.start_tls(client_context(), HOSTNAME, timeout=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_handshake)
        nursery.start_soon(server.do_handshake)
    return result[0], server, client_tcp


async def test_is_readable_sees_plaintext_and_ciphertext_buffered_in_tls() -> None:
    client, server, client_tcp = await _connected_pair(corked=True)
    async with client_tcp, server:
        assert client.get_extra_info("is_readable") is False

        # Decrypted plaintext that read() did not return yet.
        await server.send_all(b"hello world")
        assert await client.read(1, timeout=5) == b"h"
        assert client_tcp.socket.is_readable() is False
        assert client.get_extra_info("is_readable") is True
        assert await client.read(100, timeout=5) == b"ello world"
        assert client.get_extra_info("is_readable") is False

        # Whole records still in the incoming BIO: read() stopped at max_bytes
        # after the first of two records that arrived in one TCP segment.
        corked = server.transport_stream
        assert isinstance(corked, Corked)
        corked.held = bytearray()
        await server.send_all(b"first")
        await server.send_all(b"second")
        await corked.flush()
        assert await client.read(5, timeout=5) == b"first"
        assert client_tcp.socket.is_readable() is False
        assert isinstance(client.stream, MemoryBIOStream)
        assert client.stream.ssl_object.pending() == 0
        assert client.get_extra_info("is_readable") is True
        assert await client.read(100, timeout=5) == b"second"
        assert client.get_extra_info("is_readable") is False

        # A close_notify that was read along with the data.
        corked.held = bytearray()
        await server.send_all(b"last")
        await server.send_eof()
        await corked.flush()
        assert await client.read(100, timeout=5) == b"last"
        assert client_tcp.socket.is_readable() is False
        assert client.get_extra_info("is_readable") is True
        assert await client.read(100, timeout=5) == b""

        await client.aclose()
        assert client.get_extra_info("is_readable") is True  # closed: never reuse


async def test_stream_errors_and_timeouts_without_a_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mine, theirs = trio.testing.lockstep_stream_pair()
    stream = MemoryBIONetworkStream(mine)
    async with theirs:
        with pytest.raises(httpcore.WriteTimeout):
            await stream.write(b"nobody reads this", timeout=2)
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(10, timeout=2)
        await stream.write(b"")  # nothing to send: returns at once
        for key in ("ssl_object", "socket", "client_addr", "server_addr"):
            assert stream.get_extra_info(key) is None
        assert stream.get_extra_info("is_readable") is False
        await stream.aclose()
        with pytest.raises(httpcore.ReadError):
            await stream.read(10)
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"x")


async def test_connect_errors() -> None:
    backend = MemoryBIOBackend()
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("127.0.0.1", port)  # nobody listens: refused

    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(httpcore.ConnectError):
            await backend.connect_tcp("127.0.0.1", port, socket_options=[(-1, -1, 1)])
        # The (level, option, None, length) form passes a NULL value to
        # setsockopt, which SO_LINGER refuses: also a ConnectError.
        linger = (socket.SOL_SOCKET, socket.SO_LINGER, None, 8)
        with pytest.raises(httpcore.ConnectError):
            await backend.connect_tcp("127.0.0.1", port, socket_options=[linger])
    await backend.sleep(0)


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpcore", None)  # makes `import httpcore` fail
    monkeypatch.delitem(sys.modules, "trio_membio.httpcore")
    with pytest.raises(ImportError, match=r"pip install 'trio-membio\[httpx\]'"):
        importlib.import_module("trio_membio.httpcore")


async def test_trio_websocket_over_memorybio(nursery: trio.Nursery) -> None:
    """trio-websocket's public wrap_*_stream functions take any trio stream."""
    from trio_membio import open_tls_over_tcp_stream

    async def echo(stream: TLSServerStream) -> None:
        async with trio.open_nursery() as tasks:
            request = await trio_websocket.wrap_server_stream(tasks, stream)
            websocket = await request.accept()
            await websocket.send_message((await websocket.get_message()).upper())
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                await websocket.get_message()

    listeners = await nursery.start(
        partial(serve_tls_over_tcp, echo, 0, server_context(), host="127.0.0.1")
    )
    stream = await open_tls_over_tcp_stream(
        "127.0.0.1", port_of(listeners[0]), ssl_context=client_context()
    )
    async with trio.open_nursery() as tasks:
        # Annotated as taking trio's SocketStream or SSLStream; it uses only the
        # Stream interface (docs/httpx.md says so).
        websocket = await trio_websocket.wrap_client_stream(
            tasks,
            stream,  # type: ignore[arg-type]
            "127.0.0.1",
            "/echo",
        )
        await websocket.send_message("over two memory BIOs")
        assert await websocket.get_message() == "OVER TWO MEMORY BIOS"
        await websocket.aclose()
