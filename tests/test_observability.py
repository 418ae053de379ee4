"""statistics() and the data-flow trace."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from trio_membio import ConnectionEnd, MemoryBIOStream, Stage, TraceEvent
from trio_membio.testing import handshake, lockstep_tls_stream_pair, memory_tls_stream_pair

from .helpers import HOSTNAME, client_context, server_context
from .peers import pha_streams


async def test_statistics_count_both_layers(autojump_clock: trio.abc.Clock) -> None:
    client, server = memory_tls_stream_pair()
    await handshake(client, server)
    before = client.statistics()
    assert before.handshake_duration is not None
    assert before.session_reused is False
    assert before.ended is None
    await client.send_all(b"x" * 100_000)
    received = 0
    while received < 100_000:
        received += len(await server.receive_some())
    after = client.statistics()
    assert after.plaintext_sent == 100_000
    assert server.statistics().plaintext_received == 100_000
    # Ciphertext carries record overhead on top of the plaintext.
    sent = after.ciphertext_sent - before.ciphertext_sent
    assert 100_000 < sent < 101_000
    assert server.statistics().ciphertext_received == client.statistics().ciphertext_sent
    await client.aclose()
    assert await server.receive_some() == b""
    assert client.statistics().ended is ConnectionEnd.CLOSED_LOCALLY
    assert server.statistics().ended is ConnectionEnd.CLOSE_NOTIFY


async def test_statistics_before_the_handshake() -> None:
    client = MemoryBIOStream(
        trio.testing.memory_stream_pair()[0], client_context(), server_hostname=HOSTNAME
    )
    stats = client.statistics()
    assert (stats.handshake_duration, stats.session_reused, stats.ended) == (None, None, None)
    assert stats.plaintext_sent == stats.ciphertext_sent == 0


async def test_handshake_duration_uses_the_trio_clock(autojump_clock: trio.abc.Clock) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = MemoryBIOStream(client_transport, client_context(), server_hostname=HOSTNAME)
    server = MemoryBIOStream(server_transport, server_context(), server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        await trio.sleep(7)  # the server answers 7 (virtual) seconds late
        nursery.start_soon(server.do_handshake)
    duration = client.statistics().handshake_duration
    assert duration is not None
    assert duration == pytest.approx(7)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("truncate", ConnectionEnd.TRUNCATED),
        ("corrupt", ConnectionEnd.ALERT),
        ("cancel", ConnectionEnd.CANCELLED),
        ("unwrap", ConnectionEnd.UNWRAPPED),
    ],
)
async def test_statistics_say_how_it_ended(
    how: str, expected: ConnectionEnd, autojump_clock: trio.abc.Clock
) -> None:
    client, server = lockstep_tls_stream_pair()
    await handshake(client, server)
    async with trio.open_nursery() as nursery:
        if how == "truncate":
            await server.transport_stream.aclose()
            with pytest.raises(trio.BrokenResourceError):
                await client.receive_some()
        elif how == "corrupt":
            nursery.start_soon(
                server.transport_stream.send_all, b"\x17\x03\x03\x00\x20" + bytes(32)
            )
            with pytest.raises(trio.BrokenResourceError):
                await client.receive_some()
        elif how == "cancel":
            with trio.move_on_after(1):
                await client.send_all(b"x" * 100_000)  # nobody reads
        else:

            async def peer_unwrap() -> None:
                assert await server.receive_some() == b""
                await server.unwrap()

            nursery.start_soon(peer_unwrap)
            await client.unwrap()
        nursery.cancel_scope.cancel()
    await client.aclose()  # does not overwrite the first cause
    assert client.statistics().ended is expected
    await server.aclose()


async def test_trace_shows_every_hop() -> None:
    events: list[TraceEvent] = []
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = MemoryBIOStream(
        client_transport, client_context(), server_hostname=HOSTNAME, trace=events.append
    )
    server = MemoryBIOStream(server_transport, server_context(), server_side=True)
    await handshake(client, server)
    hops = {(event.source, event.target) for event in events}
    assert hops >= {
        (Stage.SSL_OBJECT, Stage.OUTGOING_BIO),  # the ClientHello
        (Stage.OUTGOING_BIO, Stage.TRANSPORT),
        (Stage.TRANSPORT, Stage.INCOMING_BIO),  # the ServerHello flight
        (Stage.INCOMING_BIO, Stage.SSL_OBJECT),
    }
    assert {event.operation for event in events} == {"handshake", "send", "receive"}
    events.clear()
    await client.send_all(b"hello")
    assert events[0] == TraceEvent(Stage.APPLICATION, Stage.SSL_OBJECT, 5, "write")
    assert events[1].source is Stage.SSL_OBJECT
    assert events[1].target is Stage.OUTGOING_BIO
    assert events[1].size > 5  # a record: header, tag and content type around the 5 bytes
    assert events[2] == TraceEvent(Stage.OUTGOING_BIO, Stage.TRANSPORT, events[1].size, "send")
    await server.send_all(b"world!")
    events.clear()
    assert await client.receive_some() == b"world!"
    kinds = [(event.source, event.target) for event in events]
    assert (Stage.SSL_OBJECT, Stage.APPLICATION) in kinds
    assert events[-1] == TraceEvent(Stage.SSL_OBJECT, Stage.APPLICATION, 6, "read")
    assert "transport -> incoming BIO" in str(events[0])
    await server.aclose()
    events.clear()
    assert await client.receive_some() == b""
    await client.aclose()


async def test_trace_logger_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="trio_membio.trace"):
        client, server = memory_tls_stream_pair()
        await handshake(client, server)
        await client.send_all(b"ping")
        assert await server.receive_some() == b"ping"
    messages = [record.getMessage() for record in caplog.records]
    assert any("application -> SSLObject: 4 bytes (write)" in message for message in messages)
    assert any("SSLObject -> application: 4 bytes (read)" in message for message in messages)


async def test_no_tracing_engine_unless_asked() -> None:
    client, server = memory_tls_stream_pair()
    await handshake(client, server)
    assert type(client._engine).__name__ == "TLSEngine"


async def test_trace_takes_back_what_a_full_socket_did_not_take() -> None:
    events: list[TraceEvent] = []
    left, right = trio.socket.socketpair()
    client = MemoryBIOStream(
        trio.SocketStream(left), client_context(), server_hostname=HOSTNAME, trace=events.append
    )
    server = MemoryBIOStream(trio.SocketStream(right), server_context(), server_side=True)
    await handshake(client, server)
    total = 64 * 65536  # far beyond the socket buffers

    async def send_everything() -> None:
        for _ in range(64):  # one-record sends
            await client.send_all(bytes(65536))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_everything)
            await trio.testing.wait_all_tasks_blocked()  # the socket is full
            received = 0
            while received < total:
                received += len(await server.receive_some())
    unsent = [event for event in events if event.operation == "unsent"]
    assert unsent
    assert "transport -> outgoing BIO" in str(unsent[0])
    sent = sum(event.size for event in events if event.operation == "send")
    taken_back = sum(event.size for event in unsent)
    assert sent - taken_back == client.statistics().ciphertext_sent
    await client.aclose()
    await server.aclose()


async def test_trace_counts_plaintext_of_a_read_that_queued_output_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A read that queued output counted its plaintext twice in the trace."""
    events: list[TraceEvent] = []
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client, server = pha_streams(client_transport, server_transport, client_trace=events.append)
    await handshake(client, server)
    server.ssl_object.verify_client_post_handshake()
    await server.send_all(b"A" * 1000)  # behind the CertificateRequest
    # The receive hands the plaintext out at once; the client's certificate
    # goes out from the stream's own task (transport rule 5).
    assert await client.receive_some() == b"A" * 1000
    assert not [event for event in events if event.operation == "unread"]
    delivered = sum(event.size for event in events if event.target is Stage.APPLICATION)
    assert delivered == client.statistics().plaintext_received == 1000
    await client.aclose()
    await server.aclose()
