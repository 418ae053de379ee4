"""Interop with trio.SSLStream: it on one end, MemoryBIOStream on the other.

Every combination of which end is ours, TLS 1.2 or 1.3, and an in-memory or
a loopback TCP transport runs the same conversation: handshake, 1 MiB each
way at once, then a close by either end, which the other must see as a clean
``b""`` (close_notify), not as truncation.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from random import Random
from typing import Literal

import pytest
import trio
import trio.testing

from trio_membio import MemoryBIOStream

from .helpers import HOSTNAME, TLSVersion, client_context, receive_exactly, server_context

TIMEOUT = 10.0
PAYLOAD = 1024 * 1024
TLSStream = MemoryBIOStream[trio.abc.Stream] | trio.SSLStream[trio.abc.Stream]


@contextlib.asynccontextmanager
async def transport_pair(kind: str) -> AsyncIterator[tuple[trio.abc.Stream, trio.abc.Stream]]:
    """(client end, server end) of a fresh transport."""
    if kind == "memory":
        yield trio.testing.memory_stream_pair()
        return
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    async with client, server:
        yield client, server


def wrap(
    ours: Literal["client", "server"], version: TLSVersion, transports: tuple[trio.abc.Stream, ...]
) -> tuple[TLSStream, TLSStream]:
    client_ctx, server_ctx = client_context(version), server_context(version)
    for context in (client_ctx, server_ctx):
        context.set_alpn_protocols(["interop"])
    client: TLSStream
    server: TLSStream
    if ours == "client":
        client = MemoryBIOStream(transports[0], client_ctx, server_hostname=HOSTNAME)
        server = trio.SSLStream(transports[1], server_ctx, server_side=True)
    else:
        client = trio.SSLStream(transports[0], client_ctx, server_hostname=HOSTNAME)
        server = MemoryBIOStream(transports[1], server_ctx, server_side=True)
    return client, server


@pytest.mark.parametrize("closer", ["ours", "trio"])
@pytest.mark.parametrize("transport", ["memory", "tcp"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("ours", ["client", "server"])
async def test_conversation(
    ours: Literal["client", "server"], version: TLSVersion, transport: str, closer: str
) -> None:
    random = Random(f"{ours} {version} {transport} {closer}")  # seeded: reproducible
    to_server, to_client = random.randbytes(PAYLOAD), random.randbytes(PAYLOAD)
    received: dict[str, bytes] = {}
    with trio.fail_after(TIMEOUT):
        async with transport_pair(transport) as transports:
            client, server = wrap(ours, version, transports)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.do_handshake)
                nursery.start_soon(server.do_handshake)
            assert client.version() == server.version() == f"TLSv{version}"
            assert client.cipher() == server.cipher()
            assert client.selected_alpn_protocol() == server.selected_alpn_protocol() == "interop"

            async def receive(name: str, stream: TLSStream) -> None:
                received[name] = await receive_exactly(stream, PAYLOAD)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, to_server)
                nursery.start_soon(server.send_all, to_client)
                nursery.start_soon(receive, "server", server)
                nursery.start_soon(receive, "client", client)
            assert received == {"server": to_server, "client": to_client}

            ours_stream, theirs = (client, server) if ours == "client" else (server, client)
            closing, other = (ours_stream, theirs) if closer == "ours" else (theirs, ours_stream)
            await closing.aclose()
            assert await other.receive_some() == b""  # close_notify, not truncation
            await other.aclose()


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_half_close_from_memory_bio_to_trio(transport: str) -> None:
    """Our send_eof() on TLS 1.3: trio reads b"", and can still answer."""
    with trio.fail_after(TIMEOUT):
        async with transport_pair(transport) as transports:
            client, server = wrap("client", "1.3", transports)
            assert isinstance(client, MemoryBIOStream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.do_handshake)
                nursery.start_soon(server.do_handshake)
            await client.send_all(b"question")
            await client.send_eof()
            assert await receive_exactly(server, 8) == b"question"
            assert await server.receive_some() == b""
            await server.send_all(b"answer after your EOF")
            assert await receive_exactly(client, 21) == b"answer after your EOF"
            await server.aclose()
            assert await client.receive_some() == b""
            await client.aclose()


async def test_trio_rejecting_our_certificate_ends_our_handshake() -> None:
    """trio's client drops its fatal alert (see the README), so our server only
    learns of the failure when trio closes the transport."""
    untrusting = ssl.create_default_context()  # the system CAs only
    client_end, server_end = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_end, untrusting, server_hostname=HOSTNAME)
    server = MemoryBIOStream(server_end, server_context(), server_side=True)

    async def client_side() -> None:
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.do_handshake()
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
        await client.aclose()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_side)
            with pytest.raises(
                trio.BrokenResourceError, match="peer closed the transport during the TLS handshake"
            ):
                await server.do_handshake()
    await server.aclose()
