"""Regression tests: one per bug found by the concurrency review (fixed after d5f1f50).

Each test asserts the fixed behaviour through the public API. Interleavings are
forced with fault-injecting transports and trio.testing.wait_all_tasks_blocked;
everything that used to hang runs under trio.fail_after with the autojump
clock, so a hang fails in virtual time instead of stalling the run.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import wait_all_tasks_blocked

import trio_membio
from trio_membio import MemoryBIOStream

from .helpers import (
    HOSTNAME,
    TLSVersion,
    client_context,
    handshake_both,
    handshaken_pair,
    server_context,
    tls_pair,
)
from .peers import pha_streams, renegotiation_in_progress

Stream = MemoryBIOStream[trio.abc.Stream]
Operation = Callable[[], Awaitable[object]]
HANG = 10.0  # seconds (virtual, under the autojump clock) after which a wait is a hang
# An application_data record that cannot decrypt, as an attacker could inject.
FORGED_RECORD = b"\x17\x03\x03\x00\x30" + bytes(48)


class ControlledTransport(trio.abc.HalfCloseableStream):
    """Wraps a stream; the test decides when its sends and waits proceed.

    ``wait_gate`` holds wait_send_all_might_not_block(), ``send_gate`` holds
    send_all() before it delivers anything, and send_all() number
    ``half_write_at`` (counting from 1) delivers half of its data, then hangs.
    """

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.wait_gate = opened()
        self.send_gate = opened()
        self.half_write_at: int | None = None
        self.sends = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends += 1
        await self.send_gate.wait()
        if self.sends == self.half_write_at:
            await self.inner.send_all(data[: len(data) // 2])
            await trio.sleep_forever()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.wait_gate.wait()
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def opened() -> trio.Event:
    event = trio.Event()
    event.set()
    return event


async def quietly(operation: Operation) -> None:
    """Run a peer's operation that may see our end break."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await operation()


async def cancellable(scope: trio.CancelScope, operation: Operation) -> None:
    with scope:
        await operation()


async def receive_forever(stream: Stream, into: list[bytes]) -> None:
    while True:
        into.append(bytes(await stream.receive_some()))


async def receive_exactly(stream: Stream, size: int) -> bytes:
    received = bytearray()
    with trio.fail_after(HANG):
        while len(received) < size:
            data = await stream.receive_some()
            assert data, f"EOF after {len(received)} of {size} bytes"
            received += data
    return bytes(received)


async def expect_broken(operation: Operation, match: str) -> None:
    """The operation raises BrokenResourceError at once, rather than hanging."""
    with trio.fail_after(HANG), pytest.raises(trio.BrokenResourceError, match=match):
        await operation()


async def aclose_all(*streams: trio.abc.AsyncResource) -> None:
    for stream in streams:
        await stream.aclose()


# ------------------------------------------------- handshake and breakage


async def test_half_written_handshake_flight_breaks_the_whole_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A lane holder cancelled mid-ClientHello broke only sending; the handshake then hung."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        transport = ControlledTransport(client_transport)
        transport.wait_gate = trio.Event()
        transport.half_write_at = 1  # the ClientHello
        client = MemoryBIOStream(transport, client_context("1.3"), server_hostname=HOSTNAME)
        server = MemoryBIOStream(server_transport, server_context("1.3"), server_side=True)

        async def drive_handshake() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await client.do_handshake()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(quietly, server.do_handshake)
            waiter = trio.CancelScope()
            nursery.start_soon(cancellable, waiter, client.wait_send_all_might_not_block)
            await wait_all_tasks_blocked()  # the waiter holds the send lane
            nursery.start_soon(drive_handshake)
            await wait_all_tasks_blocked()  # the ClientHello is queued behind the waiter
            transport.wait_gate.set()
            await wait_all_tasks_blocked()  # the waiter wrote half of the ClientHello
            assert transport.sends == 1
            waiter.cancel()
            await wait_all_tasks_blocked()
            await expect_broken(client.do_handshake, "handshake was cancelled")
            await expect_broken(client.receive_some, "handshake was cancelled")
            nursery.cancel_scope.cancel()
        await aclose_all(client, server)


