"""FaultyStream: a transport wrapper that injects deterministic faults.

Theory of operation
===================

A :class:`FaultyStream` sits between a :class:`~trio_membio.MemoryBIOStream`
and its real transport and misbehaves exactly as a :class:`FaultPlan` says.
The plan is plain data (offsets, sizes, delays), so hypothesis can generate
it and a failing example can be printed and replayed.

Positions. The wrapper counts two byte streams: the *sent* stream (every byte
handed to :meth:`FaultyStream.send_all`, in order) and the *received* stream
(every byte the inner transport delivered to :meth:`FaultyStream.receive_some`).
It also counts *operations*: each call of ``send_all``, ``receive_some``,
``wait_send_all_might_not_block`` and ``send_eof``. Every offset and operation
number in a plan is counted from the moment the plan was installed (with the
constructor or :meth:`FaultyStream.install`), so a plan installed after the
handshake talks about application data only.

Faults, per direction:

- *chunking*: ``send_chunks`` cuts each send into pieces of these sizes (each
  piece is a separate inner ``send_all``); ``receive_chunks`` caps what each
  ``receive_some`` returns. Both lists are used in turn, cyclically.
- *delays*: ``send_delays`` / ``receive_delays`` are seconds to sleep before each
  piece is sent / before each receive, in turn, cyclically. Use them under
  trio's autojump clock (:class:`trio.testing.MockClock`), where they cost no
  real time. A delay never loses data: a receive sleeps before it takes
  anything from the inner stream.
- *corruption*: a :class:`Corruption` changes one byte at a sent or received
  offset.
- *end of stream*: ``eof_sent_at`` = k delivers bytes ``[0, k)`` of the sent
  stream, then ends the inner stream's sending side (``send_eof``) and
  silently drops everything sent afterwards, as an attacker who cuts the
  connection would; ``eof_received_at`` = k returns bytes ``[0, k)`` and then
  ``b""`` forever.
- *hangs*: ``hang_sent_at`` / ``hang_received_at`` = k lets bytes ``[0, k)``
  through, then every later call in that direction (``send_eof`` included)
  blocks until it is cancelled, the stream is closed or another plan is
  installed; ``hang_at_operation`` = n blocks only the n-th operation.
- *errors*: ``raise_at_operation`` = n makes the n-th operation raise
  ``error(message)`` (once). Per direction, ``raise_on_send_at`` = n makes the
  n-th operation of the sending direction (``send_all``,
  ``wait_send_all_might_not_block`` and ``send_eof`` share one count) raise
  ``send_error(message)``, and ``raise_on_receive_at`` = n makes the n-th
  ``receive_some`` raise ``receive_error(message)``, each once. The error
  types may be any exception class (``OSError``, ``ConnectionResetError``,
  ``KeyError``, :exc:`trio.ClosedResourceError`, ...), as a real or buggy
  transport would raise. With ``send_error_after_bytes`` = k the failing
  ``send_all`` first delivers the first k bytes of its data (all of it if it
  has fewer), then raises: a partial write that fails. An injected receive
  error takes nothing from the wrapped stream, so nothing is lost; the
  operation's record says :attr:`Outcome.INJECTED`.

Blocking for a hang or a delay ends with :exc:`trio.ClosedResourceError` as
soon as :meth:`FaultyStream.aclose` is called, as a real transport wakes its
blocked tasks when it is closed. Everything that is not a fault is passed
through unchanged, so a FaultyStream with an empty plan is transparent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import trio

from ._plan import Corruption, FaultPlan, OperationRecord, Outcome

__all__ = ["FaultyStream"]


class _Guard:
    """Raise BusyResourceError when two tasks overlap in one direction."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(
                f"another task is already {self._what} on this FaultyStream"
            )
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._busy = False


class _Cycle:
    """Yields the items of a tuple in turn, forever; ``None`` when it is empty."""

    def __init__(self, items: Sequence[float]) -> None:
        self._items = items
        self._next = 0

    def next(self) -> float | None:
        if not self._items:
            return None
        item = self._items[self._next % len(self._items)]
        self._next += 1
        return item


