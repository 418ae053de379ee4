"""The direct-socket fast path used when the transport is a trio.SocketStream."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import assert_checkpoints

from trio_membio import ConnectionEnd, MemoryBIOStream
from trio_membio._socket_fast_path import SocketFastPath, fast_path_for
from trio_membio._state import Stop, StopKind
from trio_membio._transport import ALERT_TIMEOUT, TRANSPORT_RECEIVE_SIZE

from .helpers import (
    FORGED_RECORD,
    HOSTNAME,
    client_context,
    handshake_both,
    server_context,
    untrusting_client_context,
)
from .transports import ResettingStream

SocketTLS = MemoryBIOStream[trio.SocketStream]
GenericTLS = MemoryBIOStream[trio.abc.Stream]
StreamT = TypeVar("StreamT", bound=MemoryBIOStream[Any])


def socket_pair() -> tuple[SocketTLS, SocketTLS]:
    left, right = trio.socket.socketpair()
    client = MemoryBIOStream(trio.SocketStream(left), client_context(), server_hostname=HOSTNAME)
    server = MemoryBIOStream(trio.SocketStream(right), server_context(), server_side=True)
    return client, server


@contextlib.asynccontextmanager
async def handshaken(client: StreamT, server: StreamT) -> AsyncIterator[tuple[StreamT, StreamT]]:
    """The pair after a handshake; closed on the way out."""
    await handshake_both(client, server)
    try:
        yield client, server
    finally:
        await client.aclose()
        await server.aclose()


@pytest.fixture
async def socket_streams() -> AsyncIterator[tuple[SocketTLS, SocketTLS]]:
    """:func:`socket_pair`, handshaken, closed after the test."""
    async with handshaken(*socket_pair()) as streams:
        yield streams


async def test_fast_path_only_for_socket_streams() -> None:
    left, right = trio.socket.socketpair()
    assert isinstance(fast_path_for(trio.SocketStream(left)), SocketFastPath)
    assert fast_path_for(trio.testing.memory_stream_pair()[0]) is None
    assert (
        fast_path_for(trio.StapledStream(trio.SocketStream(right), trio.SocketStream(right)))
        is None
    )
    left.close()
    right.close()


async def test_checkpoints_when_the_socket_is_ready(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, server = socket_streams
    with assert_checkpoints():
        await client.send_all(b"fits in the socket buffer")
    await trio.testing.wait_all_tasks_blocked()
    with assert_checkpoints():
        assert await server.receive_some() == b"fits in the socket buffer"


async def test_large_send_waits_for_the_reader_and_arrives_whole(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, server = socket_streams
    payload = bytes(range(256)) * 40_000  # 10 MB: far beyond the socket buffers
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(payload):
            received.extend(await server.receive_some())

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await client.send_all(payload)
    assert received == payload


async def test_cancelled_while_waiting_to_write_breaks_sending_only(
    socket_streams: tuple[SocketTLS, SocketTLS],
    autojump_clock: trio.abc.Clock,
) -> None:
    client, _ = socket_streams
    with trio.move_on_after(1) as scope:
        await client.send_all(bytes(20_000_000))  # nobody reads: the socket fills
    assert scope.cancelled_caught
    with pytest.raises(trio.BrokenResourceError, match="earlier send"):
        await client.send_all(b"x")


async def close_under_a_waiting_receiver(
    client: MemoryBIOStream[Any], server: MemoryBIOStream[Any], *, holding_send_lane: bool
) -> None:
    """aclose() the client while a task waits in its receive_some(), which must
    then raise ClosedResourceError; ``holding_send_lane``: whether that receive
    is also sending (lanes rule 6)."""
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await client.receive_some()

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert client._io.receiving  # waiting in a transport receive
        assert client._io.sending is holding_send_lane
        await client.aclose()
    await server.aclose()


async def test_a_send_cancelled_half_way_counts_what_reached_the_socket(
    socket_streams: tuple[SocketTLS, SocketTLS],
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = socket_streams
    before = client.statistics().ciphertext_sent
    with trio.move_on_after(1):
        await client.send_all(bytes(20_000_000))  # nobody reads: the socket fills
    descriptor = server.transport_stream.socket.fileno()
    on_the_wire = 0
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(descriptor, 1 << 20):
            on_the_wire += len(chunk)
    assert on_the_wire > 0
    assert client.statistics().ciphertext_sent - before == on_the_wire


async def test_aclose_wakes_a_blocked_receiver(socket_streams: tuple[SocketTLS, SocketTLS]) -> None:
    client, server = socket_streams
    await close_under_a_waiting_receiver(client, server, holding_send_lane=False)


async def test_aclose_sends_the_rest_of_close_notify_the_socket_did_not_take(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, server = socket_streams

    class FiveBytesAtOnce(SocketFastPath):
        __slots__ = ()

        def try_send(self, data: bytes | memoryview) -> int:
            return super().try_send(memoryview(data)[:5])

    # The socket takes only 5 bytes at once: the rest goes out by waiting.
    client._io.fast_path = FiveBytesAtOnce(client.transport_stream)
    await client.aclose()
    assert await server.receive_some() == b""  # the whole close_notify arrived
    sent = client.statistics().ciphertext_sent
    assert sent == server.statistics().ciphertext_received
    await server.aclose()


async def test_never_touches_a_reused_descriptor(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, _ = socket_streams
    old_descriptor = client.transport_stream.socket.fileno()
    await client.transport_stream.aclose()  # closed behind the TLS stream's back
    # The kernel hands out the lowest free number, so one end of a new pair
    # likely gets the old number; if not, it is made to.
    intruder, partner = socket.socketpair()
    duplicated = old_descriptor not in (intruder.fileno(), partner.fileno())
    if duplicated:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(old_descriptor)  # free: dup2 clobbers nobody's descriptor
        os.dup2(intruder.fileno(), old_descriptor)
    elif partner.fileno() == old_descriptor:
        intruder, partner = partner, intruder
    try:
        partner.sendall(b"not yours")
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            await client.receive_some()
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            await client.send_all(b"x")
        intruder.setblocking(False)
        partner.setblocking(False)
        assert intruder.recv(100) == b"not yours"  # still unread through the old number
        with pytest.raises(BlockingIOError):
            partner.recv(100)  # and nothing was written to it
    finally:
        if duplicated:
            os.close(old_descriptor)
        intruder.close()
        partner.close()


async def test_connection_reset_is_broken_resource(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, server = socket_streams
    raw = server.transport_stream.socket
    # SO_LINGER with a zero timeout makes close() send a TCP RST on TCP; on a
    # UNIX socket pair, closing gives the reader EOF or ECONNRESET.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.send_all(b"unread by the server")
    raw.close()
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()


async def test_small_sends_into_a_full_socket_queue_in_order(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    # One-record sends (the express path) that the socket takes only in part:
    # the rest goes back to the front of the queue and waits for room, and
    # the peer still receives every byte, in order.
    client, server = socket_streams
    chunks = [bytes([i]) * 65536 for i in range(64)]  # 4 MiB, far beyond the buffers

    async def send_everything() -> None:
        for chunk in chunks:
            await client.send_all(chunk)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_everything)
            await trio.testing.wait_all_tasks_blocked()  # the sender waits for room
            assert client.statistics().plaintext_sent < len(chunks) * 65536
            received = bytearray()
            while len(received) < len(chunks) * 65536:
                received += await server.receive_some()
    assert received == b"".join(chunks)


async def test_cancelled_small_send_on_a_full_socket_breaks_sending_only(
    socket_streams: tuple[SocketTLS, SocketTLS],
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = socket_streams
    with trio.move_on_after(1) as scope:
        while True:  # nobody reads: some send ends up half-written, waiting
            await client.send_all(bytes(65536))
    assert scope.cancelled_caught
    with pytest.raises(trio.BrokenResourceError, match="earlier send"):
        await client.send_all(b"x")
    await server.send_all(b"receiving still works")
    assert await client.receive_some() == b"receiving still works"


async def test_send_after_the_transport_sent_eof_names_the_cause(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, server = socket_streams
    await client.transport_stream.send_eof()  # behind the TLS layer's back
    with pytest.raises(trio.BrokenResourceError, match="after sending EOF") as info:
        await client.send_all(b"x")
    assert isinstance(info.value.__cause__, trio.ClosedResourceError)
    await server.send_all(b"receiving still works")
    assert await client.receive_some() == b"receiving still works"


_PATTERN = bytes(range(256)) * 300


def _message(index: int, size: int) -> bytes:
    offset = (index * 37) % 256
    return (_PATTERN * (size // len(_PATTERN) + 1))[offset : offset + size]


@given(
    sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=12),
    read_sizes=st.lists(st.integers(1, 100_000), min_size=1, max_size=6),
    buffer_size=st.sampled_from([2048, 8192, 65536]),
)
def test_any_sends_through_a_small_socket_buffer_arrive_whole(
    sizes: list[int], read_sizes: list[int], buffer_size: int
) -> None:
    """One-record and multi-record sends, socket buffers that take any part of them."""

    async def body() -> None:
        left, right = trio.socket.socketpair()
        for sock in (left, right):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
        client = MemoryBIOStream(
            trio.SocketStream(left), client_context(), server_hostname=HOSTNAME
        )
        server = MemoryBIOStream(trio.SocketStream(right), server_context(), server_side=True)
        messages = [_message(index, size) for index, size in enumerate(sizes)]
        expected = b"".join(messages)
        received = bytearray()

        async def send_all() -> None:
            for message in messages:
                await client.send_all(message)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                reads = 0
                while len(received) < len(expected):
                    received.extend(await server.receive_some(read_sizes[reads % len(read_sizes)]))
                    reads += 1
        assert received == expected
        assert client.statistics().ciphertext_sent == server.statistics().ciphertext_received
        await client.aclose()
        await server.aclose()

    trio.run(body)


# A read can queue TLS output (a TLS 1.2 renegotiation reply). These tests
# queue records in the engine directly, the way such a read would, to put a
# receiver in front of output it must send (lanes rule 6).


async def raises_bare_cancelled(call: Awaitable[object], *, after: float) -> bool:
    """Whether ``call``, cancelled ``after`` seconds in, raised a lone Cancelled
    (not an ExceptionGroup holding one, which a scope would catch as well)."""
    raised: BaseException | None = None
    with trio.move_on_after(after):
        try:
            await call
        except BaseException as exc:
            raised = exc
            raise
    return type(raised) is trio.Cancelled


def queue_records(stream: MemoryBIOStream[Any], plaintext: bytes) -> None:
    """Encrypt ``plaintext`` into the stream's send queue without sending it."""
    for start in range(0, len(plaintext), 16384):
        stream._engine.write(plaintext[start : start + 16384])


