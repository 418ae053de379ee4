"""Typed connection information, and session resumption through the stream."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
import trio
import trio.testing

from trio_membio import MemoryBIOStream, NeedHandshakeError
from trio_membio.testing import handshake, memory_tls_stream_pair

from .helpers import (
    HANG,
    HOSTNAME,
    client_context,
    server_context,
    tls_pair,
)

AnyStream = MemoryBIOStream[trio.abc.Stream]

BEFORE_HANDSHAKE: dict[str, Callable[[AnyStream], object]] = {
    "cipher": lambda stream: stream.cipher(),
    "version": lambda stream: stream.version(),
    "selected_alpn_protocol": lambda stream: stream.selected_alpn_protocol(),
    "getpeercert": lambda stream: stream.getpeercert(),
    "get_channel_binding": lambda stream: stream.get_channel_binding(),
    "session_reused": lambda stream: stream.session_reused,
}


@pytest.mark.parametrize("name", sorted(BEFORE_HANDSHAKE))
def test_handshake_results_need_the_handshake(name: str) -> None:
    client, _ = memory_tls_stream_pair()
    with pytest.raises(NeedHandshakeError, match="do_handshake"):
        BEFORE_HANDSHAKE[name](client)
    assert issubclass(NeedHandshakeError, trio.NeedHandshakeError)


def test_attributes_available_at_once() -> None:
    client, server = memory_tls_stream_pair()
    assert client.server_side is False
    assert server.server_side is True
    assert client.server_hostname == HOSTNAME
    assert server.server_hostname is None
    assert isinstance(client.ssl_object, ssl.SSLObject)
    assert isinstance(client.context, ssl.SSLContext)
    assert client.https_compatible is False
    assert client.session is None


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_connection_info_after_handshake(version: str) -> None:
    server_ctx = server_context(version)  # type: ignore[arg-type]  # "1.2" | "1.3"
    client_ctx = client_context(version)  # type: ignore[arg-type]
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client_ctx.set_alpn_protocols(["http/1.1"])
    client, server = memory_tls_stream_pair(client_context=client_ctx, server_context=server_ctx)
    await handshake(client, server)
    assert client.version() == server.version() == f"TLSv{version}"
    cipher = client.cipher()
    assert cipher is not None
    assert cipher == server.cipher()
    assert client.selected_alpn_protocol() == server.selected_alpn_protocol() == "http/1.1"
    certificate = client.getpeercert()
    assert certificate is not None
    assert ("DNS", HOSTNAME) in certificate["subjectAltName"]
    der = client.getpeercert(binary_form=True)
    assert isinstance(der, bytes)
    assert ssl.DER_cert_to_PEM_cert(der).strip().startswith("-----BEGIN CERTIFICATE-----")
    assert server.getpeercert() is None  # no client certificate was asked for
    if version == "1.2":
        assert client.get_channel_binding() == server.get_channel_binding() is not None
    assert client.session_reused is False


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_session_resumption(version: str) -> None:
    # One server context for both connections: it holds the ticket keys.
    server_ctx = server_context(version)  # type: ignore[arg-type]
    client_ctx = client_context(version)  # type: ignore[arg-type]
    first_client, first_server = memory_tls_stream_pair(
        client_context=client_ctx, server_context=server_ctx
    )
    await handshake(first_client, first_server)
    # On TLS 1.3 the ticket arrives with the server's first data (the engine
    # holds it back until then), so exchange some.
    await first_server.send_all(b"hello")
    assert await first_client.receive_some() == b"hello"
    session = first_client.session
    assert session is not None
    assert session.has_ticket or version == "1.2"
    await first_client.aclose()
    await first_server.aclose()

    client_transport, server_transport = trio.testing.memory_stream_pair()
    second_client = MemoryBIOStream(
        client_transport, client_ctx, server_hostname=HOSTNAME, session=session
    )
    second_server = MemoryBIOStream(server_transport, server_ctx, server_side=True)
    await handshake(second_client, second_server)
    assert second_client.session_reused
    assert second_server.session_reused

    # The trio.SSLStream way, by attribute, works too.
    client_transport, server_transport = trio.testing.memory_stream_pair()
    third_client = MemoryBIOStream(client_transport, client_ctx, server_hostname=HOSTNAME)
    third_client.session = session
    third_server = MemoryBIOStream(server_transport, server_ctx, server_side=True)
    await handshake(third_client, third_server)
    assert third_client.session_reused


def test_bytes_hostname_is_accepted() -> None:
    client_transport, _ = trio.testing.memory_stream_pair()
    stream = MemoryBIOStream(client_transport, client_context(), server_hostname=HOSTNAME.encode())
    assert stream.server_hostname == HOSTNAME


async def test_hostname_is_checked() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = MemoryBIOStream(client_transport, client_context(), server_hostname="wrong.example")
    server = MemoryBIOStream(server_transport, server_context(), server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_expect_broken, server)
        with pytest.raises(trio.BrokenResourceError, match="Hostname mismatch") as info:
            await client.send_all(b"secret")  # the implicit handshake checks it too
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


async def _expect_broken(stream: AnyStream) -> None:
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()


async def test_has_buffered_input_sees_what_the_transport_does_not() -> None:
    client, server = memory_tls_stream_pair()
    await handshake(client, server)
    await server.send_all(b"hello")
    assert await client.receive_some() == b"hello"
    assert not client.has_buffered_input()
    await server.send_all(b"two words")
    assert await client.receive_some(3) == b"two"  # the rest stays decrypted inside
    assert client.has_buffered_input()
    assert await client.receive_some() == b" words"
    assert not client.has_buffered_input()
    await server.aclose()
    assert await client.receive_some() == b""
    assert client.has_buffered_input()  # the end is known: no request can follow
    await client.aclose()


async def test_https_compatible_aclose_still_sends_held_session_tickets(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An https_compatible TLS 1.3 server that never wrote dropped its session tickets."""
    with trio.fail_after(HANG):
        client, server = tls_pair(version="1.3", https_compatible=True)
        await handshake(client, server)
        await client.send_all(b"request")
        assert await server.receive_some() == b"request"
        await server.aclose()
        while await client.receive_some():
            pass
        session = client.session
        assert session is not None
        assert session.has_ticket, "the client got no resumable session"
        await client.aclose()
