"""Properties of MemoryBIOStream under generated faults, schedules and cancellations.

Each test is a synchronous hypothesis test whose examples each run a fresh
``trio.run`` under the autojump clock (``MockClock(autojump_threshold=0)``)
and a virtual deadline, so a hang fails the example (trio.TooSlowError)
instead of the test run. Every example also checks that no warning (a
ResourceWarning in particular) was emitted and that every stream closes.

The number of examples comes from the hypothesis profile (tests/conftest.py):
a few derandomized ones by default, 10,000 with HYPOTHESIS_PROFILE=fuzz.
"""

from __future__ import annotations

import contextlib
import gc
import ssl
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, get_args

import pytest
import trio
import trio.testing
from hypothesis import event, example, given
from hypothesis import strategies as st

from trio_membio import MemoryBIOStream, TLSTruncationError
from trio_membio.testing import (
    CancelPoint,
    Corruption,
    FaultPlan,
    FaultyStream,
    Outcome,
    TaskSchedule,
    TLSStreamPair,
    TLSVersion,
    handshake,
    lockstep_tls_stream_pair,
    memory_tls_stream_pair,
)
from trio_membio.testing.strategies import (
    cancel_points,
    chunkings,
    fault_plans,
    messages,
    task_schedules,
    tls_versions,
)

from .helpers import StreamOperation, aclose_all

Stream = MemoryBIOStream[FaultyStream]
#: Virtual seconds an example may take: far beyond any delay it draws.
DEADLINE = 3600.0
#: Real seconds an example may take (the slowest take about one).
REAL_TIME_LIMIT = 120.0
RECEIVE_SIZES = st.none() | st.integers(min_value=1, max_value=20_000)


class RealTimeWatchdog(trio.abc.Instrument):
    """Cancel a run that goes on in real time while the virtual clock cannot jump.

    A hang where every task is blocked ends at the virtual deadline; tasks
    that keep each other runnable forever would not, so this ends them.
    """

    def __init__(self, seconds: float) -> None:
        self.limit = time.monotonic() + seconds
        self.scope: trio.CancelScope | None = None
        self.fired = False

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if not self.fired and self.scope is not None and time.monotonic() > self.limit:
            self.fired = True
            self.scope.cancel()


def run_example(body: Callable[[], Awaitable[None]]) -> None:
    """Run one example under the autojump clock; fail on a hang, a busy loop or any warning."""
    watchdog = RealTimeWatchdog(REAL_TIME_LIMIT)

    async def main() -> None:
        with trio.fail_after(DEADLINE) as scope:
            watchdog.scope = scope
            await body()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trio.run(
                main, clock=trio.testing.MockClock(autojump_threshold=0), instruments=[watchdog]
            )
        except trio.TooSlowError:
            if watchdog.fired:
                raise AssertionError(
                    f"still running after {REAL_TIME_LIMIT} s of real time: tasks that never block"
                ) from None
            raise
        gc.collect(1)  # young objects: a full collection per example grows with the run
    assert [str(warning.message) for warning in caught] == []


def make_pair(lockstep: bool, **kwargs: object) -> TLSStreamPair:
    factory = lockstep_tls_stream_pair if lockstep else memory_tls_stream_pair
    return factory(**kwargs)  # type: ignore[arg-type]  # forwarded keywords


async def send_messages(stream: Stream, payloads: Sequence[bytes], schedule: TaskSchedule) -> None:
    for step, payload in enumerate(payloads):
        await schedule.pause(step)
        await stream.send_all(payload)


async def receive_on_schedule(
    stream: Stream,
    size: int,
    max_bytes: int | None,
    schedule: TaskSchedule,
    into: bytearray,
) -> None:
    step = 0
    while len(into) < size:
        await schedule.pause(step)
        step += 1
        data = await stream.receive_some(max_bytes)
        assert data, f"end of stream after {len(into)} of {size} bytes"
        into += data


# ------------------------------------------------------- 1. fragmentation