@pytest.mark.parametrize(("version", "end"), [("1.3", "client"), ("1.2", "server")])
async def test_waiters_see_a_half_written_final_flight(
    version: TLSVersion, end: str, autojump_clock: trio.abc.Clock
) -> None:
    """Driver cancelled in its final flight: waiters saw success or hung in receive_some()."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        if end == "client":  # TLS 1.3: the client's Finished ends the handshake
            transport = ControlledTransport(client_transport)
            ours = MemoryBIOStream(transport, client_context(version), server_hostname=HOSTNAME)
            peer = MemoryBIOStream(server_transport, server_context(version), server_side=True)
        else:  # TLS 1.2: the server's ChangeCipherSpec and Finished end it
            transport = ControlledTransport(server_transport)
            ours = MemoryBIOStream(transport, server_context(version), server_side=True)
            peer = MemoryBIOStream(
                client_transport, client_context(version), server_hostname=HOSTNAME
            )
        transport.half_write_at = 2  # our second flight, the final one
        async with trio.open_nursery() as nursery:
            nursery.start_soon(quietly, peer.do_handshake)
            driver = trio.CancelScope()
            nursery.start_soon(cancellable, driver, ours.do_handshake)
            await wait_all_tasks_blocked()
            assert transport.sends == 2  # half of the final flight is out, the rest hangs
            assert ours.ssl_object.version() is not None  # OpenSSL considers it done
            async with trio.open_nursery() as waiters:
                waiters.start_soon(expect_broken, ours.do_handshake, "handshake was cancelled")
                waiters.start_soon(expect_broken, ours.receive_some, "handshake was cancelled")
                await wait_all_tasks_blocked()
                driver.cancel()
            nursery.cancel_scope.cancel()
        await aclose_all(ours, peer)


async def test_failed_handshake_send_breaks_the_whole_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A transport send failure in the handshake broke only sending; do_handshake() then hung."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        pump = client_transport.send_stream.send_all_hook
        assert pump is not None
        sends = 0

        async def fail_first_send() -> None:
            nonlocal sends
            sends += 1
            if sends == 1:
                raise trio.BrokenResourceError("transient send failure")
            await pump()

        client_transport.send_stream.send_all_hook = fail_first_send
        client, server = tls_pair(lambda: (client_transport, server_transport), version="1.3")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(quietly, server.do_handshake)
            with pytest.raises(trio.BrokenResourceError, match="transient send failure"):
                await client.do_handshake()
            await expect_broken(client.do_handshake, "transient send failure")
            await expect_broken(client.receive_some, "transient send failure")
            nursery.cancel_scope.cancel()
        await aclose_all(client, server)


async def test_failed_wait_send_all_might_not_block_breaks_only_sending(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A transport failure in wait_send_all_might_not_block() broke receiving too."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        client, server = tls_pair(lambda: (client_transport, server_transport), version="1.3")
        await handshake_both(client, server)
        await server.send_all(b"already on its way")

        async def broken() -> None:
            raise trio.BrokenResourceError("send side reset")

        client_transport.send_stream.wait_send_all_might_not_block_hook = broken
        client_transport.send_stream.send_all_hook = broken
        with pytest.raises(trio.BrokenResourceError, match="send side reset"):
            await client.wait_send_all_might_not_block()
        assert await client.receive_some() == b"already on its way"
        with pytest.raises(trio.BrokenResourceError, match="send side reset"):
            await client.send_all(b"x")
        await aclose_all(client, server)


# ----------------------------------- output queued behind the send lane


async def test_cancelled_lane_holder_sends_a_reply_queued_behind_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A cancelled lane holder left a post-handshake-auth reply queued behind it unsent."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        transport = ControlledTransport(client_transport)
        client, server = pha_streams(transport, server_transport)
        await handshake_both(client, server)
        transport.wait_gate = trio.Event()
        received: list[bytes] = []
        async with trio.open_nursery() as nursery:
            holder = trio.CancelScope()
            nursery.start_soon(cancellable, holder, client.wait_send_all_might_not_block)
            await wait_all_tasks_blocked()  # it holds the send lane
            nursery.start_soon(receive_forever, client, received)
            await wait_all_tasks_blocked()
            server.ssl_object.verify_client_post_handshake()
            await server.send_all(b"authenticate please")
            await wait_all_tasks_blocked()  # the reader queued the reply for the lane holder
            assert received == [b"authenticate please"]
            holder.cancel()
            with trio.move_on_after(1):
                await server.receive_some()  # takes in the client's certificate, if sent
            assert server.getpeercert() is not None, "the client's reply never left"
            nursery.cancel_scope.cancel()
        await aclose_all(client, server)


async def test_cancelled_lane_holder_sends_a_fatal_alert_queued_behind_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A cancelled lane holder left a fatal alert queued behind it unsent; the peer hung."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        transport = ControlledTransport(client_transport)
        client, server = tls_pair(lambda: (transport, server_transport), version="1.3")
        await handshake_both(client, server)
        transport.wait_gate = trio.Event()
        async with trio.open_nursery() as nursery:
            holder = trio.CancelScope()
            nursery.start_soon(cancellable, holder, client.wait_send_all_might_not_block)
            await wait_all_tasks_blocked()  # it holds the send lane
            await server_transport.send_all(FORGED_RECORD)
            with pytest.raises(trio.BrokenResourceError, match=r"(?i)bad record mac"):
                await client.receive_some()  # the alert is queued for the lane holder
            holder.cancel()
            await expect_broken(server.receive_some, r"(?i)alert")
        await aclose_all(client, server)


# ------------------------------------------------- plaintext is never lost


async def test_cancelled_receive_keeps_plaintext_while_answering_the_peer(
    autojump_clock: trio.abc.Clock,
) -> None:
    """receive_some() cancelled while sending a PHA reply dropped the plaintext it decrypted."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        transport = ControlledTransport(client_transport)
        client, server = pha_streams(transport, server_transport)
        await handshake_both(client, server)
        server.ssl_object.verify_client_post_handshake()
        await server.send_all(b"important-1")
        await server.send_all(b"important-2")
        transport.send_gate = trio.Event()  # the client's transport stops taking data
        got: bytes | bytearray = b""
        with trio.move_on_after(1):
            got = await client.receive_some()  # must send the reply: it waits and is cancelled
        transport.send_gate.set()
        rest = await receive_exactly(client, len(b"important-1important-2") - len(got))
        assert got + rest == b"important-1important-2"
        await aclose_all(client, server)


