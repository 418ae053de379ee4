"""The fault model of issue 12: every operation x phase x transport fault, with invariants.

Theory of operation
===================

One *cell* is: a client ``MemoryBIOStream`` over a
:class:`~trio_membio.testing.FaultyStream` (over trio's memory or lockstep
stream pair), brought to a *phase* (before the handshake; established; in the
middle of a TLS 1.2 renegotiation started by a pyOpenSSL server; after the
peer's close_notify), then one *operation* run while the transport misbehaves
in one way (a *fault*). The peer runs in background tasks: one that receives
everything and one that sends on demand, so lockstep transports never block
on it.

What every cell asserts, after the operation (the policy decided for issue 12
and DESIGN.md section 3):

1. No hang: everything runs under the autojump clock inside ``fail_after``.
2. A sensible first error: a transport's ``Exception`` surfaces as
   :exc:`trio.BrokenResourceError` whose ``__cause__``/``__context__`` chain
   contains the injected exception (an unasked-for ClosedResourceError too);
   a transport that ends early gives BrokenResourceError; cancellation
   propagates as :exc:`trio.Cancelled`.
3. What broke stays broken, without touching the transport again: every later
   call on a broken direction raises BrokenResourceError (ClosedResourceError
   after ``aclose()``), and the transport's operation log does not grow in
   that direction.
4. The other direction keeps working where the contract says so: a failed or
   cancelled *send* after the handshake breaks only sending (the peer's data
   is still received); a failed *receive* breaks the whole stream; a failure
   while handshake bytes are in flight breaks the whole stream; a cancelled
   receive (or wait) loses nothing and the stream carries on.
5. ``aclose()`` closes the transport promptly.
6. No plaintext lost or duplicated: the peer receives exactly the bytes of the
   ``send_all()`` calls that returned, in order, plus perhaps a prefix of one
   that failed, and never sees a corrupted record ("bad record mac").

The cells are generated from tables (``USES`` says which transport directions
an operation touches in a phase; a fault is only paired with an operation
that reaches it, and each cell checks that its fault really fired). The
cancellation sweep cancels the caller just before each transport operation the
operation makes in a clean run.
"""

from __future__ import annotations

import contextlib
import math
import random
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal, TypeVar

import pytest
import trio
import trio.testing
from OpenSSL import SSL

from trio_membio import HalfCloseNotSupportedError, MemoryBIOStream, TLSTruncationError
from trio_membio._state import Stop, StopKind
from trio_membio.testing import (
    FaultPlan,
    FaultyStream,
    Outcome,
    lockstep_tls_stream_pair,
    memory_tls_stream_pair,
)

from .helpers import HOSTNAME, StreamOperation
from .peers import pyopenssl_context, trio_context
from .transports import DroppingReceiveStream

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

Phase = Literal["handshake", "established", "renegotiating", "after_close_notify"]
TransportKind = Literal["memory", "lockstep"]
Direction = Literal["send", "receive", "wait"]
Scope = Literal["intact", "sending", "receiving", "whole", "closed"]
Stream = MemoryBIOStream[FaultyStream]
TransportT = TypeVar("TransportT", bound=trio.abc.Stream)

PHASES: tuple[Phase, ...] = ("handshake", "established", "renegotiating", "after_close_notify")
TRANSPORTS: tuple[TransportKind, ...] = ("memory", "lockstep")
DEADLINE = 60.0  # virtual seconds for a whole cell: a hang fails, it does not hang
BLOCKED_FOR = 5.0  # virtual seconds before a caller blocked in the transport is cancelled
PAYLOAD = random.Random(1212).randbytes(20_000)  # two TLS records
GREETING = b"greeting from the peer"
STILL_RECEIVING = b"the peer's data after our send failed"
RENEGOTIATION_DATA = b"sent right after the HelloRequest"
AFTER_RENEGOTIATION = b"sent once the renegotiation finished"
CORRUPTION_SIGNS = ("bad record mac", "decryption failed", "wrong version", "record layer failure")
SEND_KINDS = frozenset({"send", "send_eof"})