@given(
    version=tls_versions(),
    lockstep=st.booleans(),
    client_plan=fault_plans(max_chunk=700, max_delay=0.2),
    server_plan=fault_plans(max_chunk=700, max_delay=0.2),
    to_server=messages(),
    to_client=messages(),
    max_bytes=RECEIVE_SIZES,
)
@example(  # found by the fuzz campaign: close_notify byte by byte takes over 1 s
    version="1.3",
    lockstep=True,
    client_plan=FaultPlan(send_chunks=(1,)),
    server_plan=FaultPlan(receive_delays=(0.044,)),
    to_server=[],
    to_client=[],
    max_bytes=None,
)
def test_any_fragmentation_delivers_the_same_plaintext(
    version: TLSVersion,
    lockstep: bool,
    client_plan: FaultPlan,
    server_plan: FaultPlan,
    to_server: list[bytes],
    to_client: list[bytes],
    max_bytes: int | None,
) -> None:
    """However the ciphertext is cut up and delayed, the plaintext arrives whole, in order."""

    async def body() -> None:
        client, server = make_pair(
            lockstep, tls_version=version, client_faults=client_plan, server_faults=server_plan
        )
        at_server, at_client = bytearray(), bytearray()
        idle = TaskSchedule()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_messages, client, to_server, idle)
            nursery.start_soon(send_messages, server, to_client, idle)
            nursery.start_soon(
                receive_on_schedule, server, sum(map(len, to_server)), max_bytes, idle, at_server
            )
            nursery.start_soon(
                receive_on_schedule, client, sum(map(len, to_client)), max_bytes, idle, at_client
            )
        assert at_server == b"".join(to_server)
        assert at_client == b"".join(to_client)
        await handshake(client, server)  # if no data made it happen
        assert client.version() == f"TLSv{version}"
        # The close_notify alerts are cut up too, and still end the stream
        # cleanly. (Not with aclose(), which gives close_notify a second to
        # go out: on a transport slow enough, the peer sees truncation, as
        # documented. The example below is one such transport.)
        transports = client.transport_stream, server.transport_stream  # None after unwrap()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.unwrap)
            assert await server.receive_some(max_bytes) == b""
            await server.unwrap()
        await aclose_all(*transports)

    run_example(body)


async def test_aclose_gives_close_notify_one_second(autojump_clock: trio.abc.Clock) -> None:
    """The fuzz campaign's example for the test above, with aclose(): as documented.

    aclose() waits at most a second for the transport to take close_notify.
    Here the transport takes it a byte at a time, each taking 44 ms: the
    close_notify is cut short and the peer sees a truncated stream.
    """
    client, server = lockstep_tls_stream_pair(
        client_faults=FaultPlan(send_chunks=(1,)),
        server_faults=FaultPlan(receive_delays=(0.044,)),
    )
    await handshake(client, server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.aclose)
        with pytest.raises(trio.BrokenResourceError, match="truncated"):
            await server.receive_some()
    await server.aclose()


# --------------------------------------------------------- 2. concurrency


@given(
    version=tls_versions(),
    lockstep=st.booleans(),
    client_plan=fault_plans(max_chunk=3000, max_delay=0.05),
    server_plan=fault_plans(max_chunk=3000, max_delay=0.05),
    to_server=messages(max_size=40_000),
    to_client=messages(max_size=40_000),
    schedules=st.lists(task_schedules(), min_size=4, max_size=4),
    max_bytes=RECEIVE_SIZES,
)
def test_concurrent_send_and_receive_in_any_schedule(
    version: TLSVersion,
    lockstep: bool,
    client_plan: FaultPlan,
    server_plan: FaultPlan,
    to_server: list[bytes],
    to_client: list[bytes],
    schedules: list[TaskSchedule],
    max_bytes: int | None,
) -> None:
    """A sender and a receiver on each end, interleaved any way: no conflict, no loss.

    Nobody handshakes explicitly: up to four tasks race to start it.
    """

    async def body() -> None:
        client, server = make_pair(
            lockstep, tls_version=version, client_faults=client_plan, server_faults=server_plan
        )
        at_server, at_client = bytearray(), bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_messages, client, to_server, schedules[0])
            nursery.start_soon(send_messages, server, to_client, schedules[1])
            nursery.start_soon(
                receive_on_schedule,
                server,
                sum(map(len, to_server)),
                max_bytes,
                schedules[2],
                at_server,
            )
            nursery.start_soon(
                receive_on_schedule,
                client,
                sum(map(len, to_client)),
                max_bytes,
                schedules[3],
                at_client,
            )
        assert at_server == b"".join(to_server)
        assert at_client == b"".join(to_client)
        await aclose_all(client, server)

    run_example(body)


