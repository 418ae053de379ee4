"""trio's own stream conformance suite, over memory and lockstep transports."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_membio.testing import handshake, lockstep_tls_stream_pair, memory_tls_stream_pair

from .helpers import StreamPair, TLSVersion, tls_pair

pytestmark = pytest.mark.parametrize("https_compatible", [False, True], ids=["strict", "https"])


def _makers(version: TLSVersion, https_compatible: bool) -> tuple[object, object]:
    async def stream_maker() -> StreamPair:
        return memory_tls_stream_pair(tls_version=version, https_compatible=https_compatible)

    async def clogged_stream_maker() -> StreamPair:
        client, server = lockstep_tls_stream_pair(
            tls_version=version, https_compatible=https_compatible
        )
        # Handshake first, so that "clogged" means the data path is clogged.
        await handshake(client, server)
        return client, server

    return stream_maker, clogged_stream_maker


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_two_way_stream(version: TLSVersion, https_compatible: bool) -> None:
    stream_maker, clogged_stream_maker = _makers(version, https_compatible)
    await trio.testing.check_two_way_stream(stream_maker, clogged_stream_maker)  # type: ignore[arg-type]


async def test_half_closeable_stream_tls13(https_compatible: bool) -> None:
    stream_maker, clogged_stream_maker = _makers("1.3", https_compatible)
    await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)  # type: ignore[arg-type]


def _socket_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    left, right = trio.socket.socketpair()
    return trio.SocketStream(left), trio.SocketStream(right)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_half_closeable_over_sockets(version: TLSVersion, https_compatible: bool) -> None:
    """Over a real socket pair: the direct-socket fast path must conform too."""

    async def stream_maker() -> StreamPair:
        return tls_pair(
            _socket_stream_pair,
            version=version,
            https_compatible=https_compatible,
        )

    if version == "1.3":
        await trio.testing.check_half_closeable_stream(stream_maker, None)
    else:
        await trio.testing.check_two_way_stream(stream_maker, None)