# Which transport directions an operation uses in a phase (the client's side).
# "wait" is the transport's wait_send_all_might_not_block: a send-direction
# operation that moves no bytes. A fault is only tested where it can fire.
USES: dict[tuple[Phase, StreamOperation], frozenset[Direction]] = {
    ("handshake", "do_handshake"): frozenset({"send", "receive"}),
    ("handshake", "send_all"): frozenset({"send", "receive"}),
    ("handshake", "receive_some"): frozenset({"send", "receive"}),
    ("handshake", "wait_send_all_might_not_block"): frozenset({"wait"}),
    ("handshake", "send_eof"): frozenset({"send", "receive"}),
    ("handshake", "unwrap"): frozenset({"send", "receive"}),
    ("established", "send_all"): frozenset({"send"}),
    ("established", "receive_some"): frozenset({"receive"}),
    ("established", "wait_send_all_might_not_block"): frozenset({"wait"}),
    ("established", "send_eof"): frozenset({"send"}),
    ("established", "unwrap"): frozenset({"send", "receive"}),
    ("established", "aclose"): frozenset({"send"}),
    ("renegotiating", "send_all"): frozenset({"send", "receive"}),
    ("renegotiating", "receive_some"): frozenset({"send", "receive"}),
    ("renegotiating", "wait_send_all_might_not_block"): frozenset({"wait"}),
    # No ("renegotiating", "unwrap"): OpenSSL refuses SSL_shutdown while a
    # handshake is in progress (SHUTDOWN_WHILE_IN_INIT), so unwrap() fails
    # there before it reaches the transport, faults or not.
    ("renegotiating", "aclose"): frozenset({"send"}),
    ("after_close_notify", "send_all"): frozenset({"send"}),
    ("after_close_notify", "wait_send_all_might_not_block"): frozenset({"wait"}),
    ("after_close_notify", "send_eof"): frozenset({"send"}),
    ("after_close_notify", "unwrap"): frozenset({"send"}),
    ("after_close_notify", "aclose"): frozenset({"send"}),
}


@dataclass(frozen=True)
class Fault:
    """One way the client's transport misbehaves, from the moment it is installed."""

    name: str
    direction: Literal["send", "receive"]
    kind: Literal["raise", "end", "block"]
    error: type[Exception] = trio.BrokenResourceError
    after_bytes: int = 0

    def applies_to(self, uses: frozenset[Direction]) -> bool:
        if self.direction == "receive":
            return "receive" in uses
        if self.kind == "block" or self.after_bytes:
            # A blocked wait is tested through hang_at_operation (see plan()).
            return "send" in uses or (self.kind == "block" and "wait" in uses)
        return "send" in uses or "wait" in uses

    def plan(self, uses: frozenset[Direction]) -> FaultPlan:
        if self.kind == "raise" and self.direction == "send":
            return FaultPlan(
                raise_on_send_at=0, send_error=self.error, send_error_after_bytes=self.after_bytes
            )
        if self.kind == "raise":
            return FaultPlan(raise_on_receive_at=0, receive_error=self.error)
        if self.kind == "end":
            return FaultPlan(eof_received_at=0)
        if self.direction == "receive":
            return FaultPlan(hang_received_at=0)
        if uses == {"wait"}:
            # hang_sent_at does not hold the transport's wait; its first
            # (and only) operation is the wait.
            return FaultPlan(hang_at_operation=0)
        return FaultPlan(hang_sent_at=0)


ERRORS: tuple[type[Exception], ...] = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
    KeyError,
)
FAULTS: tuple[Fault, ...] = (
    *(Fault(f"send-raises-{error.__name__}", "send", "raise", error) for error in ERRORS),
    Fault("send-writes-5-bytes-then-raises-OSError", "send", "raise", OSError, after_bytes=5),
    *(Fault(f"receive-raises-{error.__name__}", "receive", "raise", error) for error in ERRORS),
    Fault("receive-returns-eof-early", "receive", "end"),
    Fault("send-blocks-caller-cancelled", "send", "block"),
    Fault("receive-blocks-caller-cancelled", "receive", "block"),
)


# ------------------------------------------------------------------ peers


class StreamPeer:
    """The server as a MemoryBIOStream: one task receives everything, one sends on demand."""

    def __init__(self, server: MemoryBIOStream[trio.abc.Stream]) -> None:
        self.server = server
        self.received = bytearray()
        self.error: BaseException | None = None
        self.done = trio.Event()
        self._to_send, self._sending = trio.open_memory_channel[bytes | None](math.inf)
        self._send_lock = trio.Lock()
        self.answer_close_notify = False  # for our unwrap()

    def send(self, data: bytes | None) -> None:
        """Queue data for the peer to send; None sends close_notify (TLS 1.3 half-close)."""
        self._to_send.send_nowait(data)

    async def run_receiver(self) -> None:
        try:
            while data := await self.server.receive_some():
                self.received += data
            if self.answer_close_notify:
                # Our close_notify: answer it, so that unwrap() can finish.
                async with self._send_lock:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self.server.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.error = exc
        finally:
            self.done.set()

    async def run_sender(self) -> None:
        async for data in self._sending:
            async with self._send_lock:
                try:
                    if data is None:
                        await self.server.send_eof()
                    else:
                        await self.server.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    def corruption_seen(self) -> str | None:
        return _corruption_in(self.error)


