"""The public test kit, trio_membio.testing: each fault, the pairs, schedules, strategies."""

from __future__ import annotations

import inspect
import ssl
import subprocess
import sys
import textwrap
from typing import Literal

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_membio import TLSEngine
from trio_membio.testing import (
    DEFAULT_HOSTNAME,
    CancelPoint,
    Corruption,
    FaultPlan,
    FaultyStream,
    Outcome,
    Pause,
    TaskSchedule,
    TLSStreamPair,
    handshake,
    lockstep_tls_stream_pair,
    memory_tls_stream_pair,
    random_chunks,
    run_in_virtual_time,
    throwaway_contexts,
    tls_engine_pair,
)
from trio_membio.testing.strategies import (
    cancel_points,
    chunkings,
    corruptions,
    delays,
    fault_plans,
    messages,
    task_schedules,
    tls_versions,
)


def faulty_pair(
    first: FaultPlan | None = None, second: FaultPlan | None = None, *, lockstep: bool = False
) -> tuple[FaultyStream, FaultyStream]:
    a, b = trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    return FaultyStream(a, first), FaultyStream(b, second)


async def receive_all(stream: trio.abc.ReceiveStream, max_bytes: int | None = None) -> bytes:
    received = bytearray()
    while data := await stream.receive_some(max_bytes):
        received += data
    return bytes(received)


# ---------------------------------------------------------------- FaultyStream


@pytest.mark.parametrize(
    "plan",
    [
        FaultPlan(),
        # trio's checks move about a megabyte, so the chunks are not tiny.
        FaultPlan(send_chunks=(997, 4096), receive_chunks=(1500, 1)),
        FaultPlan(send_delays=(0.1, 0), receive_delays=(0.2,), send_chunks=(8192,)),
    ],
    ids=["transparent", "chunked", "delayed"],
)
async def test_faulty_stream_keeps_the_stream_contract(
    plan: FaultPlan, autojump_clock: trio.abc.Clock
) -> None:
    async def memory_pair() -> tuple[FaultyStream, FaultyStream]:
        return faulty_pair(plan, plan)

    async def lockstep_pair() -> tuple[FaultyStream, FaultyStream]:
        return faulty_pair(plan, plan, lockstep=True)

    await trio.testing.check_half_closeable_stream(memory_pair, lockstep_pair)


async def test_chunks_cap_receives_and_split_sends() -> None:
    sender, receiver = faulty_pair(FaultPlan(send_chunks=(3,)), FaultPlan(receive_chunks=(2, 5)))
    await sender.send_all(b"0123456789")
    assert [record.nbytes for record in sender.operations] == [10]
    sizes = [len(await receiver.receive_some()) for _ in range(4)]
    assert sizes == [2, 5, 2, 1]
    assert receiver.bytes_received == 10
    assert [record.kind for record in receiver.operations] == ["receive"] * 4
    assert all(record.outcome is Outcome.OK for record in receiver.operations)


async def test_delays_take_virtual_time(autojump_clock: trio.abc.Clock) -> None:
    sender, receiver = faulty_pair(FaultPlan(send_chunks=(1,), send_delays=(0.5, 1.0)))
    start = trio.current_time()
    await sender.send_all(b"abc")  # 0.5 + 1.0 + 0.5
    assert trio.current_time() - start == pytest.approx(2.0)
    assert await receiver.receive_some() == b"abc"


async def test_a_cancelled_delayed_receive_loses_nothing(autojump_clock: trio.abc.Clock) -> None:
    sender, receiver = faulty_pair(None, FaultPlan(receive_delays=(10,)))
    await sender.send_all(b"kept")
    with trio.move_on_after(1):
        await receiver.receive_some()
    assert receiver.operations[-1].outcome is Outcome.CANCELLED
    assert await receiver.receive_some() == b"kept"


async def test_corruption_on_both_sides() -> None:
    sender, receiver = faulty_pair(
        FaultPlan(send_chunks=(2,), corrupt_sent=(Corruption(1, xor=0xFF), Corruption(4))),
        FaultPlan(corrupt_received=(Corruption(0, value=ord("Z")),)),
    )
    await sender.send_all(b"\x00\x00abcd")
    assert await receiver.receive_some() == b"Z\xffabbd"  # 0 replaced, 1 flipped, 4 xor 1
    assert sender.faults == ["sent byte 1: 0x00 -> 0xff", "sent byte 4: 0x63 -> 0x62"]
    assert receiver.faults == ["received byte 0: 0x00 -> 0x5a"]


