"""Checkpoints, and cancellation at every await point of every public method.

Each public async method must be a trio checkpoint, and cancelling it at any
point must give the outcome its docstring documents. The harness wraps the
client's transport in a RecordingStream, counts the transport operations an
uncancelled call makes, then reruns the call once per operation with a cancel
landing exactly there, and checks what the stream is left able to do.
Then what a cancelled holder of the send lane leaves behind it (output that
others queued still goes out), and checkpoints that must come even when the
transport never blocks (a socket that keeps taking data).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from trio.testing import assert_checkpoints, wait_all_tasks_blocked

from trio_membio import MemoryBIOStream
from trio_membio.testing import handshake

from .helpers import (
    FORGED_RECORD,
    HANG,
    HOSTNAME,
    aclose_all,
    cancellable,
    client_context,
    expect_broken,
    quietly,
    receive_forever,
    server_context,
    tls_pair,
)
from .peers import controlled_pha_streams
from .transports import ControlledTransport, RecordingStream

AnyStream = MemoryBIOStream[trio.abc.Stream]
Operation = Callable[[AnyStream], Awaitable[object]]
Peer = Callable[[AnyStream], Awaitable[None]]


def recorded_pair(version: str = "1.3") -> tuple[AnyStream, AnyStream, RecordingStream]:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    recording = RecordingStream(client_transport)
    client: AnyStream = MemoryBIOStream(
        recording,
        client_context(version),  # type: ignore[arg-type]  # "1.2" | "1.3"
        server_hostname=HOSTNAME,
    )
    server: AnyStream = MemoryBIOStream(
        server_transport,
        server_context(version),  # type: ignore[arg-type]
        server_side=True,
    )
    return client, server, recording


# ----------------------------------------------------------------- peers


async def peer_handshake_then_drain(server: AnyStream) -> None:
    async def run() -> None:
        await server.do_handshake()
        while await server.receive_some():
            pass

    await quietly(run)


async def peer_handshake_then_echo(server: AnyStream) -> None:
    async def run() -> None:
        await server.do_handshake()
        while data := await server.receive_some():
            await server.send_all(data)

    await quietly(run)


async def peer_unwrap(server: AnyStream) -> None:
    async def run() -> None:
        assert await server.receive_some() == b""
        await server.unwrap()

    await quietly(run)


# ---------------------------------------------------------------- harness


async def cancel_at_every_operation(
    operation: Operation,
    check_after_cancel: Callable[[AnyStream, AnyStream, str], Awaitable[None]],
    *,
    peer: Peer,
    prepare: Callable[[AnyStream, AnyStream], Awaitable[None]] | None = None,
    version: str = "1.3",
) -> list[str]:
    """Cancel `operation` at each of its transport operations in turn.

    Returns the operations that were cancelled, in order.
    """
    cancelled_operations: list[str] = []
    for index in range(100):
        client, server, recording = recorded_pair(version)
        finished = False
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                if prepare is not None:
                    await prepare(client, server)
                nursery.start_soon(peer, server)
                start = len(recording.operations)
                with trio.CancelScope() as scope:
                    recording.cancel_scope = scope
                    recording.cancel_at = start + index
                    await operation(client)
                recording.cancel_at = None
                if scope.cancelled_caught:
                    where = recording.operations[start + index]
                    cancelled_operations.append(where)
                    await check_after_cancel(client, server, where)
                else:
                    finished = True
                nursery.cancel_scope.cancel()
        await client.aclose()
        await server.aclose()
        if finished:
            return cancelled_operations
    raise AssertionError("the operation never completed")


async def expect_echo(client: AnyStream) -> None:
    await client.send_all(b"ping")
    assert await client.receive_some() == b"ping"


async def expect_receiving_works(client: AnyStream, server: AnyStream) -> None:
    await server.send_all(b"marker")
    assert await client.receive_some() == b"marker"


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_do_handshake_cancelled_anywhere(
    version: str, autojump_clock: trio.abc.Clock
) -> None:
    async def check(client: AnyStream, server: AnyStream, where: str) -> None:
        if where == "receive":
            await client.do_handshake()  # resumes
            await expect_echo(client)
        else:
            with pytest.raises(trio.BrokenResourceError, match="handshake was cancelled"):
                await client.do_handshake()

    seen = await cancel_at_every_operation(
        lambda client: client.do_handshake(), check, peer=peer_handshake_then_echo, version=version
    )
    assert "send" in seen
    assert "receive" in seen


async def test_send_all_cancelled_anywhere(autojump_clock: trio.abc.Clock) -> None:
    async def check(client: AnyStream, server: AnyStream, where: str) -> None:
        assert where == "send"
        with pytest.raises(trio.BrokenResourceError, match="earlier send"):
            await client.send_all(b"more")
        await expect_receiving_works(client, server)

    seen = await cancel_at_every_operation(
        lambda client: client.send_all(b"d" * 300_000),
        check,
        peer=peer_handshake_then_drain,
        prepare=handshake,
    )
    assert len(seen) >= 4  # 300 kB goes out a window at a time


async def test_send_all_before_handshake_cancelled_anywhere(
    autojump_clock: trio.abc.Clock,
) -> None:
    handshake_operations = 0

    async def check(client: AnyStream, server: AnyStream, where: str) -> None:
        nonlocal handshake_operations
        if not client.ssl_object.version() and where == "receive":
            handshake_operations += 1
            await client.send_all(b"ping")  # the handshake resumes
            assert await client.receive_some() == b"ping"
        else:
            with pytest.raises(trio.BrokenResourceError):
                await client.send_all(b"x")

    seen = await cancel_at_every_operation(
        lambda client: client.send_all(b"ping"), check, peer=peer_handshake_then_echo
    )
    assert handshake_operations >= 1
    assert seen[-1] == "send"


async def test_receive_some_cancelled_anywhere(autojump_clock: trio.abc.Clock) -> None:
    async def prepare(client: AnyStream, server: AnyStream) -> None:
        await handshake(client, server)
        await server.send_all(b"payload")

    async def check(client: AnyStream, server: AnyStream, where: str) -> None:
        assert where == "receive"
        assert await client.receive_some() == b"payload"  # nothing was lost

    seen = await cancel_at_every_operation(
        lambda client: client.receive_some(),
        check,
        peer=peer_handshake_then_drain,
        prepare=prepare,
    )
    assert seen == ["receive"]


async def test_wait_send_all_might_not_block_cancelled(autojump_clock: trio.abc.Clock) -> None:
    async def check(client: AnyStream, server: AnyStream, where: str) -> None:
        assert where == "wait"
        await expect_echo(client)

    seen = await cancel_at_every_operation(
        lambda client: client.wait_send_all_might_not_block(),
        check,
        peer=peer_handshake_then_echo,
        prepare=handshake,
    )
    assert seen == ["wait"]


async def test_send_eof_cancelled_anywhere(autojump_clock: trio.abc.Clock) -> None:
    async def check(client: AnyStream, server: AnyStream, where: str) -> None:
        assert where == "send"
        # The close_notify may not have reached the peer: the sending
        # direction is broken (that outranks "send_eof() was called"), and a
        # retry must not report the half-close as done.
        with pytest.raises(trio.BrokenResourceError, match="earlier send"):
            await client.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError, match="earlier send"):
            await client.send_eof()
        await expect_receiving_works(client, server)

    seen = await cancel_at_every_operation(
        lambda client: client.send_eof(),
        check,
        peer=peer_handshake_then_drain,
        prepare=handshake,
    )
    assert seen == ["send"]


async def test_aclose_cancelled_anywhere_still_closes(autojump_clock: trio.abc.Clock) -> None:
    async def check(client: AnyStream, server: AnyStream, where: str) -> None:
        assert isinstance(client.transport_stream, RecordingStream)
        assert client.transport_stream.closed
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_some()

    seen = await cancel_at_every_operation(
        lambda client: client.aclose(),
        check,
        peer=peer_handshake_then_drain,
        prepare=handshake,
    )
    assert seen == ["send"]


async def test_unwrap_cancelled_anywhere(autojump_clock: trio.abc.Clock) -> None:
    async def check(client: AnyStream, server: AnyStream, where: str) -> None:
        if where == "receive":
            _, trailing = await client.unwrap()  # may be called again
            assert trailing == b""
        else:
            with pytest.raises(trio.BrokenResourceError, match="earlier send"):
                await client.unwrap()

    seen = await cancel_at_every_operation(
        lambda client: client.unwrap(), check, peer=peer_unwrap, prepare=handshake
    )
    assert seen == ["send", "receive"]


# ------------------------------------- a cancelled holder of the send lane


async def test_cancelled_lane_holder_sends_a_reply_queued_behind_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A cancelled lane holder left a post-handshake-auth reply queued behind it unsent."""
    with trio.fail_after(HANG):
        transport, client, server = await controlled_pha_streams()
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
        await handshake(client, server)
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