class RenegotiatingPeer:
    """A pyOpenSSL TLS 1.2 server over memory BIOs, with a receiving and a sending task."""

    def __init__(self, transport: trio.abc.Stream, context: SSL.Context) -> None:
        self.transport = transport
        self.conn = SSL.Connection(context, None)
        self.conn.set_accept_state()
        self.received = bytearray()
        self.error: BaseException | None = None
        self.done = trio.Event()
        self._sent_after_renegotiation = False
        self._to_send, self._sending = trio.open_memory_channel[bytes](math.inf)
        # With renegotiate_after = n: once n bytes arrived, send a HelloRequest
        # and stop reading until ``resume`` is set (the answer is withheld).
        self.renegotiate_after: int | None = None
        self.resume = trio.Event()

    def pump(self) -> None:
        """Queue whatever OpenSSL has written, for the sending task."""
        with contextlib.suppress(SSL.WantReadError):
            while data := self.conn.bio_read(1 << 20):
                self._to_send.send_nowait(data)

    def start_renegotiation(self) -> None:
        """A HelloRequest, then application data behind it."""
        assert self.conn.renegotiate()
        with contextlib.suppress(SSL.WantReadError):
            self.conn.do_handshake()
        self.conn.send(RENEGOTIATION_DATA)
        self.pump()

    async def run_receiver(self) -> None:
        try:
            while True:
                try:
                    data = await self.transport.receive_some()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if data:
                    self.conn.bio_write(data)
                else:
                    self.conn.bio_shutdown()
                try:
                    while True:
                        self.received += self.conn.recv(65536)
                except SSL.WantReadError:
                    pass
                except SSL.ZeroReturnError:  # our close_notify: answer it
                    with contextlib.suppress(SSL.Error):
                        self.conn.shutdown()
                    self.pump()
                    return
                except SSL.Error as exc:
                    self.error = exc
                    return
                if (
                    self.renegotiate_after is not None
                    and len(self.received) >= self.renegotiate_after
                ):
                    self.renegotiate_after = None
                    assert self.conn.renegotiate()
                    with contextlib.suppress(SSL.WantReadError):
                        self.conn.do_handshake()
                    self.pump()
                    await self.resume.wait()
                if (
                    not self._sent_after_renegotiation
                    and self.conn.total_renegotiations() >= 1
                    and not self.conn.renegotiate_pending()
                ):
                    self._sent_after_renegotiation = True
                    self.conn.send(AFTER_RENEGOTIATION)
                self.pump()
                if not data:
                    return
        finally:
            self.done.set()

    async def run_sender(self) -> None:
        async for data in self._sending:
            try:
                await self.transport.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    def corruption_seen(self) -> str | None:
        if self.error is None:
            return None
        text = str(self.error).lower()
        return text if any(sign in text for sign in CORRUPTION_SIGNS) else None


def _chain(error: BaseException | None) -> list[BaseException]:
    links: list[BaseException] = []
    while error is not None and error not in links:
        links.append(error)
        error = error.__cause__ or error.__context__
    return links


def _corruption_in(error: BaseException | None) -> str | None:
    """A description if the peer's error says it received a corrupted record."""
    for link in _chain(error):
        if isinstance(link, TLSTruncationError | ssl.SSLEOFError):
            return None
        text = str(link).lower()
        if any(sign in text for sign in CORRUPTION_SIGNS):
            return repr(link)
    return None


@cache
def _renegotiation_server_context(directory: str) -> SSL.Context:
    return pyopenssl_context("server", Path(directory))


# ------------------------------------------------------------------- a cell


@dataclass
class Cell:
    """The client under test, its peer, and what the client's calls completed."""

    phase: Phase
    operation: StreamOperation
    client: Stream
    peer: StreamPeer | RenegotiatingPeer
    nursery: trio.Nursery
    sent: list[bytes] = field(default_factory=list)  # send_all() calls that returned
    failed_send: bytes = b""  # the one that raised or was cancelled, if any
    received: bytearray = field(default_factory=bytearray)
    expected_from_peer: bytearray = field(default_factory=bytearray)
    unwrapped: bool = False  # unwrap() returned: the transport is ours to close
    # The client's transport, kept: transport_stream is None after unwrap().
    transport: FaultyStream = field(init=False)

    def __post_init__(self) -> None:
        self.transport = self.client.transport_stream

    def operations_since(self, start: int, kinds: frozenset[str] | None = None) -> list[str]:
        records = self.transport.operations[start:]
        return [record.kind for record in records if kinds is None or record.kind in kinds]

    async def run_operation(self) -> None:
        """The operation under test, recording what a send_all completed."""
        client = self.client
        match self.operation:
            case "do_handshake":
                await client.do_handshake()
            case "send_all":
                self.failed_send = PAYLOAD
                await client.send_all(PAYLOAD)
                self.failed_send = b""
                self.sent.append(PAYLOAD)
            case "receive_some":
                data = await client.receive_some()
                assert data, "receive_some() returned b'' though the peer sent data"
                self.received += data
            case "wait_send_all_might_not_block":
                await client.wait_send_all_might_not_block()
            case "send_eof":
                await client.send_eof()
            case "unwrap":
                transport, trailing = await client.unwrap()
                assert transport is self.transport
                assert trailing == b""
                self.unwrapped = True
            case "aclose":
                await client.aclose()