async def test_install_counts_from_now() -> None:
    sender, receiver = faulty_pair()
    await sender.send_all(b"before")
    sender.install(FaultPlan(corrupt_sent=(Corruption(0),), raise_at_operation=1))
    assert sender.sent_since_install == 0
    await sender.send_all(b"a")
    with pytest.raises(trio.BrokenResourceError, match="injected fault: operation 1"):
        await sender.send_all(b"b")
    await sender.send_all(b"c")  # an injected error happens once
    assert await receiver.receive_some() == b"before`c"
    assert sender.operations[2].outcome is Outcome.INJECTED
    assert sender.bytes_sent == 8


async def test_end_of_sent_stream_at_byte_k() -> None:
    sender, receiver = faulty_pair(FaultPlan(eof_sent_at=5, send_chunks=(3,)))
    await sender.send_all(b"0123456789")
    assert sender.send_ended
    assert await receive_all(receiver) == b"01234"
    await sender.send_all(b"more")  # dropped silently, as by a cut connection
    assert sender.bytes_dropped == 9
    await sender.send_eof()  # already ended: nothing to do
    with pytest.raises(trio.ClosedResourceError):
        await sender.send_all(b"after send_eof")


async def test_end_of_sent_stream_at_zero_and_at_a_boundary() -> None:
    sender, receiver = faulty_pair(FaultPlan(eof_sent_at=0))
    await sender.send_all(b"x")
    assert await receiver.receive_some() == b""
    sender, receiver = faulty_pair(FaultPlan(eof_sent_at=3))
    await sender.send_all(b"abc")  # exactly up to the cut: the end follows at once
    assert sender.bytes_dropped == 0
    assert await receive_all(receiver) == b"abc"


async def test_end_of_received_stream_at_byte_k() -> None:
    sender, receiver = faulty_pair(None, FaultPlan(eof_received_at=4))
    await sender.send_all(b"0123456789")
    assert await receive_all(receiver) == b"0123"
    assert await receiver.receive_some() == b""
    assert receiver.faults == ["received stream ended at byte 4"]


def test_eof_sent_needs_a_half_closeable_stream() -> None:
    send_stream, _ = trio.testing.memory_stream_one_way_pair()
    one_way = trio.StapledStream(send_stream, trio.testing.MemoryReceiveStream())
    assert isinstance(one_way, trio.abc.HalfCloseableStream)  # StapledStream always is
    plain = trio.testing.MemoryReceiveStream()
    with pytest.raises(TypeError, match="send_eof"):
        FaultyStream(plain, FaultPlan(eof_sent_at=1))  # type: ignore[arg-type]


@pytest.mark.parametrize("direction", ["sent", "received"])
async def test_a_hung_direction_blocks_until_cancelled_or_closed(
    direction: str, autojump_clock: trio.abc.Clock
) -> None:
    if direction == "sent":
        stream, peer = faulty_pair(FaultPlan(hang_sent_at=2))
    else:
        peer, stream = faulty_pair(None, FaultPlan(hang_received_at=2))

    async def operate() -> bytes | bytearray:
        if direction == "sent":
            await stream.send_all(b"abcd")
            return b""
        return await stream.receive_some()

    if direction == "received":
        await peer.send_all(b"abcd")
        assert await stream.receive_some() == b"ab"  # up to the hang
    with trio.move_on_after(5) as scope:
        await operate()
    assert scope.cancelled_caught
    if direction == "sent":
        assert await peer.receive_some() == b"ab"
    with trio.move_on_after(5) as scope:
        await operate()  # still hung
    assert scope.cancelled_caught

    async def close_soon() -> None:
        await trio.sleep(1)
        await stream.aclose()

    with trio.fail_after(60):  # the close must wake it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_soon)
            with pytest.raises(trio.ClosedResourceError):
                await operate()
    assert stream.closed


async def test_a_new_plan_ends_a_hang(autojump_clock: trio.abc.Clock) -> None:
    """A receive blocked by a hang stayed blocked after install(), against the docs."""
    sender, receiver = faulty_pair(None, FaultPlan(hang_received_at=0))
    await sender.send_all(b"abcd")
    received: list[bytes | bytearray] = []

    async def receive() -> None:
        received.append(await receiver.receive_some())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.sleep(10)
            assert not received  # hung
            receiver.install(FaultPlan(receive_chunks=(3,)))
    assert received == [b"abc"]  # went on under the new plan
    assert receiver.faults == ["receive hangs at byte 0"]


async def test_a_new_plan_ends_a_send_hang(autojump_clock: trio.abc.Clock) -> None:
    sender, receiver = faulty_pair(FaultPlan(hang_sent_at=2))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.send_all, b"abcdefgh")
            await trio.sleep(10)
            assert await receiver.receive_some() == b"ab"  # then the send hung
            # The old plan's hang, counted from the new origin, would stop it
            # again after two more bytes.
            sender.install(FaultPlan(send_chunks=(1,)))
        rest = b""
        while len(rest) < 6:
            rest += await receiver.receive_some()
        assert rest == b"cdefgh"
        await sender.send_eof()  # no longer hung either
        assert await receiver.receive_some() == b""