SendOperation = Literal["send_all", "wait_send_all_might_not_block"]


@given(
    version=tls_versions(),
    lockstep=st.booleans(),
    handshake_first=st.booleans(),
    first=st.lists(st.binary(min_size=1, max_size=30_000), min_size=1, max_size=5),
    second=st.lists(
        st.tuples(
            st.sampled_from(("send_all", "wait_send_all_might_not_block")),
            st.binary(min_size=1, max_size=30_000),
        ),
        min_size=1,
        max_size=5,
    ),
    schedules=st.lists(task_schedules(max_sleep=0.01), min_size=4, max_size=4),
    server_plan=fault_plans(max_chunk=5000, max_delay=0.01),
)
def test_overlapping_senders_and_receivers_get_busy_resource_error(
    version: TLSVersion,
    lockstep: bool,
    handshake_first: bool,
    first: list[bytes],
    second: list[tuple[SendOperation, bytes]],
    schedules: list[TaskSchedule],
    server_plan: FaultPlan,
) -> None:
    """Two senders (two receivers) at once: exactly the one that overlaps gets BusyResourceError.

    Each task notes when it is inside a call; a call made while the other
    task is inside one must raise BusyResourceError (and change nothing), a
    call made while it is not must succeed. What the accepted sends carried
    arrives whole and in order.
    """

    async def body() -> None:
        client, server = make_pair(lockstep, tls_version=version, server_faults=server_plan)
        if handshake_first:
            await handshake(client, server)
        sending: list[str] = []
        accepted: list[bytes] = []
        receiving: list[str] = []
        receive_ended = [trio.Event()]
        busy: set[str] = set()  # who got BusyResourceError
        received = bytearray()
        ended: set[str] = set()  # the receiver that saw the end of the stream

        async def sender(name: str, operations: list[tuple[SendOperation, bytes]]) -> None:
            schedule = schedules[0 if name == "A" else 1]
            for step, (operation, payload) in enumerate(operations):
                await schedule.pause(step)
                call = (
                    client.send_all(payload)
                    if operation == "send_all"
                    else client.wait_send_all_might_not_block()
                )
                if sending:
                    with pytest.raises(trio.BusyResourceError):
                        await call
                    busy.add("senders")
                    continue
                sending.append(name)
                try:
                    await call
                finally:
                    sending.remove(name)
                if operation == "send_all":
                    accepted.append(payload)

        async def receiver(name: str) -> None:
            schedule = schedules[2 if name == "A" else 3]
            step = 0
            while not ended:
                await schedule.pause(step)
                step += 1
                if ended:
                    break  # the other receiver saw the end meanwhile
                if receiving:
                    with pytest.raises(trio.BusyResourceError):
                        await server.receive_some()
                    busy.add("receivers")
                    await receive_ended[0].wait()  # the other call is still in flight
                    continue
                receiving.append(name)
                try:
                    data = await server.receive_some()
                finally:
                    receiving.remove(name)
                    receive_ended[0].set()
                    receive_ended[0] = trio.Event()
                if not data:
                    ended.add(name)
                received.extend(data)

        async def senders() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender, "A", [("send_all", payload) for payload in first])
                nursery.start_soon(sender, "B", second)
            # If no send_all got through, nothing has run the handshake yet.
            await client.do_handshake()
            await client.aclose()  # close_notify ends the receivers

        async with trio.open_nursery() as nursery:
            nursery.start_soon(senders)
            nursery.start_soon(receiver, "A")
            nursery.start_soon(receiver, "B")
        assert received == b"".join(accepted)
        event(f"BusyResourceError for: {', '.join(sorted(busy)) or 'nobody'}")
        await server.aclose()

    run_example(body)


async def test_a_second_sender_while_the_first_is_blocked_gets_busy_resource_error() -> None:
    """The deterministic core of the property above, for each sending method."""
    client, server = lockstep_tls_stream_pair()
    await handshake(client, server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"x" * 100_000)  # nobody receives yet
        await trio.testing.wait_all_tasks_blocked()
        calls: tuple[Callable[[], Awaitable[None]], ...] = (
            lambda: client.send_all(b"y"),
            client.wait_send_all_might_not_block,
            client.send_eof,
        )
        for call in calls:
            with pytest.raises(trio.BusyResourceError):
                await call()
        received = 0
        while received < 100_000:
            received += len(await server.receive_some())
    await aclose_all(client, server)


