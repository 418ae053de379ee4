"""unwrap() and send_eof(): handing the transport back without losing data.

Everything that used to hang runs under trio.fail_after with the autojump
clock, so a hang fails in virtual time instead of stalling the run.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_membio

from .helpers import (
    HANG,
    TLSVersion,
    aclose_all,
    handshaken_pair,
    receive_exactly,
)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_sending_after_a_cancelled_unwrap_raises_closed(
    version: TLSVersion, autojump_clock: trio.abc.Clock
) -> None:
    """After unwrap() was cancelled waiting for the peer, send_all() raised a bare RuntimeError."""
    with trio.fail_after(HANG):
        client, server = await handshaken_pair(version=version)
        server_transport = server.transport_stream  # None once the server unwrapped
        with trio.move_on_after(1) as scope:
            await client.unwrap()  # our close_notify goes out; the peer does not answer yet
        assert scope.cancelled_caught
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await client.wait_send_all_might_not_block()
        await client.send_eof()  # our close_notify is out already: nothing to do

        async def peer_unwrap() -> None:
            assert await server.receive_some() == b""
            await server.unwrap()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer_unwrap)
            transport, trailing = await client.unwrap()  # unwrap() may be called again
        assert trailing == b""
        await aclose_all(transport, server_transport)


async def test_unwrap_after_send_eof_keeps_unread_plaintext(autojump_clock: trio.abc.Clock) -> None:
    """unwrap() after send_eof() succeeded, leaving data that send_eof() decrypted unreadable."""
    with trio.fail_after(HANG):
        client, server = await handshaken_pair(version="1.3")
        server_transport = server.transport_stream  # None once the server unwrapped
        await server.send_all(b"0123456789")
        assert await client.receive_some(2) == b"01"
        await client.send_eof()  # decrypts the rest and keeps it for receive_some()
        assert await server.receive_some() == b""
        await server.unwrap()
        with pytest.raises(RuntimeError) as raised:
            await client.unwrap()
        assert isinstance(raised.value, trio_membio.UnreadDataError)
        assert await client.receive_some() == b"23456789"
        assert await client.receive_some() == b""
        transport, trailing = await client.unwrap()
        assert trailing == b""
        await aclose_all(transport, server_transport)


async def test_unwrap_keeps_unread_data_that_is_still_encrypted(
    autojump_clock: trio.abc.Clock,
) -> None:
    """unwrap() broke the stream on data still encrypted ahead of close_notify, losing it."""
    with trio.fail_after(HANG):
        client, server = await handshaken_pair(version="1.3")
        server_transport = server.transport_stream  # None once the server unwrapped
        await client.send_eof()
        assert await server.receive_some() == b""
        await server.send_all(b"0123456789")
        await server.unwrap()
        with pytest.raises(RuntimeError) as raised:
            await client.unwrap()
        assert isinstance(raised.value, trio_membio.UnreadDataError)
        assert await receive_exactly(client, 10) == b"0123456789"
        assert await client.receive_some() == b""
        transport, trailing = await client.unwrap()
        assert trailing == b""
        await aclose_all(transport, server_transport)


async def test_unwrap_stops_reading_ahead_of_a_peer_that_keeps_sending(
    autojump_clock: trio.abc.Clock,
) -> None:
    """unwrap() set aside all a peer sent instead of its close_notify: memory without bound."""
    flood = 64 * 65536  # 4 MiB, four times the set-aside limit
    with trio.fail_after(HANG):
        client, server = await handshaken_pair(version="1.3")
        server_transport = server.transport_stream  # None once the server unwrapped

        async def peer() -> None:
            for _ in range(64):
                await server.send_all(bytes(65536))
            await server.unwrap()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            with pytest.raises(trio_membio.UnreadDataError, match="no close_notify yet"):
                await client.unwrap()
            # It stopped at the limit (plus at most one transport read).
            assert client.statistics().ciphertext_received < (1 << 20) + 2 * 262144
            received = 0
            while data := await client.receive_some():
                assert not any(data)
                received += len(data)
            assert received == flood  # nothing was lost
            transport, trailing = await client.unwrap()
        assert trailing == b""
        await aclose_all(transport, server_transport)