async def test_a_hung_sending_direction_holds_send_eof_too(autojump_clock: trio.abc.Clock) -> None:
    """hang_sent_at let send_eof() through: the peer saw a clean end instead of nothing."""
    sender, receiver = faulty_pair(FaultPlan(hang_sent_at=2))
    with trio.move_on_after(5):
        await sender.send_all(b"abcd")
    assert await receiver.receive_some() == b"ab"
    with trio.move_on_after(5) as scope:
        await sender.send_eof()
    assert scope.cancelled_caught
    with trio.move_on_after(5) as scope:
        await receiver.receive_some()  # no end of stream arrived
    assert scope.cancelled_caught


async def test_hang_at_one_operation(autojump_clock: trio.abc.Clock) -> None:
    sender, receiver = faulty_pair(FaultPlan(hang_at_operation=1))
    await sender.send_all(b"a")
    with trio.move_on_after(3):
        await sender.send_all(b"b")
    assert sender.operations[1].outcome is Outcome.CANCELLED
    await sender.send_all(b"c")  # only that operation hangs
    assert await receiver.receive_some() == b"ac"


async def test_raise_a_chosen_exception() -> None:
    stream, _ = faulty_pair(FaultPlan(raise_at_operation=0, error=ConnectionResetError))
    with pytest.raises(ConnectionResetError, match="operation 0"):
        await stream.receive_some()
    assert stream.faults == ["raised ConnectionResetError at operation 0 (receive)"]


@pytest.mark.parametrize(
    "error",
    [OSError, ConnectionResetError, KeyError, trio.BrokenResourceError, trio.ClosedResourceError],
)
async def test_raise_on_send_at_the_nth_send(error: type[Exception]) -> None:
    """raise_on_send_at counts only the sending direction and raises send_error once."""
    sender, receiver = faulty_pair(FaultPlan(raise_on_send_at=1, send_error=error))
    await receiver.send_all(b"in")
    assert await sender.receive_some() == b"in"  # a receive does not count
    await sender.send_all(b"first")
    with pytest.raises(error, match="injected fault: send operation 1"):
        await sender.send_all(b"second")
    await sender.send_all(b"third")  # once
    assert await receiver.receive_some() == b"firstthird"
    assert [record.outcome for record in sender.operations] == [
        Outcome.OK,
        Outcome.OK,
        Outcome.INJECTED,
        Outcome.OK,
    ]
    assert sender.faults == [f"raised {error.__name__} at send operation 1 (send) failed"]


async def test_raise_on_send_at_counts_waits_and_send_eof() -> None:
    """wait_send_all_might_not_block and send_eof are operations of the sending direction."""
    sender, receiver = faulty_pair(FaultPlan(raise_on_send_at=1, send_error=OSError))
    await sender.wait_send_all_might_not_block()
    with pytest.raises(OSError, match="send operation 1 \\(send_eof\\)"):
        await sender.send_eof()
    assert sender.operations[-1].outcome is Outcome.INJECTED
    await sender.send_all(b"not ended")  # the failed send_eof ended nothing
    assert await receiver.receive_some() == b"not ended"
    sender.install(FaultPlan(raise_on_send_at=0, send_error=KeyError))
    with pytest.raises(KeyError):
        await sender.wait_send_all_might_not_block()
    assert sender.operations[-1].kind == "wait"
    assert sender.operations[-1].outcome is Outcome.INJECTED


@pytest.mark.parametrize("lockstep", [False, True], ids=["memory", "lockstep"])
async def test_send_error_after_bytes_delivers_a_prefix_then_raises(
    lockstep: bool, autojump_clock: trio.abc.Clock
) -> None:
    """A partial write that fails: k bytes reach the peer, then send_error is raised."""
    sender, receiver = faulty_pair(
        FaultPlan(raise_on_send_at=0, send_error=ConnectionResetError, send_error_after_bytes=3),
        lockstep=lockstep,
    )
    received = bytearray()

    async def receive() -> None:
        while len(received) < 3 + 4:
            received.extend(await receiver.receive_some())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            with pytest.raises(ConnectionResetError, match="after 3 bytes"):
                await sender.send_all(b"abcdef")
            await sender.send_all(b"next")
    assert received == b"abcnext"
    record = sender.operations[0]
    assert (record.outcome, record.nbytes) == (Outcome.INJECTED, 3)
    assert sender.bytes_sent == 3 + 4
    assert sender.faults == [
        "raised ConnectionResetError at send operation 0 (send) failed after 3 bytes"
    ]