# ------------------------------------------------------------ checkpoints


async def test_every_method_is_a_checkpoint() -> None:
    client, server, _ = recorded_pair()
    with assert_checkpoints():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await client.do_handshake()
    with assert_checkpoints():
        await client.do_handshake()  # already done: the fast path
    with assert_checkpoints():
        await client.send_all(b"")
    with assert_checkpoints():
        await client.send_all(b"two records" * 2000)
    with assert_checkpoints():
        await server.receive_some(1)
    with assert_checkpoints():
        await server.receive_some(1)  # served from what is already decrypted
    with assert_checkpoints():
        await client.wait_send_all_might_not_block()
    with assert_checkpoints():
        await client.send_eof()
    with assert_checkpoints():
        await client.send_eof()  # again: nothing to do, still a checkpoint
    with assert_checkpoints():
        await server.aclose()
    with assert_checkpoints():
        await server.aclose()
    with assert_checkpoints():
        await client.aclose()


async def test_unwrap_is_a_checkpoint() -> None:
    client, server, _ = recorded_pair()
    await handshake(client, server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_unwrap, server)
        with assert_checkpoints():
            await client.unwrap()


async def test_cancelled_before_starting_loses_nothing() -> None:
    client, server, recording = recorded_pair()
    await handshake(client, server)
    await server.send_all(b"kept")
    before = len(recording.operations)
    with trio.CancelScope() as scope:
        scope.cancel()
        for operation in (
            client.do_handshake,
            client.receive_some,
            lambda: client.send_all(b"x"),
            client.wait_send_all_might_not_block,
            client.send_eof,
            client.unwrap,
        ):
            with pytest.raises(trio.Cancelled):
                await operation()
    assert len(recording.operations) == before  # nothing reached the transport
    assert await client.receive_some() == b"kept"
    await expect_receiving_works(client, server)


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
            await handshake(client, server)
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