async def test_failed_send_of_a_receive_reply_keeps_plaintext(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A failed send of a PHA reply made receive_some() raise and drop the plaintext.

    The plaintext comes first; then both directions report the failed send
    (the peer waits for that reply: nothing more can be relied on).
    """
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        client, server = pha_streams(client_transport, server_transport)
        await handshake_both(client, server)
        server.ssl_object.verify_client_post_handshake()
        await server.send_all(b"record-1 ")
        await server.send_all(b"record-2 ")

        async def broken() -> None:
            raise trio.BrokenResourceError("send side reset")

        client_transport.send_stream.send_all_hook = broken
        assert await receive_exactly(client, 18) == b"record-1 record-2 "
        with pytest.raises(trio.BrokenResourceError, match="send side reset"):
            await client.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError, match="send side reset"):
            await client.receive_some()
        await aclose_all(client, server)


async def test_tls12_send_over_a_forged_record_keeps_earlier_plaintext(
    autojump_clock: trio.abc.Clock,
) -> None:
    """TLS 1.2 send_all() meeting a forged record lost the data set aside and the real error."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        client, server = tls_pair(lambda: (client_transport, server_transport), version="1.2")
        await handshake_both(client, server)
        await server.send_all(b"authentic")
        await server_transport.send_all(FORGED_RECORD)
        # Both records arrive in one transport read; only the first is decrypted.
        assert await client.receive_some(1) == b"a"
        with pytest.raises(trio.BrokenResourceError, match=r"(?i)bad record mac"):
            await client.send_all(b"hello")  # sets the rest aside, then meets the forgery
        assert await client.receive_some() == b"uthentic"
        with pytest.raises(trio.BrokenResourceError, match=r"(?i)bad record mac"):
            await client.receive_some()
        await aclose_all(client, server)


# ----------------------------------------------------- shutting down


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_sending_after_a_cancelled_unwrap_raises_closed(
    version: TLSVersion, autojump_clock: trio.abc.Clock
) -> None:
    """After unwrap() was cancelled waiting for the peer, send_all() raised a bare RuntimeError."""
    with trio.fail_after(HANG):
        client, server = await handshaken_pair(version=version)
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
        await aclose_all(transport, server.transport_stream)


async def test_unwrap_after_send_eof_keeps_unread_plaintext(autojump_clock: trio.abc.Clock) -> None:
    """unwrap() after send_eof() succeeded, leaving data that send_eof() decrypted unreadable."""
    with trio.fail_after(HANG):
        client, server = await handshaken_pair(version="1.3")
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
        await aclose_all(transport, server.transport_stream)


async def test_unwrap_keeps_unread_data_that_is_still_encrypted(
    autojump_clock: trio.abc.Clock,
) -> None:
    """unwrap() broke the stream on data still encrypted ahead of close_notify, losing it."""
    with trio.fail_after(HANG):
        client, server = await handshaken_pair(version="1.3")
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
        await aclose_all(transport, server.transport_stream)


async def test_unwrap_stops_reading_ahead_of_a_peer_that_keeps_sending(
    autojump_clock: trio.abc.Clock,
) -> None:
    """unwrap() set aside all a peer sent instead of its close_notify: memory without bound."""
    flood = 64 * 65536  # 4 MiB, four times the set-aside limit
    with trio.fail_after(HANG):
        client, server = await handshaken_pair(version="1.3")

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
        await aclose_all(transport, server.transport_stream)


async def test_https_compatible_aclose_still_sends_held_session_tickets(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An https_compatible TLS 1.3 server that never wrote dropped its session tickets."""
    with trio.fail_after(HANG):
        client, server = tls_pair(version="1.3", https_compatible=True)
        await handshake_both(client, server)
        await client.send_all(b"request")
        assert await server.receive_some() == b"request"
        await server.aclose()
        while await client.receive_some():
            pass
        session = client.session
        assert session is not None
        assert session.has_ticket, "the client got no resumable session"
        await client.aclose()


# -------------------------------------------- TLS 1.2 renegotiation


async def test_send_cancelled_during_renegotiation_does_not_pin_its_bytes(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """send_all() cancelled mid-renegotiation pinned its bytes: later sends raised ValueError."""
    with trio.fail_after(HANG):
        client, peer = await renegotiation_in_progress(*trio.testing.memory_stream_pair(), tmp_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_forever, client, [])
            await wait_all_tasks_blocked()  # it answered with a ClientHello
            with trio.move_on_after(1) as scope:
                await client.send_all(b"never sent")  # waits for the server's answer
            assert scope.cancelled_caught
            async with trio.open_nursery() as peer_side:
                peer_side.start_soon(peer.receive_exactly, 10)
                await client.send_all(b"later")
                await client.send_all(b"later")
            nursery.cancel_scope.cancel()
        assert peer.received == b"laterlater"
        assert peer.renegotiated
        await client.aclose()


async def test_send_cancelled_during_renegotiation_keeps_anothers_send_lane(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """send_all() cancelled mid-renegotiation freed a send lane another task held."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        pump = client_transport.send_stream.send_all_hook
        assert pump is not None
        gate = opened()

        async def gated_pump() -> None:  # runs inside the memory stream's send_all
            await gate.wait()
            await pump()

        client_transport.send_stream.send_all_hook = gated_pump
        client, peer = await renegotiation_in_progress(client_transport, server_transport, tmp_path)
        ready = trio.Event()

        async def wait_to_send() -> None:
            await client.wait_send_all_might_not_block()
            ready.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_forever, client, [])
            await wait_all_tasks_blocked()  # it answered with a ClientHello
            sender = trio.CancelScope()
            nursery.start_soon(cancellable, sender, functools.partial(client.send_all, b"hello"))
            await wait_all_tasks_blocked()  # the write waits for the renegotiation
            gate = trio.Event()  # the client's transport now holds its sends
            await peer.step()  # ServerHello .. ServerHelloDone
            await wait_all_tasks_blocked()  # the reader holds the send lane, stuck answering
            sender.cancel()
            await wait_all_tasks_blocked()
            nursery.start_soon(wait_to_send)
            await wait_all_tasks_blocked()
            assert not ready.is_set()  # it waits for the reader's send...
            gate.set()
            await ready.wait()  # ...and then goes ahead, without BusyResourceError
            async with trio.open_nursery() as peer_side:
                peer_side.start_soon(peer.receive_exactly, 5)
                await client.send_all(b"after")
            nursery.cancel_scope.cancel()
        assert peer.received == b"after"
        assert peer.renegotiated
        await client.aclose()


# --------------------------------------------------- socket fast path


def read_until_eof(sock: socket.socket) -> int:
    total = 0
    buffer = bytearray(1 << 20)
    while count := sock.recv_into(buffer):
        total += count
    return total


async def test_large_socket_send_yields_and_can_be_cancelled() -> None:
    """Fast path: a send_all() the socket kept accepting never yielded nor let a cancel in."""
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    reader = theirs.dup()  # drained by a thread, as fast as the kernel allows
    reader.settimeout(HANG)
    client = MemoryBIOStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(ours)),
        client_context("1.3"),
        server_hostname=HOSTNAME,
    )
    server = MemoryBIOStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
        server_context("1.3"),
        server_side=True,
    )
    payload = bytes(64 << 20)
    scope = trio.CancelScope()
    ticks = 0
    sending = True
    drained = 0

    async def tick() -> None:  # cancels the send once the send has let it run 32 times
        nonlocal ticks
        while sending:
            ticks += 1
            if ticks == 32:
                scope.cancel()
            await trio.lowlevel.checkpoint()

    async def drain(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        def run() -> int:
            trio.from_thread.run_sync(task_status.started)
            return read_until_eof(reader)

        nonlocal drained
        drained = await trio.to_thread.run_sync(run)

    with reader, trio.fail_after(HANG):
        try:
            await handshake_both(client, server)
            async with trio.open_nursery() as nursery:
                await nursery.start(drain)  # reading before the send starts
                nursery.start_soon(tick)
                with scope:
                    await client.send_all(payload)
                sending = False
                await client.aclose()  # the reader sees the end
        finally:
            await aclose_all(client, server)
    assert ticks >= 32
    assert scope.cancelled_caught
    assert drained < len(payload)  # the cancel stopped it well before the end