async def test_send_error_after_more_bytes_than_the_send_has() -> None:
    """A prefix longer than the data delivers all of it and still raises."""
    sender, receiver = faulty_pair(
        FaultPlan(raise_on_send_at=0, send_error=KeyError, send_error_after_bytes=100)
    )
    with pytest.raises(KeyError):
        await sender.send_all(b"short")
    assert await receiver.receive_some() == b"short"
    assert sender.operations[0].outcome is Outcome.INJECTED


@pytest.mark.parametrize("error", [OSError, KeyError, trio.ClosedResourceError])
async def test_raise_on_receive_at_the_nth_receive_loses_nothing(error: type[Exception]) -> None:
    """raise_on_receive_at counts only receives; the failed receive takes nothing."""
    sender, receiver = faulty_pair(None, FaultPlan(raise_on_receive_at=1, receive_error=error))
    await receiver.send_all(b"sends do not count")
    await sender.send_all(b"one")
    assert await receiver.receive_some() == b"one"
    await sender.send_all(b"two")
    with pytest.raises(error, match="injected fault: receive operation 1"):
        await receiver.receive_some()
    assert receiver.operations[-1].outcome is Outcome.INJECTED
    assert await receiver.receive_some() == b"two"  # once, and nothing was lost
    assert receiver.faults == [f"raised {error.__name__} at receive operation 1 (receive) failed"]


async def test_direction_errors_reach_a_tls_stream_chained_or_bare() -> None:
    """The per-direction faults reach a MemoryBIOStream through its transport."""
    client, server = memory_tls_stream_pair()
    await handshake(client, server)
    client.transport_stream.install(FaultPlan(raise_on_receive_at=0, receive_error=KeyError))
    await server.send_all(b"x")
    with pytest.raises((KeyError, trio.BrokenResourceError)) as info:
        await client.receive_some()
    chain: list[BaseException] = []
    error: BaseException | None = info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(link, KeyError) for link in chain)
    assert client.transport_stream.operations[-1].outcome is Outcome.INJECTED
    await client.aclose()
    await server.aclose()


async def test_cancel_at_an_operation() -> None:
    sender, receiver = faulty_pair()
    with trio.CancelScope() as scope:
        sender.cancel_at(scope, operations_from_now=1)
        await sender.send_all(b"first")
        await sender.send_all(b"second")  # cancelled before any byte moves
    assert scope.cancelled_caught
    assert [record.outcome for record in sender.operations] == [Outcome.OK, Outcome.CANCELLED]
    assert await receiver.receive_some() == b"first"
    with pytest.raises(ValueError, match="at least 0"):
        sender.cancel_at(scope, -1)


async def test_cancel_at_stops_before_the_wrapped_stream(autojump_clock: trio.abc.Clock) -> None:
    # trio's lockstep streams take the data before their first checkpoint.
    sender, receiver = faulty_pair(lockstep=True)
    with trio.CancelScope() as scope:
        sender.cancel_at(scope)
        await sender.send_all(b"lost")
    assert scope.cancelled_caught
    with trio.move_on_after(1) as waited:
        await receiver.receive_some()
    assert waited.cancelled_caught, "the cancelled send reached the peer"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send_all, b"next")
        assert await receiver.receive_some() == b"next"


async def test_conflicts_are_detected() -> None:
    stream, _ = faulty_pair(None, None, lockstep=True)
    # The lockstep stream underneath detects conflicts too: the message says
    # that the FaultyStream's own detector caught this one.
    with pytest.RaisesGroup(pytest.RaisesExc(trio.BusyResourceError, match="on this FaultyStream")):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, b"x")
            nursery.start_soon(stream.send_all, b"y")


async def test_closed_stream_raises_closed() -> None:
    stream, _ = faulty_pair()
    await stream.aclose()
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    assert stream.operations[-1].outcome is Outcome.FAILED
    assert stream.faults == ["closed"]