@contextlib.asynccontextmanager
async def open_cell(
    phase: Phase, operation: StreamOperation, transport: TransportKind, tmp_path: Path
) -> AsyncIterator[Cell]:
    """Bring a client to ``phase``, with its peer running in the background."""
    try:
        async with _cell_in_nursery(phase, operation, transport, tmp_path) as cell:
            yield cell
    except BaseExceptionGroup as group:
        # A failed assertion is easier to read without the nursery's group.
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise


@contextlib.asynccontextmanager
async def _cell_in_nursery(
    phase: Phase, operation: StreamOperation, transport: TransportKind, tmp_path: Path
) -> AsyncIterator[Cell]:
    async with trio.open_nursery() as nursery:
        if phase == "renegotiating":
            cell = await _renegotiating_cell(operation, transport, tmp_path, nursery)
        else:
            pair = (memory_tls_stream_pair if transport == "memory" else lockstep_tls_stream_pair)()
            peer = StreamPeer(pair.server)
            peer.answer_close_notify = operation == "unwrap"
            nursery.start_soon(peer.run_receiver)
            nursery.start_soon(peer.run_sender)
            cell = Cell(phase, operation, pair.client, peer, nursery)
            if phase != "handshake":
                await pair.client.do_handshake()
            if phase == "after_close_notify":
                peer.send(None)
                assert await pair.client.receive_some() == b""
            if operation == "receive_some" and phase != "after_close_notify":
                peer.send(GREETING)
                cell.expected_from_peer += GREETING
        try:
            yield cell
        finally:
            nursery.cancel_scope.cancel()


def transport_pair(transport: TransportKind) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Two connected byte streams of the kind a cell runs over."""
    if transport == "memory":
        return trio.testing.memory_stream_pair()
    return trio.testing.lockstep_stream_pair()


async def connect_to_renegotiating_peer(
    client_transport: TransportT,
    server_transport: trio.abc.Stream,
    tmp_path: Path,
    nursery: trio.Nursery,
) -> tuple[MemoryBIOStream[TransportT], RenegotiatingPeer]:
    """Our client over ``client_transport``, handshaken with a
    :class:`RenegotiatingPeer` whose tasks run in ``nursery``."""
    client = MemoryBIOStream(client_transport, trio_context("client"), server_hostname=HOSTNAME)
    peer = RenegotiatingPeer(server_transport, _renegotiation_server_context(str(tmp_path)))
    nursery.start_soon(peer.run_receiver)
    nursery.start_soon(peer.run_sender)
    await client.do_handshake()
    return client, peer


async def _renegotiating_cell(
    operation: StreamOperation, transport: TransportKind, tmp_path: Path, nursery: trio.Nursery
) -> Cell:
    client_transport, server_transport = transport_pair(transport)
    client, peer = await connect_to_renegotiating_peer(
        FaultyStream(client_transport), server_transport, tmp_path, nursery
    )
    peer.start_renegotiation()
    # Reading the HelloRequest makes our client send a ClientHello; the
    # server's answer is still to come, so the renegotiation is in progress.
    assert await client.receive_some() == RENEGOTIATION_DATA
    # The ClientHello goes out from the stream's own task (transport rule 5):
    # let it, so that the operation under test starts from a quiet transport.
    await trio.testing.wait_all_tasks_blocked()
    cell = Cell("renegotiating", operation, client, peer, nursery)
    if operation == "receive_some":
        cell.expected_from_peer += AFTER_RENEGOTIATION
    return cell


# -------------------------------------------------------------- invariants


def assert_surfaces_as_broken(error: BaseException | None, injected: type[Exception]) -> None:
    """The transport's exception became BrokenResourceError chained from it."""
    assert isinstance(error, trio.BrokenResourceError), (
        f"expected trio.BrokenResourceError chained from the transport's {injected.__name__}, "
        f"got {error!r}"
    )
    assert any(
        isinstance(link, injected) and "injected fault" in str(link) for link in _chain(error)
    ), f"the injected {injected.__name__} is not in the chain of {_chain(error)!r}"


async def expect(
    exception: type[BaseException] | tuple[type[BaseException], ...],
    call: Callable[[], Awaitable[object]],
    what: str,
) -> None:
    try:
        result = await call()
    except exception:
        return
    except BaseException as exc:
        raise AssertionError(f"{what}: expected {exception}, got {exc!r}") from exc
    raise AssertionError(f"{what}: expected {exception}, returned {result!r}")


