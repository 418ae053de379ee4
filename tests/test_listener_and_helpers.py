"""MemoryBIOListener and the open/serve helpers over loopback TCP."""

from __future__ import annotations

import ssl
from functools import partial

import pytest
import trio

from trio_membio import (
    MemoryBIOListener,
    MemoryBIOStream,
    default_client_context,
    open_tls_over_tcp_listeners,
    open_tls_over_tcp_stream,
    serve_tls_over_tcp,
)

from .helpers import client_context, server_context


def test_default_client_context_is_strict() -> None:
    context = default_client_context()
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert not context.options & ssl.OP_IGNORE_UNEXPECTED_EOF


async def test_accept_does_not_wait_for_the_handshake() -> None:
    listeners = await open_tls_over_tcp_listeners(0, server_context(), host="127.0.0.1")
    listener = listeners[0]
    assert isinstance(listener, MemoryBIOListener)
    assert isinstance(listener.transport_listener, trio.SocketListener)
    port = listener.transport_listener.socket.getsockname()[1]
    with trio.fail_after(5):
        # A plain TCP client that says nothing: accept() still returns.
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        accepted = await listener.accept()
    assert isinstance(accepted, MemoryBIOStream)
    assert accepted.server_side
    await silent.aclose()
    await accepted.aclose()
    await listener.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()


async def test_open_and_serve_round_trip() -> None:
    async def echo(stream: MemoryBIOStream[trio.SocketStream]) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_tls_over_tcp, echo, 0, server_context(), host="127.0.0.1")
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            client = await open_tls_over_tcp_stream("127.0.0.1", port, ssl_context=client_context())
            assert client.server_hostname == "127.0.0.1"
            await client.send_all(b"over TCP")
            assert await client.receive_some() == b"over TCP"
            assert client.transport_stream.socket.getpeername()[1] == port
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_default_context_rejects_an_unknown_ca() -> None:
    async def never_called(stream: MemoryBIOStream[trio.SocketStream]) -> None:
        raise AssertionError("the handshake must fail first")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_tls_over_tcp, never_called, 0, server_context(), host="127.0.0.1")
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            client = await open_tls_over_tcp_stream(b"127.0.0.1", port)  # system trust only
            with pytest.raises(trio.BrokenResourceError, match="certificate verify failed"):
                await client.do_handshake()
            await client.aclose()
            nursery.cancel_scope.cancel()