def test_plan_validation() -> None:
    assert FaultPlan().is_transparent
    assert FaultPlan(error=OSError).is_transparent
    assert not FaultPlan(receive_chunks=(1,)).is_transparent
    for bad in (
        {"send_chunks": (0,)},
        {"receive_delays": (-1.0,)},
        {"eof_sent_at": -1},
        {"raise_at_operation": -2},
        {"raise_on_send_at": -1},
        {"raise_on_receive_at": -1},
        {"raise_on_send_at": 0, "send_error_after_bytes": -1},
        {"send_error_after_bytes": 1},  # without raise_on_send_at it means nothing
    ):
        with pytest.raises(ValueError, match="FaultPlan"):
            FaultPlan(**bad)
    for bad_type in (
        {"send_error": "OSError"},
        {"receive_error": int},
        {"error": trio.Cancelled},
        {"send_error": UnicodeDecodeError},  # needs five arguments
    ):
        with pytest.raises(TypeError, match="FaultPlan"):
            FaultPlan(**bad_type)
    assert FaultPlan(send_error=KeyError, receive_error=OSError).is_transparent
    assert not FaultPlan(raise_on_send_at=0).is_transparent
    assert not FaultPlan(raise_on_receive_at=3).is_transparent
    for corruption in ({"offset": -1}, {"offset": 0, "xor": 0}, {"offset": 0, "value": 256}):
        with pytest.raises(ValueError, match="Corruption"):
            Corruption(**corruption)
    assert Corruption(0, value=7).apply(9) == 7
    assert Corruption(0, xor=3).apply(1) == 2


def test_random_chunks_are_seeded() -> None:
    assert random_chunks(7) == random_chunks(7)
    assert random_chunks(7) != random_chunks(8)
    sizes = random_chunks(1, count=100, min_size=3, max_size=9)
    assert len(sizes) == 100
    assert min(sizes) >= 3
    assert max(sizes) <= 9
    with pytest.raises(ValueError, match="min_size"):
        random_chunks(1, min_size=0)


# ------------------------------------------------------------------- pairs


@pytest.mark.parametrize("factory", [memory_tls_stream_pair, lockstep_tls_stream_pair])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_pairs_handshake_and_talk(factory: type[TLSStreamPair], version: str) -> None:
    client, server = factory(tls_version=version, alpn_protocols=["echo/1"])  # type: ignore[call-arg]
    await handshake(client, server)
    assert client.version() == f"TLSv{version}"
    assert server.selected_alpn_protocol() == "echo/1"
    assert client.server_hostname == DEFAULT_HOSTNAME
    assert isinstance(client.transport_stream, FaultyStream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"hello")
        assert await server.receive_some() == b"hello"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.aclose)
        assert await server.receive_some() == b""
    await server.aclose()


async def test_pair_with_faults_and_https_compatible(autojump_clock: trio.abc.Clock) -> None:
    client, server = memory_tls_stream_pair(
        https_compatible=True,
        client_faults=FaultPlan(receive_chunks=(7,), send_delays=(0.25,)),
        server_faults=FaultPlan(send_chunks=(11,)),
    )
    assert client.https_compatible
    assert server.https_compatible
    await handshake(client, server)
    assert trio.current_time() > 0
    await server.send_all(b"x" * 1000)
    assert await client.receive_some() == b"x" * 1000
    receives = [
        record.nbytes for record in client.transport_stream.operations if record.kind == "receive"
    ]
    assert max(receives) == 7  # the ciphertext came 7 bytes at a time
    await server.transport_stream.aclose()  # no close_notify: fine in HTTPS mode
    while await client.receive_some():
        pass
    await client.aclose()


async def test_pairs_take_contexts_and_reject_contradictions() -> None:
    client_context, server_context = throwaway_contexts(hostname="other.example")
    client, server = memory_tls_stream_pair(
        client_context=client_context,
        server_context=server_context,
        server_hostname="other.example",
    )
    await handshake(client, server)
    assert client.context is client_context
    await client.aclose()
    await server.aclose()
    with pytest.raises(ValueError, match="tls_version"):
        memory_tls_stream_pair(
            client_context=client_context, server_context=server_context, tls_version="1.2"
        )
    with pytest.raises(ValueError, match="tls_version must be"):
        throwaway_contexts(tls_version="1.1")  # type: ignore[arg-type]


async def test_handshake_raises_the_first_failure_not_a_group() -> None:
    untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts no CA at all
    client, server = memory_tls_stream_pair(client_context=untrusting)
    with pytest.raises(trio.BrokenResourceError) as info:
        await handshake(client, server)
    assert isinstance(info.value.__cause__, ssl.SSLError)
    await client.aclose()
    await server.aclose()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_every_handshake_has_the_same_size(version: Literal["1.2", "1.3"]) -> None:
    """With ECDSA certificates each handshake's size varied, so offsets did not replay."""
    sizes = set()
    for _ in range(8):
        client, server = memory_tls_stream_pair(tls_version=version)
        await handshake(client, server)
        sizes.add(
            (client.statistics().ciphertext_received, server.statistics().ciphertext_received)
        )
        await client.aclose()
        await server.aclose()
    assert len(sizes) == 1, sizes