async def probe_broken_sending(cell: Cell) -> None:
    """Every send-side call raises BrokenResourceError without touching the transport."""
    client = cell.client
    start = len(cell.transport.operations)
    # After a send_eof() or unwrap() that failed, the caller itself asked to
    # stop sending, so send_all() may say ClosedResourceError; a second
    # send_eof() must still not claim that the close_notify went out.
    sending_over: tuple[type[BaseException], ...] = (trio.BrokenResourceError,)
    if cell.operation in ("send_eof", "unwrap"):
        sending_over += (trio.ClosedResourceError,)
    await expect(sending_over, lambda: client.send_all(b"probe"), "send_all")
    await expect(sending_over, client.wait_send_all_might_not_block, "wait_send_all")
    # On TLS 1.2 send_eof() may refuse for that reason first; both say no.
    await expect(
        (trio.BrokenResourceError, HalfCloseNotSupportedError), client.send_eof, "send_eof"
    )
    touched = cell.operations_since(start, frozenset({"send", "wait", "send_eof"}))
    assert not touched, f"a broken sending direction called the transport again: {touched}"


async def probe_broken_receiving(cell: Cell) -> None:
    client = cell.client
    start = len(cell.transport.operations)
    await expect(trio.BrokenResourceError, client.receive_some, "receive_some")
    touched = cell.operations_since(start, frozenset({"receive"}))
    assert not touched, f"a broken receiving direction called the transport again: {touched}"


async def probe_broken_whole(cell: Cell) -> None:
    client = cell.client
    start = len(cell.transport.operations)
    await probe_broken_sending(cell)
    await probe_broken_receiving(cell)
    await expect(trio.BrokenResourceError, client.do_handshake, "do_handshake")
    await expect(trio.BrokenResourceError, client.unwrap, "unwrap")
    touched = cell.operations_since(start)
    assert not touched, f"a broken stream called its transport again: {touched}"


async def probe_closed(cell: Cell) -> None:
    client = cell.client
    start = len(cell.transport.operations)
    for name, call in (
        ("send_all", lambda: client.send_all(b"probe")),
        ("receive_some", client.receive_some),
        ("do_handshake", client.do_handshake),
        ("wait_send_all", client.wait_send_all_might_not_block),
        ("send_eof", client.send_eof),
        ("unwrap", client.unwrap),
    ):
        await expect(trio.ClosedResourceError, call, name)
    assert not cell.operations_since(start), "a closed stream called its transport"


async def receive_from_peer(cell: Cell, data: bytes) -> None:
    """The peer sends ``data``; we receive everything it sent that is still due."""
    if cell.phase == "after_close_notify":
        assert await cell.client.receive_some() == b""  # its close_notify came first
        return
    if data:
        assert isinstance(cell.peer, StreamPeer)
        cell.peer.send(data)
        cell.expected_from_peer += data
    while len(cell.received) < len(cell.expected_from_peer):
        chunk = await cell.client.receive_some()
        assert chunk, "the peer's data was cut short"
        cell.received += chunk
    assert cell.received == cell.expected_from_peer


async def carry_on(cell: Cell) -> None:
    """An intact stream: the operation completes when called again, and data flows."""
    if cell.operation == "aclose":
        return
    await cell.run_operation()
    if cell.operation == "unwrap":
        return  # the transport is handed back; nothing more to say in TLS
    if cell.operation != "send_eof":
        await cell.client.send_all(b"after the fault")
        cell.sent.append(b"after the fault")
    if cell.phase == "renegotiating":
        assert cell.received == cell.expected_from_peer
    else:
        await receive_from_peer(cell, b"reply")


async def check_scope(cell: Cell, scope: Scope) -> None:
    """Invariants 3 and 4 for what broke."""
    cell.transport.install(FaultPlan())  # a wrong transport call is counted, not hung
    if scope == "closed":
        await probe_closed(cell)
    elif scope == "whole":
        await probe_broken_whole(cell)
    elif scope == "receiving":
        await probe_broken_receiving(cell)
    elif scope == "sending":
        await probe_broken_sending(cell)
        if cell.phase == "renegotiating":
            # Our part of the renegotiation may never reach the peer, and
            # OpenSSL's TLS 1.2 server then sends no data either: whether
            # receive_some() still works is up to the peer, so not asserted.
            return
        await receive_from_peer(cell, STILL_RECEIVING)
    else:
        await carry_on(cell)