class FaultyStream(trio.abc.HalfCloseableStream):
    """A stream that passes everything to ``transport_stream``, except the faults in ``plan``.

    Args:
        transport_stream: The stream to wrap. ``eof_sent_at`` needs it to have
            ``send_eof`` (trio's memory and lockstep stream pairs do).
        plan: The faults; None (the default) is the empty, transparent plan.

    Every public method keeps trio's stream contract: it is a checkpoint, two
    tasks sending (or receiving) at once get :exc:`trio.BusyResourceError`,
    and after :meth:`aclose` everything raises :exc:`trio.ClosedResourceError`.

    Attributes:
        operations: Every operation so far, with its outcome.
        faults: A line per fault injected so far, for assertion messages.
        bytes_sent: Bytes handed to send_all since creation (dropped ones too).
        bytes_received: Bytes received from the inner stream since creation.
        bytes_dropped: Bytes sent after ``eof_sent_at`` ended the stream.
    """

    def __init__(self, transport_stream: trio.abc.Stream, plan: FaultPlan | None = None) -> None:
        self._inner = transport_stream
        self.operations: list[OperationRecord] = []
        self.faults: list[str] = []
        self.bytes_sent: int = 0
        self.bytes_received: int = 0
        self.bytes_dropped: int = 0
        self._closed = False
        self._closed_event = trio.Event()
        # Set (and replaced) by install() and aclose(): ends hangs.
        self._hang_over = trio.Event()
        self._send_guard = _Guard("sending")
        self._receive_guard = _Guard("receiving")
        self._cancel_at: tuple[int, trio.CancelScope] | None = None
        # Set by _begin() for a send_all that must fail after a prefix.
        self._failing_send: str | None = None
        self._send_ended = False
        self._eof_sent_by_caller = False
        self._receive_ended = False
        self.install(plan or FaultPlan())

    # ------------------------------------------------------------ the plan

    @property
    def transport_stream(self) -> trio.abc.Stream:
        """The wrapped stream."""
        return self._inner

    @property
    def plan(self) -> FaultPlan:
        """The plan in force."""
        return self._plan

    def install(self, plan: FaultPlan) -> None:
        """Replace the plan; its offsets and operation numbers count from now.

        An end of stream that already happened stays in force; a hang lasts
        only as long as the plan that caused it: a call blocked by one goes on
        under the new plan.

        Raises:
            TypeError: the plan ends the sent stream but the wrapped stream
                has no ``send_eof``.
        """
        if plan.eof_sent_at is not None and not isinstance(
            self._inner, trio.abc.HalfCloseableStream
        ):
            raise TypeError("eof_sent_at needs a wrapped stream with send_eof()")
        self._plan = plan
        self._sent_origin = self.bytes_sent
        self._received_origin = self.bytes_received
        self._operation_origin = len(self.operations)
        self._send_operations = 0  # sending-direction operations since install
        self._receive_operations = 0  # receive_some calls since install
        self._send_chunks = _Cycle(plan.send_chunks)
        self._receive_chunks = _Cycle(plan.receive_chunks)
        self._send_delays = _Cycle(plan.send_delays)
        self._receive_delays = _Cycle(plan.receive_delays)
        hang_over, self._hang_over = self._hang_over, trio.Event()
        hang_over.set()

    def cancel_at(self, scope: trio.CancelScope, operations_from_now: int = 0) -> None:
        """Cancel ``scope`` just before the inner stream sees an operation.

        ``operations_from_now`` = 0 means the next operation. The cancelled
        operation then raises :exc:`trio.Cancelled` at its first checkpoint,
        before any byte moves (if ``scope`` covers the task running it).
        """
        if operations_from_now < 0:
            raise ValueError("operations_from_now must be at least 0")
        self._cancel_at = (len(self.operations) + operations_from_now, scope)

    @property
    def sent_since_install(self) -> int:
        """Bytes of the sent stream since the plan was installed."""
        return self.bytes_sent - self._sent_origin

    @property
    def received_since_install(self) -> int:
        """Bytes of the received stream since the plan was installed."""
        return self.bytes_received - self._received_origin

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    @property
    def send_ended(self) -> bool:
        """Whether ``eof_sent_at`` has ended the sent stream."""
        return self._send_ended

    # ----------------------------------------------------------- operations

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` through the plan's send faults.

        On cancellation an unknown prefix of ``data`` was sent, as for any
        trio stream.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed.
            trio.BrokenResourceError: the inner stream broke.
            Exception: the plan's ``error`` at ``raise_at_operation``, or its
                ``send_error`` at ``raise_on_send_at`` (after
                ``send_error_after_bytes`` bytes went through).
        """
        with self._send_guard:
            async with self._operation("send") as record:
                if self._eof_sent_by_caller:
                    raise trio.ClosedResourceError("send_eof() was called on this FaultyStream")
                view = memoryview(bytes(data))
                failure = self._failing_send
                if failure is None:
                    await self._send(view, record)
                    return
                self._failing_send = None
                await self._send(view[: self._plan.send_error_after_bytes], record)
                record.outcome = Outcome.INJECTED
                error = self._plan.send_error
                self.faults.append(
                    f"raised {error.__name__} at {failure} after {record.nbytes} bytes"
                )
                raise error(f"injected fault: {failure} after {record.nbytes} bytes")

    async def _send(self, view: memoryview, record: OperationRecord) -> None:
        plan = self._plan
        yielded = False
        while view:
            position = self.sent_since_install
            if plan.eof_sent_at is not None and position >= plan.eof_sent_at:
                await self._end_send()
            if self._send_ended:
                self.faults.append(f"dropped {len(view)} bytes sent after the end of stream")
                self.bytes_sent += len(view)
                self.bytes_dropped += len(view)
                break
            if plan.hang_sent_at is not None and position >= plan.hang_sent_at:
                await self._hang(f"send hangs at byte {position}")
                plan = self._plan  # a new plan ended the hang
                continue
            size = len(view)
            chunk = self._send_chunks.next()
            if chunk is not None:
                size = min(size, int(chunk))
            for boundary in (plan.eof_sent_at, plan.hang_sent_at):
                if boundary is not None and boundary > position:
                    size = min(size, boundary - position)
            delay = self._send_delays.next()
            if delay:
                await self._sleep(delay)
                yielded = True
            piece = _corrupt(view[:size], position, plan.corrupt_sent, self.faults, "sent")
            await self._inner.send_all(piece)
            yielded = True
            record.nbytes += size
            self.bytes_sent += size
            view = view[size:]
            if plan.eof_sent_at is not None and self.sent_since_install >= plan.eof_sent_at:
                # The cut point is reached: the peer sees the end now, not
                # only when something more is sent.
                await self._end_send()
        if not yielded:
            await trio.lowlevel.checkpoint()

    async def _end_send(self) -> None:
        if self._send_ended:
            return
        self._send_ended = True
        self.faults.append(f"sent stream ended at byte {self.sent_since_install}")
        inner = self._inner
        assert isinstance(inner, trio.abc.HalfCloseableStream)
        await inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Receive through the plan's receive faults.

        On cancellation nothing was received (nothing is lost).

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: this stream was closed.
            trio.BrokenResourceError: the inner stream broke.
            Exception: the plan's ``error`` at ``raise_at_operation``, or its
                ``receive_error`` at ``raise_on_receive_at``.
        """
        with self._receive_guard:
            async with self._operation("receive") as record:
                data = await self._receive(max_bytes)
                record.nbytes = len(data)
            return data

    async def _receive(self, max_bytes: int | None) -> bytes | bytearray:
        plan = self._plan
        delay = self._receive_delays.next()
        if delay:
            await self._sleep(delay)
        position = self.received_since_install
        if self._receive_ended:
            await trio.lowlevel.checkpoint()
            return b""
        if plan.eof_received_at is not None and position >= plan.eof_received_at:
            self._receive_ended = True
            self.faults.append(f"received stream ended at byte {position}")
            await trio.lowlevel.checkpoint()
            return b""
        if plan.hang_received_at is not None and position >= plan.hang_received_at:
            await self._hang(f"receive hangs at byte {position}")
            return await self._receive(max_bytes)  # a new plan ended the hang
        limit = max_bytes
        chunk = self._receive_chunks.next()
        if chunk is not None:
            limit = int(chunk) if limit is None else min(limit, int(chunk))
        for boundary in (plan.eof_received_at, plan.hang_received_at):
            if boundary is not None and boundary > position:
                limit = boundary - position if limit is None else min(limit, boundary - position)
        data = await self._inner.receive_some(limit)
        if data:
            self.bytes_received += len(data)
            data = _corrupt(
                memoryview(data), position, plan.corrupt_received, self.faults, "received"
            )
        return data

    async def wait_send_all_might_not_block(self) -> None:
        """Pass through (only ``raise_at_operation``, ``raise_on_send_at`` and
        ``hang_at_operation`` apply).

        Cancelling it loses nothing.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed.
            trio.BrokenResourceError: the inner stream broke.
            Exception: the plan's ``error`` at ``raise_at_operation``, or its
                ``send_error`` at ``raise_on_send_at``.
        """
        with self._send_guard:
            async with self._operation("wait"):
                await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """End the sending side (does nothing if ``eof_sent_at`` already did).

        Afterwards send_all() raises :exc:`trio.ClosedResourceError`. On
        cancellation the wrapped stream's ``send_eof`` decides; trio's memory
        streams end the sending side anyway.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed.
            TypeError: the wrapped stream has no ``send_eof``.
            Exception: the plan's ``error`` at ``raise_at_operation``, or its
                ``send_error`` at ``raise_on_send_at``.
        """
        with self._send_guard:
            async with self._operation("send_eof"):
                inner = self._inner
                while (
                    not self._send_ended
                    and (hang := self._plan.hang_sent_at) is not None
                    and self.sent_since_install >= hang
                ):
                    # The end of stream is part of the sending direction too.
                    await self._hang(f"send_eof hangs at byte {self.sent_since_install}")
                if self._send_ended:
                    self._eof_sent_by_caller = True
                    await trio.lowlevel.checkpoint()
                elif isinstance(inner, trio.abc.HalfCloseableStream):
                    self._send_ended = self._eof_sent_by_caller = True
                    await inner.send_eof()
                else:
                    raise TypeError(f"{type(inner).__name__} has no send_eof()")

    async def aclose(self) -> None:
        """Close this stream and the wrapped one; wake any task it holds blocked.

        On cancellation the wrapped stream is still closed (as trio's own
        streams do) and Cancelled is raised.
        """
        if not self._closed:
            self._closed = True
            self._closed_event.set()
            self._hang_over.set()
            self.faults.append("closed")
        await self._inner.aclose()

    # -------------------------------------------------------------- helpers

    @contextlib.asynccontextmanager
    async def _operation(self, kind: str) -> AsyncIterator[OperationRecord]:
        """Record one operation, apply its operation-numbered faults, note how it ended."""
        record = await self._begin(kind)
        try:
            yield record
        except BaseException as exc:
            if record.outcome is Outcome.RUNNING:
                record.outcome = _outcome_of(exc)
            raise
        record.outcome = Outcome.OK

    async def _begin(self, kind: str) -> OperationRecord:
        """Record an operation and apply the operation-numbered faults."""
        index = len(self.operations)
        record = OperationRecord(kind, index)
        self.operations.append(record)
        cancel_at = self._cancel_at
        if cancel_at is not None and cancel_at[0] == index:
            self._cancel_at = None
            self.faults.append(f"cancelled at operation {index} ({kind})")
            cancel_at[1].cancel()
        try:
            if self._closed:
                raise trio.ClosedResourceError("this FaultyStream was closed")
            # Whatever the wrapped stream does first (trio's lockstep streams
            # hand the data over before their first checkpoint), a cancelled
            # operation stops here, before anything reaches it.
            await trio.lowlevel.checkpoint_if_cancelled()
            relative = index - self._operation_origin
            plan = self._plan
            if plan.raise_at_operation == relative:
                await trio.lowlevel.checkpoint()
                self.faults.append(f"raised {plan.error.__name__} at operation {relative} ({kind})")
                record.outcome = Outcome.INJECTED
                raise plan.error(f"injected fault: operation {relative} ({kind}) failed")
            await self._raise_per_direction(kind, record)
            if plan.hang_at_operation == relative:
                await self._hang(f"operation {relative} ({kind}) hangs")
        except BaseException as exc:
            if record.outcome is Outcome.RUNNING:
                record.outcome = _outcome_of(exc)
            raise
        return record

    async def _raise_per_direction(self, kind: str, record: OperationRecord) -> None:
        """Apply ``raise_on_send_at`` / ``raise_on_receive_at`` to this operation."""
        plan = self._plan
        if kind == "receive":
            number = self._receive_operations
            self._receive_operations += 1
            if plan.raise_on_receive_at != number:
                return
            error = plan.receive_error
            what = f"receive operation {number} ({kind}) failed"
        else:
            number = self._send_operations
            self._send_operations += 1
            if plan.raise_on_send_at != number:
                return
            error = plan.send_error
            what = f"send operation {number} ({kind}) failed"
            if kind == "send" and plan.send_error_after_bytes:
                # send_all() delivers its prefix first, then raises.
                self._failing_send = what
                return
        await trio.lowlevel.checkpoint()
        self.faults.append(f"raised {error.__name__} at {what}")
        record.outcome = Outcome.INJECTED
        raise error(f"injected fault: {what}")

    async def _sleep(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._closed_event.wait()
        if self._closed:
            raise trio.ClosedResourceError("this FaultyStream was closed")

    async def _hang(self, what: str) -> None:
        """Block until the stream is closed (raise) or a new plan is installed (return)."""
        self.faults.append(what)
        await self._hang_over.wait()
        if self._closed:
            raise trio.ClosedResourceError("this FaultyStream was closed")


def _outcome_of(exc: BaseException) -> Outcome:
    if isinstance(exc, trio.Cancelled):
        return Outcome.CANCELLED
    return Outcome.FAILED


def _corrupt(
    view: memoryview,
    position: int,
    corruptions: tuple[Corruption, ...],
    log: list[str],
    direction: str,
) -> bytes:
    """``view`` (which starts at ``position``) with the corruptions that fall in it."""
    end = position + len(view)
    hits = [corruption for corruption in corruptions if position <= corruption.offset < end]
    if not hits:
        return bytes(view)
    data = bytearray(view)
    for corruption in hits:
        index = corruption.offset - position
        before = data[index]
        data[index] = corruption.apply(before)
        log.append(f"{direction} byte {corruption.offset}: {before:#04x} -> {data[index]:#04x}")
    return bytes(data)
