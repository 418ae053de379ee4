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


async def _expect_the_peer_closed(listener: trio.SocketListener) -> None:
    """Accept one connection and check that its other end was closed at once."""
    accepted = await listener.accept()
    assert await accepted.receive_some() == b""
    await accepted.aclose()


async def test_open_closes_the_connection_when_tls_cannot_be_set_up() -> None:
    """A context or session that could not make the TLS stream left the TCP socket open."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    with trio.fail_after(5):
        with pytest.raises(ssl.SSLError, match="PROTOCOL_TLS_SERVER"):
            # A server-side context cannot make client connections.
            await open_tls_over_tcp_stream("127.0.0.1", port, ssl_context=server_context())
        await _expect_the_peer_closed(listener)
    await listener.aclose()


async def test_accept_closes_the_connection_when_tls_cannot_be_set_up() -> None:
    """A listener whose context could not serve left each accepted socket open."""
    listeners = await open_tls_over_tcp_listeners(0, client_context(), host="127.0.0.1")
    tcp_listener = listeners[0].transport_listener
    assert isinstance(tcp_listener, trio.SocketListener)
    port = tcp_listener.socket.getsockname()[1]
    with trio.fail_after(5):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        with pytest.raises(ssl.SSLError, match="PROTOCOL_TLS_CLIENT"):
            await listeners[0].accept()
        assert await client.receive_some() == b""  # closed at once, not at garbage collection
    await client.aclose()
    await listeners[0].aclose()


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
async def test_serve_rejects_a_bad_handshake_timeout_before_listening(timeout: float) -> None:
    """A bad handshake_timeout was accepted, and took the server down at the first client."""

    async def handler(stream: MemoryBIOStream[trio.SocketStream]) -> None:
        raise AssertionError("no connection should be served")

    with trio.fail_after(5), pytest.raises(ValueError, match="handshake_timeout"):
        await serve_tls_over_tcp(
            handler, 0, server_context(), host="127.0.0.1", handshake_timeout=timeout
        )


async def test_open_listeners_carry_the_serving_policy() -> None:
    def hook(stream: MemoryBIOStream[trio.SocketStream], error: Exception) -> None:
        raise AssertionError("not called: nothing is served")

    listeners = await open_tls_over_tcp_listeners(
        0, server_context(), host="127.0.0.1", handshake_timeout=None, on_handshake_error=hook
    )
    for listener in listeners:
        assert listener.handshake_timeout is None
        assert listener.on_handshake_error is hook
        await listener.aclose()


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
async def test_open_listeners_rejects_a_bad_handshake_timeout(timeout: float) -> None:
    with pytest.raises(ValueError, match="handshake_timeout"):
        await open_tls_over_tcp_listeners(
            0, server_context(), host="127.0.0.1", handshake_timeout=timeout
        )