async def close_and_check_peer(cell: Cell) -> None:
    """Invariants 5 and 6: aclose() closes the transport at once; the peer got what we sent."""
    with trio.fail_after(5):
        await cell.client.aclose()
        if cell.unwrapped:
            await cell.transport.aclose()
    assert cell.transport.closed, "aclose() did not close the transport"
    with trio.fail_after(10):
        await cell.peer.done.wait()
    corruption = cell.peer.corruption_seen()
    assert corruption is None, f"the peer received a corrupted record: {corruption}"
    completed = b"".join(cell.sent)
    received = bytes(cell.peer.received)
    assert received[: len(completed)] == completed, (
        f"the peer lost or reordered completed data: {len(received)} bytes received, "
        f"{len(completed)} completed"
    )
    rest = received[len(completed) :]
    assert cell.failed_send.startswith(rest), (
        f"the peer received {len(rest)} bytes beyond the completed sends that are not "
        "a prefix of the failed one (duplicated or invented data)"
    )


def first_failure(transport: FaultyStream, start: int) -> tuple[str, Outcome] | None:
    """Kind and outcome of the transport operation since ``start`` that did not succeed.

    A receive may wait while a send of owed output runs beside it (transport
    rule 5); when a cancellation ends both, the send is what decides what
    broke, so a failed send comes first.
    """
    failed = [
        record
        for record in transport.operations[start:]
        if record.outcome in (Outcome.INJECTED, Outcome.CANCELLED)
    ]
    for record in sorted(failed, key=lambda record: record.kind != "send"):
        return record.kind, record.outcome
    return None


def phase_of_failure(cell: Cell, phase: Phase) -> Phase:
    """The phase the failing operation really ran in.

    An operation started in the handshake phase goes on with application data
    (send_all), close_notify (send_eof, unwrap) once the handshake is done; a
    failure there is an established-phase failure. The handshake's end is
    recorded only once its final flight is on the wire, so a cut-short final
    flight still counts as the handshake.
    """
    if phase == "handshake" and cell.client.statistics().handshake_duration is not None:
        return "established"
    return phase


def scope_after(phase: Phase, operation: StreamOperation, kind: str, *, cancelled: bool) -> Scope:
    """What a failed or cancelled transport operation of ``kind`` breaks (DESIGN.md section 3)."""
    if operation == "aclose":
        return "closed"
    if cancelled and kind in ("receive", "wait"):
        return "intact"  # nothing moved: the stream carries on
    if phase == "handshake":
        return "whole"  # handshake bytes in flight, or no handshake possible
    if phase == "renegotiating" and operation == "receive_some":
        # Our renegotiation reply was cut short: the peer waits for it, so
        # nothing more can come either.
        return "whole"
    if kind == "receive":
        return "whole"
    return "sending"


# ------------------------------------------------------------------- cells


FAULT_CELLS = [
    pytest.param(
        phase, operation, fault, transport, id=f"{phase}-{operation}-{fault.name}-{transport}"
    )
    for (phase, operation), uses in USES.items()
    for fault in FAULTS
    if fault.applies_to(uses)
    for transport in TRANSPORTS
]


@pytest.mark.parametrize(("phase", "operation", "fault", "transport"), FAULT_CELLS)
async def test_transport_fault(
    phase: Phase,
    operation: StreamOperation,
    fault: Fault,
    transport: TransportKind,
    tmp_path: Path,
    autojump_clock: trio.abc.Clock,
) -> None:
    """One cell: the operation meets the fault; every invariant of the module docstring holds."""
    uses = USES[phase, operation]
    with trio.fail_after(DEADLINE):
        async with open_cell(phase, operation, transport, tmp_path) as cell:
            start = len(cell.transport.operations)
            faults_start = len(cell.transport.faults)
            cell.transport.install(fault.plan(uses))
            error: BaseException | None = None
            with trio.move_on_after(BLOCKED_FOR) as deadline:
                try:
                    await cell.run_operation()
                except Exception as exc:
                    error = exc
            failure = first_failure(cell.transport, start)
            assert cell.transport.faults[faults_start:], (
                f"the fault never fired: {cell.transport.operations[start:]}"
            )
            kind = failure[0] if failure is not None else "receive"
            if fault.kind == "block":
                if operation == "aclose":
                    # aclose() bounds its close_notify itself and closes anyway.
                    assert not deadline.cancelled_caught, "aclose() waited for a blocked transport"
                else:
                    assert deadline.cancelled_caught, f"Cancelled did not propagate: {error!r}"
                scope = scope_after(phase_of_failure(cell, phase), operation, kind, cancelled=True)
            else:
                assert not deadline.cancelled_caught, "the operation hung after the fault"
                if operation == "aclose":
                    # The close_notify is a courtesy: a failed one is no error.
                    assert error is None, f"aclose() raised {error!r}"
                elif fault.kind == "raise":
                    assert_surfaces_as_broken(error, fault.error)
                else:
                    assert isinstance(error, trio.BrokenResourceError), repr(error)
                if fault.kind == "end" and phase != "handshake" and operation != "aclose":
                    # A transport that ends early breaks receiving; whether
                    # sending may go on (TCP half-close) is the adapter's call.
                    scope = "receiving"
                else:
                    scope = scope_after(
                        phase_of_failure(cell, phase), operation, kind, cancelled=False
                    )
            await check_scope(cell, scope)
            await close_and_check_peer(cell)