async def test_a_client_can_trust_several_throwaway_authorities() -> None:
    """Authorities with one shared name made a client trusting two of them fail with one."""
    client_context, _ = throwaway_contexts(hostname="a.example")
    other, _ = throwaway_contexts(hostname="b.example")
    for certificate in other.get_ca_certs(binary_form=True):
        client_context.load_verify_locations(cadata=certificate)
    for hostname in ("a.example", "b.example"):
        _, server_context = throwaway_contexts(hostname=hostname)
        client, server = memory_tls_stream_pair(
            client_context=client_context, server_context=server_context, server_hostname=hostname
        )
        await handshake(client, server)
        await client.aclose()
        await server.aclose()


@pytest.mark.parametrize("hostname", ["bücher.example", "127.0.0.1", "::1"])
async def test_throwaway_certificates_for_any_host_name(hostname: str) -> None:
    client, server = memory_tls_stream_pair(server_hostname=hostname)
    await handshake(client, server)
    assert server.version() == "TLSv1.3"
    await client.aclose()
    await server.aclose()


async def test_handshake_raises_an_injected_error_not_a_group() -> None:
    client, server = memory_tls_stream_pair(
        server_faults=FaultPlan(raise_at_operation=0, error=ConnectionResetError)
    )
    # The transport's error surfaces as the stream reports any transport
    # failure: BrokenResourceError chained from it, bare, not in a group.
    with pytest.raises(trio.BrokenResourceError, match="injected fault") as caught:
        await handshake(client, server)
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    await client.aclose()
    await server.aclose()


async def test_handshake_can_be_cancelled(autojump_clock: trio.abc.Clock) -> None:
    client, server = memory_tls_stream_pair(server_faults=FaultPlan(receive_delays=(100,)))
    with trio.move_on_after(1) as scope:
        await handshake(client, server)
    assert scope.cancelled_caught
    await handshake(client, server)  # both were waiting for bytes: they resume
    await client.aclose()
    await server.aclose()


def test_engine_pair() -> None:
    client, server = tls_engine_pair(tls_version="1.2")
    assert isinstance(client, TLSEngine)
    for _ in range(4):
        client.do_handshake()
        if client.bytes_to_send:
            server.receive_data(client.data_to_send())
        server.do_handshake()
        if server.bytes_to_send:
            client.receive_data(server.data_to_send())
    assert client.handshake_complete
    assert server.ssl_object.version() == "TLSv1.2"


# --------------------------------------------------------- schedules, cancels


async def test_schedules_pause_in_turn(autojump_clock: trio.abc.Clock) -> None:
    schedule = TaskSchedule((Pause(sleep=1.0), Pause(checkpoints=2)))
    start = trio.current_time()
    for step in range(4):
        await schedule.pause(step)
    assert trio.current_time() - start == pytest.approx(2.0)
    await TaskSchedule().pause(0)
    with pytest.raises(ValueError, match="Pause"):
        Pause(checkpoints=-1)


async def test_cancel_points(autojump_clock: trio.abc.Clock) -> None:
    with CancelPoint().arm() as scope:
        await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught

    start = trio.current_time()
    with CancelPoint(after_seconds=2.5).arm() as scope:
        await trio.sleep(10)
    assert trio.current_time() - start == pytest.approx(2.5)

    sender, _ = faulty_pair()
    with CancelPoint(at_operation=2).arm(sender) as scope:
        for _ in range(5):
            await sender.send_all(b"x")
    assert len(sender.operations) == 3
    with pytest.raises(ValueError, match="FaultyStream"):
        CancelPoint(at_operation=0).arm()
    with pytest.raises(ValueError, match="at least 0"):
        CancelPoint(after_seconds=-1)


# --------------------------------------------------------------- strategies


@given(plan=fault_plans())
def test_default_fault_plans_keep_data_intact(plan: FaultPlan) -> None:
    assert plan.corrupt_sent == plan.corrupt_received == ()
    assert plan.eof_sent_at is plan.eof_received_at is None
    assert plan.hang_sent_at is plan.hang_received_at is plan.hang_at_operation is None
    assert plan.raise_at_operation is None
    assert plan.raise_on_send_at is plan.raise_on_receive_at is None


@given(plan=fault_plans(direction_errors=(KeyError, OSError), max_offset=40, max_operation=5))
def test_fault_plans_draw_direction_errors(plan: FaultPlan) -> None:
    assert plan.send_error in (KeyError, OSError)
    assert plan.receive_error in (KeyError, OSError)
    assert plan.send_error_after_bytes <= 40
    if plan.raise_on_send_at is None:
        assert plan.send_error_after_bytes == 0
    assert plan.raise_at_operation is None  # `errors` was not given