# ------------------------------------------------------------ 3. corruption


@given(
    version=tls_versions(),
    server_to_client=st.booleans(),
    payloads=st.lists(st.binary(min_size=1, max_size=20_000), min_size=1, max_size=4),
    corruption=st.builds(
        Corruption,
        offset=st.integers(min_value=0, max_value=1 << 20),
        xor=st.integers(min_value=1, max_value=255),
    ),
    receive_chunks=chunkings(max_size=1000),
    max_bytes=RECEIVE_SIZES,
)
@example(
    version="1.3",
    server_to_client=False,
    payloads=[b"\0" * 100],
    corruption=Corruption(offset=3, xor=0x40),  # the record grows: the receiver waits
    receive_chunks=(),
    max_bytes=None,
)
def test_a_changed_ciphertext_byte_is_detected(
    version: TLSVersion,
    server_to_client: bool,
    payloads: list[bytes],
    corruption: Corruption,
    receive_chunks: tuple[int, ...],
    max_bytes: int | None,
) -> None:
    """One changed byte after the handshake: BrokenResourceError, never altered data.

    The sender sends, then half-closes its transport (its OS would, on exit):
    a corrupted length field can make a record longer than what was sent,
    and then only the end of the connection lets the receiver decide, as
    with any protocol over TCP. The sender then sees the receiver's alert,
    or the end of its stream.
    """
    payload = b"".join(payloads)
    # The ciphertext is longer than the plaintext, so this byte is sent.
    corruption = Corruption(corruption.offset % len(payload), corruption.xor)

    async def body() -> None:
        client, server = memory_tls_stream_pair(tls_version=version)
        await handshake(client, server)
        sender, receiver = (server, client) if server_to_client else (client, server)
        sender.transport_stream.install(FaultPlan(corrupt_sent=(corruption,)))
        receiver.transport_stream.install(FaultPlan(receive_chunks=receive_chunks))
        received = bytearray()

        async def receive_until_error() -> None:
            while True:
                data = await receiver.receive_some(max_bytes)
                assert data, "a clean end of stream after a corrupted byte"
                received.extend(data)
                assert payload.startswith(received), "altered plaintext was returned"

        async def receive_side() -> None:
            with pytest.raises(trio.BrokenResourceError) as info:
                await receive_until_error()
            assert isinstance(info.value.__cause__, ssl.SSLError)
            event(f"receiver: {type(info.value.__cause__).__name__}")
            await receiver.aclose()

        async def send_side() -> None:
            # The receiver closes its end once it has failed, so the sender
            # may find its transport broken: TLS cannot help that.
            with contextlib.suppress(trio.BrokenResourceError):
                for piece in payloads:
                    await sender.send_all(piece)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await sender.transport_stream.send_eof()
            cause: BaseException | None = None
            try:
                data = await sender.receive_some()
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
            else:
                assert data == b""
            assert cause is None or isinstance(cause, ssl.SSLError), cause
            await sender.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_side)
            nursery.start_soon(send_side)
        faults = sender.transport_stream.faults
        assert any(line.startswith("sent byte") for line in faults), faults

    run_example(body)


# ---------------------------------------------------------- 4. truncation