SWEEP_CELLS = [
    pytest.param(phase, operation, transport, id=f"{phase}-{operation}-{transport}")
    for (phase, operation) in USES
    for transport in TRANSPORTS
]


@pytest.mark.parametrize(("phase", "operation", "transport"), SWEEP_CELLS)
async def test_caller_cancelled_at_each_checkpoint(
    phase: Phase,
    operation: StreamOperation,
    transport: TransportKind,
    tmp_path: Path,
    autojump_clock: trio.abc.Clock,
) -> None:
    """Cancelled before it starts and just before each of its transport operations.

    Cancellation propagates; a cancelled receive or wait loses nothing, a
    cancelled send breaks what the contract says, and every invariant holds.
    """
    with trio.fail_after(DEADLINE):
        async with open_cell(phase, operation, transport, tmp_path) as cell:
            start = len(cell.transport.operations)
            await cell.run_operation()
            count = len(cell.transport.operations) - start
            await close_and_check_peer(cell)
    for point in range(-1, count):
        with trio.fail_after(DEADLINE):
            async with open_cell(phase, operation, transport, tmp_path) as cell:
                start = len(cell.transport.operations)
                with trio.CancelScope() as scope:
                    if point < 0:
                        scope.cancel()
                    else:
                        cell.transport.cancel_at(scope, point)
                    await cell.run_operation()
                failure = first_failure(cell.transport, start)
                if operation == "aclose":
                    # Closed anyway, forcefully (Cancelled raised or not).
                    result: Scope = "closed"
                elif point < 0:
                    assert scope.cancelled_caught, f"{operation} is not a cancel point"
                    assert failure is None
                    assert not cell.operations_since(start), "cancelled before it began, it ran"
                    result = "intact"
                else:
                    assert scope.cancelled_caught, (
                        f"cancelled at transport operation {point}, {operation} swallowed it"
                    )
                    assert failure is not None
                    assert failure[1] is Outcome.CANCELLED
                    result = scope_after(
                        phase_of_failure(cell, phase), operation, failure[0], cancelled=True
                    )
                await check_scope(cell, result)
                await close_and_check_peer(cell)


# ------------------------------------------------------ issue 12's symptoms