@given(st.data())
def test_drawn_direction_errors_can_all_be_drawn(data: st.DataObject) -> None:
    """Every per-direction field can be drawn set (the strategy is not stuck on None)."""
    strategy = fault_plans(direction_errors=(KeyError,), max_offset=3, max_operation=2)
    plan = data.draw(strategy.filter(lambda plan: plan.raise_on_send_at is not None))
    assert plan.send_error is KeyError
    plan = data.draw(strategy.filter(lambda plan: plan.raise_on_receive_at is not None))
    assert plan.receive_error is KeyError


@given(
    plan=fault_plans(
        corrupt_sent=1, corrupt_received=2, eof=True, hangs=True, errors=(OSError,), max_offset=50
    )
)
def test_fault_plans_with_every_fault_are_valid(plan: FaultPlan) -> None:
    assert len(plan.corrupt_sent) <= 1
    assert len(plan.corrupt_received) <= 2
    assert all(corruption.offset <= 50 for corruption in plan.corrupt_received)
    assert plan.error in (OSError, trio.BrokenResourceError)


@given(
    sizes=chunkings(max_size=10, allow_empty=False),
    waits=delays(max_seconds=0.5),
    corruption=corruptions(max_offset=3),
    schedule=task_schedules(max_sleep=0.02),
    point=cancel_points(before_start=False),
    version=tls_versions(),
    payloads=messages(max_size=5),
)
def test_strategies_draw_valid_values(
    sizes: tuple[int, ...],
    waits: tuple[float, ...],
    corruption: Corruption,
    schedule: TaskSchedule,
    point: CancelPoint,
    version: str,
    payloads: list[bytes],
) -> None:
    assert sizes
    assert all(1 <= size <= 10 for size in sizes)
    assert all(0 <= wait <= 0.5 for wait in waits)
    assert corruption.offset <= 3
    assert all(pause.sleep <= 0.02 for pause in schedule.pauses)
    assert point != CancelPoint()
    assert version in ("1.2", "1.3")
    assert all(payloads)


@given(st.data())
def test_strategies_feed_a_real_pair(data: st.DataObject) -> None:
    plan = data.draw(fault_plans(max_delay=0.01))
    payload = data.draw(st.binary(min_size=1, max_size=3000))

    async def main() -> None:
        client, server = memory_tls_stream_pair(client_faults=plan, server_faults=plan)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, payload)
            received = bytearray()
            while len(received) < len(payload):
                received += await server.receive_some()
        assert received == payload
        await client.aclose()
        await server.aclose()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -------------------------------------------- async properties, virtual time

#: Seconds each receive of the delayed pairs below waits (virtual, we hope).
DELAY = 7.0


class ExampleRecord:
    """What one run of an async property saw: its clock and its virtual time."""

    def __init__(self) -> None:
        self.clocks: list[trio.abc.Clock] = []
        self.elapsed: list[float] = []

    async def echo_with_delays(self, payload: bytes) -> None:
        """One example: a pair whose every receive waits DELAY, echoing payload."""
        self.clocks.append(trio.lowlevel.current_clock())
        start = trio.current_time()
        plan = FaultPlan(receive_delays=(DELAY,))
        client, server = memory_tls_stream_pair(client_faults=plan, server_faults=plan)
        async with client, server:
            await handshake(client, server)
            await client.send_all(payload)
            received = bytearray()
            while len(received) < len(payload):
                received += await server.receive_some()
            assert received == payload
        self.elapsed.append(trio.current_time() - start)

    def assert_virtual(self, examples: int) -> None:
        """Each of ``examples`` runs had its own autojump MockClock and paid its delays in it."""
        assert len(self.clocks) == examples
        assert all(isinstance(clock, trio.testing.MockClock) for clock in self.clocks)
        assert all(clock.autojump_threshold == 0 for clock in self.clocks)  # type: ignore[attr-defined]
        assert len({id(clock) for clock in self.clocks}) == examples  # a fresh run each
        # The handshake and the payload's receives each waited DELAY seconds,
        # in whole multiples, as only a virtual clock that jumps can give.
        for elapsed in self.elapsed:
            assert elapsed >= 2 * DELAY
            assert elapsed == pytest.approx(round(elapsed / DELAY) * DELAY)


PROPERTY_RUNS = ExampleRecord()


@settings(max_examples=5, deadline=None)
@given(payload=st.binary(min_size=1, max_size=2000))
@run_in_virtual_time
async def test_an_async_property_runs_each_example_in_virtual_time(payload: bytes) -> None:
    """The documented form: collected by pytest, driven by hypothesis, no pytest-trio run."""
    await PROPERTY_RUNS.echo_with_delays(payload)
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    assert clock.autojump_threshold == 0


