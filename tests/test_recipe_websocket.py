"""Recipe: trio-websocket client and server over MemoryBIOStream (docs/recipes.md).

trio-websocket's high-level helpers (open_websocket, serve_websocket) make
their own trio.SSLStream; its low-level wrap_client_stream and
wrap_server_stream take any trio stream, so MemoryBIOStream goes in there.
The server side is serve_tls_over_tcp, so every connection gets the
handshake deadline and error reporting before trio-websocket sees it.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import pytest
import trio
import trio_websocket

from trio_membio import MemoryBIOStream, open_tls_over_tcp_stream, serve_tls_over_tcp

from .helpers import TLSVersion, client_context, server_context


async def websocket_echo(stream: MemoryBIOStream[trio.SocketStream]) -> None:
    """Serve one connection: accept the WebSocket, echo every message back."""
    async with trio.open_nursery() as nursery:  # trio-websocket's reader task lives here
        request = await trio_websocket.wrap_server_stream(nursery, stream)
        websocket = await request.accept()
        try:
            while True:
                await websocket.send_message(await websocket.get_message())
        except trio_websocket.ConnectionClosed:
            pass  # the client closed the WebSocket: the nursery ends with it


async def echo_over_websocket(port: int, messages: list[str | bytes], version: TLSVersion) -> None:
    stream = await open_tls_over_tcp_stream("127.0.0.1", port, ssl_context=client_context(version))
    assert stream.server_hostname == "127.0.0.1"
    async with trio.open_nursery() as nursery:
        websocket = await trio_websocket.wrap_client_stream(
            nursery,
            # trio-websocket annotates trio.SSLStream; it only uses the Stream API.
            cast("trio.SSLStream[trio.SocketStream]", stream),
            host="127.0.0.1",
            resource="/echo",
        )
        for message in messages:
            await websocket.send_message(message)
            assert await websocket.get_message() == message
        assert stream.version() == f"TLSv{version}"
        await websocket.aclose()  # the closing handshake, then the TLS stream's aclose()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_websocket_echo_over_memorybio(version: TLSVersion) -> None:
    messages: list[str | bytes] = ["hello", b"\x00binary\xff", "x" * 100_000]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_tls_over_tcp, websocket_echo, 0, server_context(), host="127.0.0.1")
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            async with trio.open_nursery() as clients:  # two at once, each its own connection
                clients.start_soon(echo_over_websocket, port, messages, version)
                clients.start_soon(echo_over_websocket, port, messages[::-1], version)
            nursery.cancel_scope.cancel()