async def test_receiver_sends_queued_output_once_the_socket_has_room(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, server = socket_streams
    client._engine.write(b"queued by a read")  # in the outgoing BIO, not sent
    async with trio.open_nursery() as nursery:
        received: list[bytes] = []

        async def receive() -> None:
            received.append(bytes(await client.receive_some()))

        nursery.start_soon(receive)
        with trio.fail_after(5):
            # The waiting receiver found the socket writable and sent it.
            assert await server.receive_some() == b"queued by a read"
            await server.send_all(b"answer")
    assert received == [b"answer"]


async def test_full_socket_does_not_stop_the_receiver_from_reading(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, server = socket_streams
    queued = bytes(range(256)) * 16384  # 4 MiB: far more than the socket holds
    queue_records(client, queued)
    async with trio.open_nursery() as nursery:
        received: list[bytes] = []

        async def receive() -> None:
            received.append(bytes(await client.receive_some()))

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        # The receiver filled the socket and now waits to read or to write.
        assert client._engine.output_bio.pending > 0
        await server.send_all(b"answer")  # the server does not read yet
    assert received == [b"answer"]
    # The rest of the queue goes out, in order, ahead of the next send.
    got = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b" and more")
            while len(got) < len(queued) + len(b" and more"):
                got += await server.receive_some()
    assert got == queued + b" and more"


async def test_closing_the_stream_wakes_a_receiver_waiting_to_read_or_write(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, server = socket_streams
    queue_records(client, bytes(4 * 1024 * 1024))
    await close_under_a_waiting_receiver(client, server, holding_send_lane=True)


async def test_cancelled_while_waiting_to_read_or_write_loses_nothing(
    socket_streams: tuple[SocketTLS, SocketTLS],
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = socket_streams
    queued = bytes(range(256)) * 16384  # 4 MiB
    queue_records(client, queued)
    assert await raises_bare_cancelled(client.receive_some(), after=1)  # fills, then waits
    # Nothing was lost: the queue and the stream are intact.
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"!")
        while len(got) < len(queued) + 1:
            got += await server.receive_some()
    assert got == queued + b"!"
    await server.send_all(b"still receiving")
    assert await client.receive_some() == b"still receiving"


async def test_queued_reply_that_cannot_be_sent_breaks_the_stream(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    # A read's output (a renegotiation or post-handshake reply) that can never
    # reach the peer: the peer would wait for it forever, and we for the peer,
    # so both directions stop, naming the failed send.
    client, server = socket_streams
    client._engine.write(b"queued by a read")
    server.transport_stream.socket.close()  # the peer is gone: writes fail
    with pytest.raises(trio.BrokenResourceError, match="failed while sending") as caught:
        await client.receive_some()
    assert isinstance(caught.value.__cause__, trio.BrokenResourceError)
    with pytest.raises(trio.BrokenResourceError, match="failed while sending"):
        await client.send_all(b"x")


async def test_final_flight_sent_by_a_receive_clears_the_handshake_mark(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A driver cancelled while another task held the send lane leaves the
    # final handshake flight queued; a receive then sends it. After that a
    # cancelled send must break only sending, as any other send.
    client, server = socket_pair()
    driver = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drive_in, client, driver)
        await trio.testing.wait_all_tasks_blocked()  # ClientHello out
        client._io.sending = True  # a lane holder (wait_send_all_might_not_block, say)
        nursery.start_soon(server.do_handshake)
        await trio.testing.wait_all_tasks_blocked()  # finished; waits for the lane
        assert client._engine.handshake_complete
        driver.cancel()
        await trio.testing.wait_all_tasks_blocked()
        client._io.sending = False
        client._io.notify_change()
        queued_before = client._io.handshake_output_queued
        nursery.start_soon(server.send_all, b"hello")
        assert await client.receive_some() == b"hello"  # sent the flight on the way
    assert queued_before
    assert client._io.handshake_output_queued is False
    with trio.move_on_after(1):
        await client.send_all(bytes(20_000_000))  # nobody reads: cut short
    with pytest.raises(trio.BrokenResourceError, match="earlier send"):
        await client.send_all(b"x")
    await server.send_all(b"still receiving")
    assert await client.receive_some() == b"still receiving"
    await client.aclose()
    await server.aclose()


async def _drive_in(stream: SocketTLS, scope: trio.CancelScope) -> None:
    with scope:
        await stream.do_handshake()


async def test_plaintext_in_hand_comes_before_a_failed_send_of_queued_output(
    socket_streams: tuple[SocketTLS, SocketTLS],
) -> None:
    client, server = socket_streams
    client._engine.write(b"queued TLS output")  # as a read would queue it
    client._engine.put_back(b"authentic plaintext")  # decrypted earlier
    # The whole stream broke earlier; its authentic plaintext is still owed.
    client._io.stop(Stop(StopKind.BROKEN, "the transport failed while receiving: reset"))
    server.transport_stream.socket.close()  # and sending fails now
    assert await client.receive_some() == b"authentic plaintext"
    with pytest.raises(trio.BrokenResourceError, match="while receiving: reset"):
        await client.receive_some()


# Lanes rule 6 over a transport driven through its methods (no try-send): a
# receive that must send queued output goes on reading while it sends.


def method_pair() -> tuple[GenericTLS, GenericTLS]:
    left, right = trio.socket.socketpair()
    client_socket, server_socket = trio.SocketStream(left), trio.SocketStream(right)
    client = MemoryBIOStream(
        trio.StapledStream(client_socket, client_socket),  # not a SocketStream: no fast path
        client_context(),
        server_hostname=HOSTNAME,
    )
    server = MemoryBIOStream(server_socket, server_context(), server_side=True)
    assert client._io.fast_path is None
    return client, server


@pytest.fixture
async def method_streams() -> AsyncIterator[tuple[GenericTLS, GenericTLS]]:
    """:func:`method_pair`, handshaken, closed after the test."""
    async with handshaken(*method_pair()) as streams:
        yield streams


async def exchange_while_owed_output_waits(
    client: GenericTLS,
    server: GenericTLS,
    answer: bytes,
    *,
    seconds: float,
    after_each_read: Callable[[], None] = lambda: None,
) -> None:
    """Queue 4 MiB of output in ``client``; a peer sends ``answer`` before it
    reads any of that. Both sides must receive everything, and the client's
    stream must work afterwards."""
    queued = bytes(range(256)) * 16384  # 4 MiB
    queue_records(client, queued)
    got = bytearray()

    async def peer() -> None:
        await server.send_all(answer)
        while len(got) < len(queued):
            got.extend(await server.receive_some())

    received = bytearray()
    with trio.fail_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            while len(received) < len(answer):
                received.extend(await client.receive_some())
                after_each_read()
    assert received == answer
    assert got == queued
    await client.send_all(b"after")
    assert await server.receive_some() == b"after"


async def test_generic_receiver_reads_while_its_queued_output_waits_for_the_peer(
    method_streams: tuple[GenericTLS, GenericTLS],
) -> None:
    # The peer writes 512 KiB, more than the sockets hold, and reads only
    # after that. A receive that only sent its 4 MiB of queued output would
    # wait for the peer forever, and the peer for it.
    client, server = method_streams
    answer = bytes(range(255, -1, -1)) * 2048  # 512 KiB
    await exchange_while_owed_output_waits(client, server, answer, seconds=20)


async def test_generic_receiver_reads_on_demand_while_its_owed_output_waits(
    method_streams: tuple[GenericTLS, GenericTLS],
    autojump_clock: trio.abc.Clock,
) -> None:
    # Against a peer that writes 4 MiB before it reads anything, the owed
    # output waits in the stream's own task while receive_some() hands out
    # the peer's data as it comes, reading only on demand (never more than
    # one transport receive ahead), and nothing is cut short.
    client, server = method_streams

    def reads_only_on_demand() -> None:
        assert client._engine.buffered_ciphertext <= TRANSPORT_RECEIVE_SIZE

    await exchange_while_owed_output_waits(
        client, server, bytes(4 * 1024 * 1024), seconds=60, after_each_read=reads_only_on_demand
    )


async def test_generic_receiver_reading_while_sending_wakes_on_close(
    method_streams: tuple[GenericTLS, GenericTLS],
) -> None:
    client, server = method_streams
    queue_records(client, bytes(4 * 1024 * 1024))  # the peer never reads it
    # Sending, and reading meanwhile.
    await close_under_a_waiting_receiver(client, server, holding_send_lane=True)


async def reset_while_sending_queued_output(
    in_hand: bytes = b"", *, handshake_flight_queued: bool = False, sends_too: bool = False
) -> tuple[GenericTLS, GenericTLS]:
    """A generic-path client whose transport resets while a receive sends
    4 MiB of queued output the peer never reads (``sends_too``: the send
    side resets at the same moment)."""
    left, right = trio.socket.socketpair()
    transport = ResettingStream(trio.SocketStream(left))  # not a SocketStream: no fast path
    client = MemoryBIOStream(
        transport,
        client_context(),
        server_hostname=HOSTNAME,
    )
    server = MemoryBIOStream(trio.SocketStream(right), server_context(), server_side=True)
    await handshake_both(client, server)
    queue_records(client, bytes(4 * 1024 * 1024))
    if in_hand:
        client._engine.put_back(in_hand)  # what the read that queued the output returned
    client._io.handshake_output_queued = handshake_flight_queued
    transport.reset_receives = True
    transport.reset_sends = sends_too
    return client, server


async def test_generic_receive_failure_while_sending_keeps_its_cause() -> None:
    client, server = await reset_while_sending_queued_output()
    with pytest.raises(trio.BrokenResourceError, match="while receiving") as caught:
        await client.receive_some()
    # Chained from the transport's error, as without the send; no group.
    assert isinstance(caught.value.__cause__, trio.BrokenResourceError)
    assert isinstance(caught.value.__cause__.__cause__, ConnectionResetError)
    await client.aclose()
    await server.aclose()


async def test_generic_plaintext_in_hand_comes_before_a_receive_failure() -> None:
    client, server = await reset_while_sending_queued_output(b"in hand")
    assert await client.receive_some() == b"in hand"
    with pytest.raises(trio.BrokenResourceError, match="while receiving"):
        await client.receive_some()
    await client.aclose()
    await server.aclose()


async def test_generic_receive_failure_is_not_overwritten_by_its_own_cancel() -> None:
    # The reader's failure cancels the send; with a final handshake flight
    # queued, that cancel must not replace the failure with "handshake cut short".
    client, server = await reset_while_sending_queued_output(handshake_flight_queued=True)
    for _ in range(2):
        with pytest.raises(trio.BrokenResourceError, match="while receiving"):
            await client.receive_some()
    await client.aclose()
    await server.aclose()


async def test_generic_send_and_receive_failing_together_report_the_stream_failure() -> None:
    client, server = await reset_while_sending_queued_output(sends_too=True)
    for _ in range(2):  # the same failure now and on every later call
        with pytest.raises(trio.BrokenResourceError, match="while receiving") as caught:
            await client.receive_some()
        assert isinstance(caught.value.__cause__, trio.BrokenResourceError)
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")
    await client.aclose()
    await server.aclose()


async def tcp_pair(
    client_ssl_context: ssl.SSLContext | None = None,
) -> tuple[SocketTLS, SocketTLS]:
    """A client and server over a real loopback TCP connection (no handshake yet)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        client_socket = await trio.open_tcp_stream("127.0.0.1", port)
        server_socket = await listeners[0].accept()
    client = MemoryBIOStream(
        client_socket, client_ssl_context or client_context(), server_hostname=HOSTNAME
    )
    server = MemoryBIOStream(server_socket, server_context(), server_side=True)
    return client, server


@pytest.mark.parametrize("linger", [True, False], ids=["lingering", "without-linger"])
async def test_peer_still_writing_reads_our_fatal_alert_not_a_reset(
    linger: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # We fail on a forged record while the peer is still writing to us. If
    # aclose() closed the TCP socket with that input unread, the kernel would
    # reset the connection: the peer's writes fail and it never learns why.
    # aclose() lingers instead (half-close, drain, bounded), so the peer's
    # writes complete and it reads our alert. The unlingering run shows the
    # test can tell the difference.
    if not linger:
        monkeypatch.setattr("trio_membio._transport.Transport.linger", _no_linger)
    client, server = await tcp_pair()
    await handshake_both(client, server)
    forged = b"\x17\x03\x03\x00\x20" + bytes(32)  # application data that cannot decrypt
    server_raw = server.transport_stream
    peer_saw: list[BaseException] = []
    writes_done = trio.Event()

    async def peer() -> None:
        await server_raw.send_all(forged)
        try:
            for _ in range(256):  # 16 MiB: more than the socket buffers hold
                await server_raw.send_all(bytes(65536))
            writes_done.set()
            await server.receive_some()
        except trio.BrokenResourceError as exc:
            peer_saw.append(exc)
        await server.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            with pytest.raises(trio.BrokenResourceError, match=r"(?i)bad record mac"):
                await client.receive_some()
            await client.aclose()
    [error] = peer_saw
    if linger:
        assert writes_done.is_set()
        assert "alert" in str(error).lower(), repr(error)
    else:
        assert not writes_done.is_set()
        assert "alert" not in str(error).lower(), repr(error)


async def _no_linger(self: object) -> None:
    return None


async def test_our_alert_sent_by_a_blocked_sender_still_makes_aclose_linger(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The receiving task fails on a forged record while another task's large
    # send_all() holds the send lane: the alert waits in the queue, that
    # sender takes it out with its data, and its next write fails again.
    # The second failure must not make aclose() forget that the alert was
    # ours: closing with the peer's data unread would reset the connection.
    client, server = await tcp_pair()
    await handshake_both(client, server)
    peer = server.transport_stream
    sender_failed = trio.Event()

    async def send_big() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(bytes(4 << 20))  # more than the socket buffers hold
        sender_failed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_big)
        await trio.testing.wait_all_tasks_blocked()  # the sender waits for the peer to read
        await peer.send_all(FORGED_RECORD + bytes(65536))  # the peer keeps writing
        with pytest.raises(trio.BrokenResourceError, match=r"(?i)bad record mac"):
            await client.receive_some()
        while not sender_failed.is_set():  # the peer reads; the sender moves on and fails
            await peer.receive_some(1 << 20)
    assert client._io.fatal_alert_queued
    started = trio.current_time()
    await client.aclose()  # lingers: the peer neither closes nor reads any more
    assert trio.current_time() - started >= ALERT_TIMEOUT
    await peer.aclose()


async def test_aclose_after_the_peers_fatal_alert_does_not_linger(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Lingering protects *our* alert from a reset. When the handshake failed
    # on the peer's alert there is none: aclose() closes at once, even though
    # the peer keeps its end open (lingering would wait out ALERT_TIMEOUT).
    client, server = await tcp_pair(untrusting_client_context())
    server_failure: list[trio.BrokenResourceError] = []

    async def serve() -> None:
        with pytest.raises(trio.BrokenResourceError) as caught:
            await server.do_handshake()
        server_failure.append(caught.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(trio.BrokenResourceError, match="certificate verify failed"):
            await client.do_handshake()
    [error] = server_failure
    assert "alert" in str(error).lower(), repr(error)  # the client's alert, received
    assert server.statistics().ended is ConnectionEnd.ALERT
    started = trio.current_time()
    await server.aclose()
    assert trio.current_time() - started < 0.5
    # The side that sent the alert still lingers, but the server has
    # closed, so the drain sees EOF at once.
    assert client._io.fatal_alert_queued
    assert not server._io.fatal_alert_queued
    started = trio.current_time()
    await client.aclose()
    assert trio.current_time() - started < 0.5