def test_the_async_property_above_ran_its_examples_on_their_own_clocks() -> None:
    # Runs after the property above (pytest keeps file order); on its own
    # (pytest -k) there is nothing to check, so it says so instead of passing.
    if not PROPERTY_RUNS.clocks:
        pytest.skip("run together with test_an_async_property_runs_each_example_in_virtual_time")
    PROPERTY_RUNS.assert_virtual(len(PROPERTY_RUNS.clocks))
    assert len(PROPERTY_RUNS.clocks) >= 1


@pytest.mark.parametrize("order", ["below given", "above given"])
def test_run_in_virtual_time_on_either_side_of_given(order: str) -> None:
    record = ExampleRecord()
    strategy = st.binary(min_size=1, max_size=100)
    if order == "below given":

        @settings(max_examples=3, deadline=None, database=None)
        @given(payload=strategy)
        @run_in_virtual_time
        async def prop(payload: bytes) -> None:
            await record.echo_with_delays(payload)

    else:

        @run_in_virtual_time
        @settings(max_examples=3, deadline=None, database=None)
        @given(payload=strategy)
        async def prop(payload: bytes) -> None:
            await record.echo_with_delays(payload)

    assert not inspect.iscoroutinefunction(prop)  # so pytest-trio leaves it alone
    assert not inspect.iscoroutinefunction(prop.hypothesis.inner_test)  # type: ignore[attr-defined]
    prop()
    record.assert_virtual(examples=3)


def test_without_hypothesis_each_call_is_one_run() -> None:
    record = ExampleRecord()
    decorated = run_in_virtual_time(record.echo_with_delays)
    decorated(b"first")
    decorated(payload=b"second")
    record.assert_virtual(examples=2)


def test_a_failing_async_property_is_reported_and_shrunk_by_hypothesis() -> None:
    seen: list[bytes] = []

    @settings(max_examples=50, deadline=None, database=None, derandomize=True)
    @given(payload=st.binary(min_size=1, max_size=50))
    @run_in_virtual_time
    async def prop(payload: bytes) -> None:
        await trio.sleep(300)  # five virtual minutes per example: free
        seen.append(payload)
        assert len(payload) < 3

    with pytest.raises(AssertionError, match=r"assert 3 < 3"):
        prop()
    assert seen[-1] == bytes(3)  # hypothesis's shrunk example, replayed last


def test_a_hang_fails_at_the_virtual_timeout() -> None:
    ran = ExampleRecord()

    @run_in_virtual_time(timeout=90)
    async def hangs() -> None:
        ran.clocks.append(trio.lowlevel.current_clock())
        await trio.sleep_forever()

    with pytest.raises(AssertionError, match=r"hangs did not finish within 90 virtual seconds"):
        hangs()
    (clock,) = ran.clocks
    assert clock.current_time() == pytest.approx(90)


def test_run_in_virtual_time_refuses_what_it_cannot_run() -> None:
    def synchronous() -> None:
        pass

    with pytest.raises(TypeError, match="runs an async def test"):
        run_in_virtual_time(synchronous)
    with pytest.raises(ValueError, match="positive number of virtual seconds"):
        run_in_virtual_time(timeout=0)
    with pytest.raises(ValueError, match="positive number of virtual seconds"):
        run_in_virtual_time(timeout=float("nan"))


# ------------------------------------------------------- a runtime module


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_importing_the_kit_imports_no_test_tools() -> None:
    result = run_python(
        """
        import sys
        import trio_membio.testing
        loaded = {"pytest", "hypothesis", "trustme", "cryptography"} & set(sys.modules)
        assert not loaded, loaded
        """
    )
    assert result.returncode == 0, result.stderr


def test_the_kit_works_without_pytest() -> None:
    result = run_python(
        """
        import sys
        sys.modules["pytest"] = sys.modules["_pytest"] = None
        import trio
        from trio_membio.testing import FaultPlan, handshake, memory_tls_stream_pair

        async def main():
            client, server = memory_tls_stream_pair(client_faults=FaultPlan(receive_chunks=(3,)))
            await handshake(client, server)
            await server.send_all(b"ok")
            print((await client.receive_some()).decode())

        trio.run(main)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_missing_extras_name_the_install_command() -> None:
    result = run_python(
        """
        import sys
        sys.modules["hypothesis"] = None
        sys.modules["cryptography"] = None
        import trio_membio.testing as kit
        try:
            kit.throwaway_contexts()
        except ImportError as exc:
            print(exc)
        try:
            import trio_membio.testing.strategies
        except ImportError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert all("pip install 'trio-membio[test]'" in line for line in lines)
    assert "cryptography" in lines[0]
    assert "hypothesis" in lines[1]