@given(
    version=tls_versions(),
    https_compatible=st.booleans(),
    server_sends=st.booleans(),
    payloads=messages(max_messages=4, max_size=20_000),
    cut=st.integers(min_value=0, max_value=30_000),
    receive_chunks=chunkings(max_size=1000),
    max_bytes=RECEIVE_SIZES,
)
def test_ending_the_transport_at_any_byte(
    version: TLSVersion,
    https_compatible: bool,
    server_sends: bool,
    payloads: list[bytes],
    cut: int,
    receive_chunks: tuple[int, ...],
    max_bytes: int | None,
) -> None:
    """The transport ends at byte ``cut`` of one direction (handshake included).

    Strict mode: if anything was cut off, the receiver raises
    BrokenResourceError (chained from TLSTruncationError once its handshake
    is done); if nothing was, it gets everything and a clean ``b""``.
    https_compatible: always a clean ``b""``. Never altered data, never a hang.
    """
    payload = b"".join(payloads)

    async def body() -> None:
        cut_plan = FaultPlan(eof_sent_at=cut)
        chunk_plan = FaultPlan(receive_chunks=receive_chunks)
        client, server = memory_tls_stream_pair(
            tls_version=version,
            https_compatible=https_compatible,
            client_faults=chunk_plan if server_sends else cut_plan,
            server_faults=cut_plan if server_sends else chunk_plan,
        )
        sender, receiver = (server, client) if server_sends else (client, server)
        received = bytearray()
        outcome: list[BaseException | bytes] = []

        async def send_side() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                for piece in payloads:
                    await sender.send_all(piece)
                await sender.do_handshake()  # also when there is nothing to send
            await sender.aclose()

        async def receive_side() -> None:
            try:
                while data := await receiver.receive_some(max_bytes):
                    received.extend(data)
                    assert payload.startswith(received), "altered plaintext was returned"
            except trio.BrokenResourceError as exc:
                outcome.append(exc)
            else:
                outcome.append(b"")
            await receiver.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_side)
            nursery.start_soon(receive_side)
        transport = sender.transport_stream
        truncated = transport.bytes_dropped > 0
        handshook = receiver.statistics().handshake_duration is not None
        event(f"{truncated=}, receiver {handshook=}")
        [result] = outcome
        if https_compatible:
            assert result == b""
            if not truncated:
                assert received == payload
        elif truncated:
            assert isinstance(result, trio.BrokenResourceError), (result, transport.faults)
            if receiver.statistics().handshake_duration is not None:
                assert isinstance(result.__cause__, TLSTruncationError)
        else:
            assert result == b"", (result, transport.faults)
            assert received == payload

    run_example(body)


# ---------------------------------------------------------- 5. cancellation

OPERATIONS: tuple[StreamOperation, ...] = get_args(StreamOperation)
#: Operations that need the handshake done first in this test.
AFTER_HANDSHAKE = {"wait_send_all_might_not_block", "send_eof", "unwrap", "aclose"}


