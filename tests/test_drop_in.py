"""What code written for trio.SSLStream expects of MemoryBIOStream (issue 13).

Host names encoded as trio encodes them, a context settable before the
handshake, the accessors trio.SSLStream forwards, ``transport_stream`` after
``unwrap()``, and the SNI name a server sees.
"""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing

from trio_membio import MemoryBIOStream, NeedHandshakeError
from trio_membio._client_hello import MAX_CLIENT_HELLO, ClientHelloReader
from trio_membio.testing import FaultPlan, handshake, memory_tls_stream_pair

from .helpers import client_context, handshake_both, handshaken_pair, server_context, tls_pair
from .transports import HalfCloseableForwardingStream


class RecordingTransport(HalfCloseableForwardingStream):
    """Passes everything through and keeps a copy of what was sent."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        super().__init__(inner)
        self.sent = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)


async def test_server_hostname_is_sent_and_checked_as_idna_2008() -> None:
    # IDNA 2003 (Python's own codec) would send fass.de, another host.
    client_transport, server_transport = trio.testing.memory_stream_pair()
    recording = RecordingTransport(client_transport)
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    client = MemoryBIOStream(recording, unverified, server_hostname="Faß.de")
    server = MemoryBIOStream(server_transport, server_context(), server_side=True)
    assert (
        client.server_hostname
        == "xn--fa-hia.de"
        == trio.lowlevel.encode_hostname("faß.de").decode("ascii")
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    assert b"xn--fa-hia.de" in recording.sent  # in the ClientHello's SNI, on the wire
    assert b"fass.de" not in recording.sent
    assert server.requested_server_name == "xn--fa-hia.de"
    await client.aclose()
    await server.aclose()


def test_a_host_name_idna_cannot_encode_is_a_clear_error() -> None:
    client_transport, _ = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="not a valid host name"):
        MemoryBIOStream(client_transport, client_context(), server_hostname="a\u200db.example")


async def test_context_can_be_switched_before_the_handshake_only() -> None:
    client, server = tls_pair()
    refusing = ssl.create_default_context()  # trusts none of our throwaway CA
    client.context = refusing
    assert client.context is refusing
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_expect_broken, server.do_handshake)
        with pytest.raises(trio.BrokenResourceError) as caught:
            await client.do_handshake()
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    with pytest.raises(RuntimeError, match="handshake has started"):
        client.context = client_context()
    await client.aclose()
    await server.aclose()


async def _expect_broken(operation: object) -> None:
    assert callable(operation)
    with pytest.raises(trio.BrokenResourceError):
        await operation()


async def test_accessors_trio_forwards_need_the_handshake_where_trio_does() -> None:
    client, server = tls_pair()
    for accessor in (client.shared_ciphers, client.compression, client.selected_npn_protocol):
        with pytest.raises(NeedHandshakeError):
            accessor()
    assert client.pending() == 0  # allowed at any time, as on trio.SSLStream
    await handshake_both(client, server)
    assert client.shared_ciphers() is None  # a client's: none
    ciphers = server.shared_ciphers()
    assert ciphers
    assert all(len(cipher) == 3 for cipher in ciphers)
    assert client.compression() is None
    assert client.selected_npn_protocol() is None
    await server.send_all(b"abc")
    assert await client.receive_some(1) == b"a"
    assert client.pending() == 2  # the rest of the record, inside OpenSSL
    await client.aclose()
    await server.aclose()


async def test_transport_stream_is_none_after_unwrap() -> None:
    client, server = await handshaken_pair()
    transport = client.transport_stream
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.unwrap)
        returned, trailing = await client.unwrap()
    assert returned is transport
    assert trailing == b""
    assert client.transport_stream is None


async def test_server_sees_the_sni_name_even_from_one_byte_reads() -> None:
    client, server = memory_tls_stream_pair(
        server_hostname="tls.example.org", server_faults=FaultPlan(receive_chunks=(1,))
    )
    before = server.requested_server_name  # nothing has arrived yet
    await handshake(client, server)
    assert before is None
    assert server.requested_server_name == "tls.example.org"
    assert client.requested_server_name is None  # a client asks, it is not asked
    await client.aclose()
    await server.aclose()


async def test_no_sni_name_when_the_client_sends_none() -> None:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    # A client that sends no server_hostname sends no SNI extension.
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = MemoryBIOStream(client_transport, unverified)
    server = MemoryBIOStream(server_transport, server_context(), server_side=True)
    await handshake_both(client, server)
    assert server.requested_server_name is None
    await client.aclose()
    await server.aclose()


def _record(content_type: int, payload: bytes) -> bytes:
    return bytes([content_type, 3, 3]) + len(payload).to_bytes(2, "big") + payload


def _client_hello(extensions: bytes) -> bytes:
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"  # no session id
        + b"\x00\x02\x13\x01"  # one cipher suite
        + b"\x01\x00"  # null compression
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _sni(name: bytes) -> bytes:
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    listing = len(entry).to_bytes(2, "big") + entry
    return b"\x00\x00" + len(listing).to_bytes(2, "big") + listing


def test_reader_finds_a_name_in_a_hello_split_across_records() -> None:
    hello = _client_hello(b"\x00\x17\x00\x00" + _sni(b"split.example"))
    reader = ClientHelloReader()
    for start in range(0, len(hello), 10):  # a record every 10 handshake bytes
        reader.feed(_record(22, hello[start : start + 10]))
    assert reader.done
    assert reader.server_name == "split.example"


@pytest.mark.parametrize(
    "data",
    [
        _record(23, b"not a handshake"),
        _record(22, b"\x02\x00\x00\x00"),  # a ServerHello
        _record(22, _client_hello(b"\x00\x00\x00\x05\x00\x03\x00\x00")),  # truncated SNI entry
        _record(22, b"\x01\x00\x00\x02\x03\x03"),  # a body too short to hold anything
    ],
    ids=["not-handshake", "not-client-hello", "bad-extension", "short-body"],
)
def test_reader_gives_up_without_raising_on_what_it_cannot_read(data: bytes) -> None:
    reader = ClientHelloReader()
    reader.feed(data)
    assert reader.done
    assert reader.server_name is None


def test_reader_stops_reading_past_its_limit() -> None:
    reader = ClientHelloReader()
    header = b"\x01" + (1 << 23).to_bytes(3, "big")  # claims 8 MiB
    reader.feed(_record(22, header))
    waiting = not reader.done  # for the rest
    chunk = _record(22, bytes(16000))
    fed = 0
    while not reader.done and fed < 100:
        reader.feed(chunk)
        fed += 1
    assert waiting
    assert reader.done
    assert fed <= MAX_CLIENT_HELLO // 16000 + 1
    assert reader.server_name is None