async def test_a_send_that_raised_keyerror_leaves_no_silent_gap(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Symptom 1: after a KeyError from the transport, the next send_all() returned normally
    and the peer failed with "bad record mac"."""
    with trio.fail_after(DEADLINE):
        async with open_cell("established", "send_all", "memory", tmp_path) as cell:
            cell.transport.install(FaultPlan(raise_on_send_at=0, send_error=KeyError))
            # What the first call raises is the fault grid's business; this
            # test is about the second.
            with pytest.raises((trio.BrokenResourceError, KeyError)):
                await cell.client.send_all(b"one")
            cell.failed_send = b"one"
            with pytest.raises(trio.BrokenResourceError):
                await cell.client.send_all(b"two")
            await close_and_check_peer(cell)


@pytest.mark.parametrize("operation", ["do_handshake", "send_all", "unwrap"])
async def test_a_handshake_whose_send_failed_does_not_hang(
    operation: StreamOperation, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Symptom 2: the ClientHello's send failed, and every later call waited for ever."""
    with trio.fail_after(DEADLINE):
        async with open_cell("handshake", operation, "memory", tmp_path) as cell:
            cell.transport.install(FaultPlan(raise_on_send_at=0, send_error=OSError))
            with pytest.raises((trio.BrokenResourceError, OSError)):
                await cell.client.do_handshake()
            with trio.fail_after(5):
                with pytest.raises(trio.BrokenResourceError):
                    await cell.run_operation()
            cell.failed_send = b""
            await close_and_check_peer(cell)


async def test_a_failed_renegotiation_reply_does_not_hang_later_sends(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Symptom 2: the ClientHello answering a HelloRequest failed to send; send_all() hung."""
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            client_transport, server_transport = trio.testing.memory_stream_pair()
            faulty = FaultyStream(client_transport)
            client, peer = await connect_to_renegotiating_peer(
                faulty, server_transport, tmp_path, nursery
            )
            faulty.install(FaultPlan(raise_on_send_at=0, send_error=KeyError))
            peer.start_renegotiation()
            # The read of the HelloRequest queues a ClientHello, whose send fails.
            with contextlib.suppress(trio.BrokenResourceError, KeyError):
                assert await client.receive_some() == RENEGOTIATION_DATA
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
                await client.send_all(b"after the failed reply")
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
                await client.send_all(b"and again")
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_a_retried_unwrap_after_a_failed_send_does_not_hang(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Symptom 2: unwrap()'s close_notify failed to send; a second unwrap() hung."""
    with trio.fail_after(DEADLINE):
        async with open_cell("established", "unwrap", "memory", tmp_path) as cell:
            cell.transport.install(FaultPlan(raise_on_send_at=0, send_error=OSError))
            with pytest.raises((trio.BrokenResourceError, OSError)):
                await cell.client.unwrap()
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
                await cell.client.unwrap()
            await close_and_check_peer(cell)


async def test_a_failed_receive_is_remembered(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Symptom 3: after the transport's receive_some() raised, the next call read it again."""
    with trio.fail_after(DEADLINE):
        async with open_cell("established", "receive_some", "memory", tmp_path) as cell:
            cell.transport.install(FaultPlan(raise_on_receive_at=0, receive_error=OSError))
            with pytest.raises((trio.BrokenResourceError, OSError)):
                await cell.client.receive_some()
            start = len(cell.transport.operations)
            with pytest.raises(trio.BrokenResourceError):
                await cell.client.receive_some()
            assert not cell.operations_since(start), "the transport was read again"
            await close_and_check_peer(cell)


async def test_send_all_cancelled_while_a_later_chunk_waits_for_renegotiation_sends_nothing_twice(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Symptom 4: the stream said nothing was sent, and a retry sent the first 64 KiB twice.

    The peer asks to renegotiate once our first chunk arrived and withholds
    its answer, so the second chunk waits; then the caller gives up.
    """
    payload = random.Random(4).randbytes(2_000_000)  # past send_all()'s yields
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            client_transport, server_transport = trio.testing.memory_stream_pair()
            client, peer = await connect_to_renegotiating_peer(
                FaultyStream(client_transport), server_transport, tmp_path, nursery
            )
            peer.renegotiate_after = 1

            async def read_hello_request() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await client.receive_some()

            nursery.start_soon(read_hello_request)
            with trio.move_on_after(BLOCKED_FOR) as scope:
                await client.send_all(payload)
            assert scope.cancelled_caught, "the renegotiation was not waited for"
            assert peer.received, "no chunk went out before the renegotiation"
            # Part of the payload is out: another send must not look like it
            # continues a stream that lost the rest.
            with pytest.raises(trio.BrokenResourceError):
                await client.send_all(b"retry")
            peer.resume.set()
            await client.aclose()
            with trio.fail_after(10):
                await peer.done.wait()
            assert payload.startswith(bytes(peer.received)), "duplicated or reordered data"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_nothing_is_lost_over_a_transport_that_drops_cancelled_receives(
    transport: TransportKind, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Symptom 5: a receive that had to send cancelled its own transport receive, and
    on a transport that drops data when cancelled, bytes vanished and the connection hung.

    The pyOpenSSL server renegotiates in the middle of a large write, while it
    is blocked writing to us; we only receive.
    """
    first = random.Random(51).randbytes(100_000)
    second = random.Random(52).randbytes(100_000)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            client_transport, server_transport = transport_pair(transport)
            dropping = DroppingReceiveStream(client_transport)
            client, peer = await connect_to_renegotiating_peer(
                dropping, server_transport, tmp_path, nursery
            )
            peer.conn.sendall(first)
            peer.start_renegotiation()
            peer.conn.sendall(second)
            peer.pump()
            expected = first + RENEGOTIATION_DATA + second
            received = bytearray()
            while len(received) < len(expected):
                data = await client.receive_some()
                assert data, f"EOF after {len(received)} bytes"
                received += data
            assert received == expected
            assert dropping.dropped == 0, "the stream cancelled a transport receive itself"
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_send_eof_after_a_failed_first_attempt_does_not_claim_success(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Symptom 6: send_eof() after a failed one returned normally; close_notify never left."""
    with trio.fail_after(DEADLINE):
        async with open_cell("established", "send_eof", "memory", tmp_path) as cell:
            cell.transport.install(FaultPlan(raise_on_send_at=0, send_error=OSError))
            with pytest.raises((trio.BrokenResourceError, OSError)):
                await cell.client.send_eof()
            with pytest.raises(trio.BrokenResourceError):
                await cell.client.send_eof()
            await close_and_check_peer(cell)


def test_a_stop_record_cannot_change() -> None:
    """What broke a direction is a fact: a Stop is immutable, and says what it holds."""
    cause = OSError("reset")
    stop = Stop(StopKind.BROKEN, "the transport failed", cause)
    with pytest.raises(AttributeError, match="immutable"):
        stop.message = "something else"
    assert repr(stop) == "Stop(BROKEN, 'the transport failed', cause=OSError('reset'))"
    with pytest.raises(trio.BrokenResourceError, match="the transport failed") as caught:
        stop.raise_error()
    assert caught.value.__cause__ is cause