@given(
    operation=st.sampled_from(OPERATIONS),
    version=tls_versions(),
    lockstep=st.booleans(),
    handshake_first=st.booleans(),
    point=cancel_points(max_operation=40, max_seconds=2.0),
    client_plan=fault_plans(max_chunk=4000, max_delay=0.3),
    server_plan=fault_plans(max_chunk=4000, max_delay=0.3),
    payload=st.binary(min_size=1, max_size=100_000),
)
def test_cancelling_any_operation_anywhere(
    operation: StreamOperation,
    version: TLSVersion,
    lockstep: bool,
    handshake_first: bool,
    point: CancelPoint,
    client_plan: FaultPlan,
    server_plan: FaultPlan,
    payload: bytes,
) -> None:
    """Cancel one client operation at a generated point; check its documented outcome.

    Where the cancel landed decides the outcome, as the docstrings say:

    - not in a transport operation (before it started, or not at all):
      nothing changed;
    - in a transport receive: nothing lost, the operation can be retried;
    - in a transport send during the handshake: the stream is broken;
    - in a transport send after it: only sending is broken (send_eof: the
      sending side is closed), receiving works;
    - aclose(): the transport is closed whatever happened.

    Afterwards both ends close, and nothing hangs or warns.
    """
    if operation == "do_handshake":
        handshake_first = False
    if operation in AFTER_HANDSHAKE:
        handshake_first = True
    if operation == "send_eof":
        version = "1.3"

    async def body() -> None:
        client, server = make_pair(
            lockstep, tls_version=version, client_faults=client_plan, server_faults=server_plan
        )
        transport = client.transport_stream
        server_transport = server.transport_stream  # None once the server unwrapped
        drained = bytearray()
        peer_saw_end = trio.Event()
        drained_changed = [trio.Event()]
        payload_sent = trio.Event()

        async def peer() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                if operation == "receive_some":
                    await server.send_all(payload)
                    payload_sent.set()
                while data := await server.receive_some():
                    drained.extend(data)
                    drained_changed[0].set()
                    drained_changed[0] = trio.Event()
                peer_saw_end.set()

        # For unwrap(), a separate task answers the client's close_notify, so
        # that it can be called off before the test itself sends from the
        # server (two senders would conflict).
        responder_scope = trio.CancelScope()
        responder_decided = trio.Event()
        responder_unwraps: list[bool] = []

        async def responder() -> None:
            with responder_scope:
                await peer_saw_end.wait()
                responder_unwraps.append(True)
            responder_decided.set()
            if responder_unwraps:
                with (
                    trio.CancelScope(shield=True, deadline=trio.current_time() + 60),
                    contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                ):
                    await server.unwrap()

        async def expect_receiving_works() -> None:
            if operation == "receive_some":
                rest = bytearray(result if isinstance(result, bytes | bytearray) else b"")
                while len(rest) < len(payload):
                    rest += await client.receive_some()
                assert rest == payload
                await payload_sent.wait()  # before the marker: one sender at a time
            async with trio.open_nursery() as nursery:  # lockstep: both at once
                nursery.start_soon(server.send_all, b"marker")
                assert await client.receive_some() == b"marker"

        async def expect_sending_works() -> None:
            await client.send_all(b"ping")
            while not drained.endswith(b"ping"):
                await drained_changed[0].wait()

        async with trio.open_nursery() as nursery:
            if handshake_first:
                await handshake(client, server)
            nursery.start_soon(peer)
            if operation == "unwrap":
                nursery.start_soon(responder)
            start = len(transport.operations)
            result: object = None
            with point.arm(transport) as scope:
                if operation == "do_handshake":
                    await client.do_handshake()
                elif operation == "send_all":
                    await client.send_all(payload)
                elif operation == "receive_some":
                    result = await client.receive_some()
                elif operation == "wait_send_all_might_not_block":
                    await client.wait_send_all_might_not_block()
                elif operation == "send_eof":
                    await client.send_eof()
                elif operation == "unwrap":
                    result = await client.unwrap()
                else:
                    await client.aclose()
            cancelled = [
                record
                for record in transport.operations[start:]
                if record.outcome is Outcome.CANCELLED
            ]
            assert len(cancelled) <= 1
            where = cancelled[0].kind if cancelled else None
            handshake_done = client.statistics().handshake_duration is not None
            completed = not scope.cancelled_caught
            event(f"{operation}: " + (f"cancelled in {where}" if where else f"{completed=}"))

            if operation == "aclose":
                assert transport.closed
                with pytest.raises(trio.ClosedResourceError):
                    await client.receive_some()
            elif where in {"send", "send_eof"} and not handshake_done:
                # Cancelled while writing the handshake: broken, and it says why.
                for call in (client.do_handshake, client.receive_some):
                    with pytest.raises(trio.BrokenResourceError, match="handshake was cancelled"):
                        await call()
            elif where in {"send", "send_eof"}:
                # Cancelled while writing data or close_notify: only sending is
                # broken (that outranks "send_eof() was called": the first
                # failure is what every later send reports).
                with pytest.raises(trio.BrokenResourceError, match="earlier send"):
                    await client.send_all(b"more")
                if operation == "unwrap":
                    with pytest.raises(trio.BrokenResourceError, match="earlier send"):
                        await client.unwrap()
                    responder_scope.cancel()
                    await responder_decided.wait()
                if responder_unwraps:
                    # Our close_notify got through after all: the server's comes back.
                    assert await client.receive_some() == b""
                else:
                    await expect_receiving_works()
            else:
                # Not cancelled, cancelled before starting, or while waiting
                # for the peer: nothing was lost.
                assert where in {None, "receive", "wait"}, where
                if operation == "do_handshake":
                    await client.do_handshake()
                    await expect_sending_works()
                    await expect_receiving_works()
                elif operation == "send_all":
                    if not completed:
                        await client.send_all(payload)
                    while len(drained) < len(payload):
                        await drained_changed[0].wait()
                    assert drained == payload
                    await expect_receiving_works()
                elif operation == "receive_some":
                    await expect_receiving_works()
                    await expect_sending_works()
                elif operation == "wait_send_all_might_not_block":
                    await expect_sending_works()
                    await expect_receiving_works()
                elif operation == "send_eof":
                    if not completed:
                        await client.send_eof()
                    await peer_saw_end.wait()
                    with pytest.raises(trio.ClosedResourceError):
                        await client.send_all(b"more")
                    await expect_receiving_works()
                elif operation == "unwrap":
                    if not completed:
                        result = await client.unwrap()
                    assert isinstance(result, tuple)
                    assert result[0] is transport
                    assert result[1] == b""
                    await transport.aclose()
            nursery.cancel_scope.cancel()
        await aclose_all(client, server, server_transport)
        assert transport.closed

    run_example(body)
