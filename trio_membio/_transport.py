"""The stream's hold on its transport: one funnel, two lanes, every outcome recorded.

Theory of operation
===================

Several tasks may be inside one MemoryBIOStream at once (one sending, one
receiving, aclose() from anywhere), sharing one engine and one transport.
:class:`Transport` is everything they share below the TLS rules: the
transport stream, the socket fast path, the send and receive lanes, the byte
counters, and the condition of each direction (``send_stop`` and
``receive_stop``: None while usable, else a :class:`~trio_membio._state.Stop`).

1. **One funnel.** Every byte that crosses the transport goes through
   :meth:`Transport.send`, :meth:`Transport.send_now` (the socket fast path's
   non-blocking try) or :meth:`Transport.receive_ciphertext`, and
   :meth:`Transport.wait_send_all_might_not_block` is the only other call on
   it. Each records its outcome right there, by one rule:

   - *completed*: counted;
   - *cancelled before any byte moved* (while waiting for the peer's bytes:
     trio's streams lose nothing on a cancelled receive; or before a send
     reached the transport): nothing recorded;
   - *cut short while writing* (Cancelled, KeyboardInterrupt, a deadline:
     any BaseException that is not an Exception): an unknown prefix reached
     the peer. The sending direction stops; the whole stream does if
     handshake bytes (the handshake, a renegotiation, a post-handshake
     reply) were queued, since the peer can never finish that exchange.
     The exception propagates unchanged;
   - *failed* (any Exception: BrokenResourceError, OSError, a bug's
     KeyError): the same stops, as BROKEN with the exception as cause (a
     failed receive always stops the whole stream), and the caller gets
     :exc:`trio.BrokenResourceError` chained from it. If the stream was
     closed meanwhile (aclose() closed the transport under a blocked task),
     :exc:`trio.ClosedResourceError` instead.

   So a direction that broke stays broken, and every later call on it
   raises without touching the transport again.

2. **Lanes.** At most one task uses each direction of the transport at a
   time: ``sending`` guards sending (and wait_send_all_might_not_block),
   ``receiving`` guards receiving. A lane is a flag, not a lock, so the
   uncontended path costs no scheduler round trip; waiters park on an event
   set whenever a lane, the handshake or a stop changes, then look again.

3. **The outgoing BIO is the send queue.** Ciphertext is taken out of the BIO
   only by the task holding the send lane, which sends everything it finds
   before releasing the lane. Bytes reach the wire in the order OpenSSL
   produced them, whoever produced them; a task that queued ciphertext while
   another holds the lane goes on without waiting: the holder sends it.

4. **Receive counting.** A task that needs ciphertext while another task is
   blocked receiving does not receive too: it waits, and when the count of
   completed receives has moved it retries its TLS operation.

5. **Nobody waits for the peer while owing it bytes.** Output a read queued
   (a TLS 1.2 renegotiation reply, a post-handshake answer) may sit in the
   queue with the send lane free: the read handed its plaintext out first.
   Whoever next needs the peer's bytes sends it, without ever cancelling a
   transport call it started (the stream's caller may cancel; the stream
   itself does not, except for the bounded best-effort sends of rule 6):

   - on the socket fast path, the receive waits for the socket to become
     readable *or* writable and sends what fits each time it can: waiting
     only to write would deadlock with a peer blocked writing to us (a
     full-duplex echo), waiting only to read, with a peer waiting for us;
   - on any other transport, a task of the stream's own sends it (holding
     the send lane until the queue is empty) while the caller goes on:
     receiving, or handing out plaintext. Nobody cancels that send, and the
     caller never waits for it.

6. **Best-effort sends are bounded.** A fatal alert, aclose()'s
   close_notify, output stranded by a cancelled lane holder:
   :meth:`Transport.send_best_effort` sends them shielded, for at most
   ALERT_TIMEOUT seconds, and gives up quietly. These, and a receive whose
   result can no longer be used (receiving stopped while it waited), are the
   only transport calls the stream cuts short itself.

7. **Transport I/O reports whether it yielded**, so the public methods add
   the one checkpoint trio's contract requires only when nothing else was one.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

import trio
from trio.lowlevel import checkpoint_if_cancelled

from ._engine import TLSEngine, TLSTruncationError
from ._errors import describe_tls_error
from ._offload import HandshakeOffload
from ._socket_fast_path import SocketFastPath, fast_path_for
from ._state import Stop, StopKind
from ._statistics import ConnectionEnd

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Transport"]

#: How much ciphertext one transport receive asks for.
TRANSPORT_RECEIVE_SIZE: Final = 262144
#: The most ciphertext handed to one transport send.
SEND_WINDOW: Final = 262144
#: Seconds a best-effort send (a fatal alert, aclose()'s close_notify) or the
#: drain after a fatal alert may take.
ALERT_TIMEOUT: Final = 1.0
#: How much data may be read ahead while something else waits: ciphertext
#: received while owed output is being sent (rule 5), application data set
#: aside by a write waiting for a TLS 1.2 renegotiation or by unwrap().
SET_ASIDE_LIMIT: Final = 1048576

HANDSHAKE_HALF_WRITTEN: Final = (
    "the TLS handshake was cancelled while its ciphertext was being written to the "
    "transport; an unknown part of it reached the peer, so this connection cannot "
    "continue: open a new one"
)
TRUNCATED: Final = (
    "TLS stream truncated (pass https_compatible=True only if the protocol on top "
    "detects truncation itself)"
)
SEND_HALF_WRITTEN: Final = (
    "an earlier send on this stream was cancelled while writing ciphertext to the "
    "transport; an unknown part of it reached the peer, so nothing more can be sent "
    "(receiving still works)"
)


class Transport:
    """One stream's transport, lanes, counters and direction stops (see the module doc)."""

    __slots__ = (
        "_receive_waiter",
        "background_sending",
        "change_event",
        "ciphertext_received",
        "ciphertext_sent",
        "ended",
        "engine",
        "fast_path",
        "fatal_alert_queued",
        "handshake_finished",
        "handshake_offload",
        "handshake_output_queued",
        "handshake_started",
        "plaintext_received",
        "plaintext_sent",
        "receive_count",
        "receive_stop",
        "receiving",
        "send_stop",
        "sending",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream, engine: TLSEngine) -> None:
        #: The transport stream itself.
        self.stream = stream
        self.engine = engine
        # The counters behind statistics(); they never decide anything.
        self.plaintext_sent = 0
        self.plaintext_received = 0
        self.ciphertext_sent = 0
        self.ciphertext_received = 0
        self.handshake_started: float | None = None
        self.handshake_finished: float | None = None
        self.ended: ConnectionEnd | None = None
        #: The first fail() found output queued (our fatal alert) and sending
        #: usable: aclose() lingers so that the peer reads it. A failure on
        #: the peer's alert queues none.
        self.fatal_alert_queued = False
        #: The socket fast path (a plain trio.SocketStream on POSIX), else None.
        self.fast_path: SocketFastPath | None = fast_path_for(stream)
        #: Why sending / receiving can no longer be used; None while usable.
        self.send_stop: Stop | None = None
        self.receive_stop: Stop | None = None
        #: The lanes (rule 2).
        self.sending = False
        self.receiving = False
        #: Completed transport receives (rule 4).
        self.receive_count = 0
        #: Handshake bytes (the handshake, a renegotiation, a post-handshake
        #: reply) are in the send queue: cutting it short breaks everything.
        self.handshake_output_queued = False
        #: Server side with offload_handshake=True: runs the expensive step
        #: in a worker thread (``_offload.py``); None otherwise.
        self.handshake_offload: HandshakeOffload | None = None
        self.change_event: trio.Event | None = None
        # What a receive in progress waits in, for stop() to wake it: the
        # cancel scope of a generic transport receive, or the socket a
        # fast-path receive waits on.
        self._receive_waiter: trio.CancelScope | trio.socket.SocketType | None = None
        #: While the stream's own task sends owed output (rule 5): set when
        #: it has finished. It holds the send lane meanwhile.
        self.background_sending: trio.Event | None = None

    # ------------------------------------------------------------ transitions

    def stop(self, stop: Stop, *, sending: bool = True, receiving: bool = True) -> None:
        """Stop one or both directions: the only place the stops change.

        A stop replaces a weaker one (BROKEN replaces EOF_SENT, CLOSED
        replaces anything) and never a stronger or equal one, so the first
        failure is the one every later call reports.
        """
        if sending and (self.send_stop is None or self.send_stop.kind < stop.kind):
            self.send_stop = stop
        if receiving and (self.receive_stop is None or self.receive_stop.kind < stop.kind):
            self.receive_stop = stop
            waiter = self._receive_waiter
            if isinstance(waiter, trio.CancelScope):
                waiter.cancel()
            elif waiter is not None:
                trio.lowlevel.notify_closing(waiter)
        self.notify_change()

    def end(self, how: ConnectionEnd) -> None:
        """Record how the connection ended; the first cause seen wins."""
        if self.ended is None:
            self.ended = how

    def break_after(self, exc: BaseException | None, message: str, *, whole: bool) -> Stop:
        """Record a transport failure (or a cut-short write) and return its stop."""
        failed = isinstance(exc, Exception)
        self.end(ConnectionEnd.TRANSPORT_FAILED if failed else ConnectionEnd.CANCELLED)
        stop = Stop(StopKind.BROKEN, message, exc if failed else None)
        self.stop(stop, receiving=whole)
        return stop

    @property
    def closed(self) -> bool:
        """Whether aclose() or unwrap() ended the stream."""
        stop = self.receive_stop
        return stop is not None and stop.kind is StopKind.CLOSED

    async def fail(self, exc: ssl.SSLError, what: str, *, lane_held: bool = False) -> NoReturn:
        """Record a TLS failure, send the fatal alert (best effort, rule 6), raise.

        ``lane_held``: the caller holds the send lane (else the alert goes
        only if the lane is free: its holder sends everything queued, rule 3).
        """
        message = f"{what}: {describe_tls_error(exc)}"
        self.end(
            ConnectionEnd.TRUNCATED if isinstance(exc, TLSTruncationError) else ConnectionEnd.ALERT
        )
        send_stop = self.send_stop
        can_send = send_stop is None or send_stop.kind is StopKind.EOF_SENT
        if can_send:
            # Only the first failure decides: a later one (the engine raises
            # its failure again) finds the alert gone out with a sender's data.
            self.fatal_alert_queued = bool(self.engine.bytes_to_send)
        self.stop(Stop(StopKind.BROKEN, message, exc))
        if can_send and (lane_held or not self.sending):
            # The alert tells the peer why, instead of leaving it hanging.
            await self.send_best_effort()
        raise trio.BrokenResourceError(message) from exc

    # ----------------------------------------------------------------- funnel

    async def send(self, data: bytes) -> bool:
        """Write ``data`` to the transport; the caller holds the send lane.

        Returns whether this task yielded. Records the outcome (rule 1).
        """
        fast_path = self.fast_path
        try:
            if fast_path is None:
                await self.stream.send_all(data)
                yielded = True
            else:
                yielded = await fast_path.send_all(data)
        except Exception as exc:
            raise self._send_failed(exc) from exc
        except BaseException:
            self._send_cut_short(data)
            raise
        self.ciphertext_sent += len(data)
        return yielded

    def send_now(self) -> bool:
        """Fast path: send what the socket takes of the queue now; True if all of it.

        The unsent rest goes back to the front of the queue, in order, to be
        sent by whoever sends next. The caller holds the send lane, or it is
        free (nothing here waits).
        """
        engine = self.engine
        output_bio = engine.output_bio
        fast_path = self.fast_path
        assert fast_path is not None
        try_send = fast_path.try_send
        while output_bio.pending:
            chunk = engine.data_to_send(SEND_WINDOW)
            try:
                sent = try_send(chunk)
            except Exception as exc:
                raise self._send_failed(exc) from exc
            self.ciphertext_sent += sent
            if sent < len(chunk):
                engine.return_unsent(memoryview(chunk)[sent:])
                return False
        self.handshake_output_queued = False
        return True

    async def wait_send_all_might_not_block(self) -> None:
        """The transport's own wait; a failure stops sending like a failed send."""
        try:
            await self.stream.wait_send_all_might_not_block()
        except Exception as exc:
            raise self._send_failed(exc) from exc

    def _send_failed(self, exc: Exception) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self.closed:
            return trio.ClosedResourceError("this MemoryBIOStream was closed")
        stop = self.break_after(
            exc,
            f"the transport failed while sending: {exc!r}",
            whole=self.handshake_output_queued,
        )
        return trio.BrokenResourceError(stop.message)

    def _send_cut_short(self, data: bytes) -> None:
        fast_path = self.fast_path
        if fast_path is not None:
            # The socket says how much of the chunk went out; other
            # transports cannot, so that part goes uncounted there.
            self.ciphertext_sent += len(data) - fast_path.unsent
        if self.closed:
            return
        whole = self.handshake_output_queued
        self.break_after(None, HANDSHAKE_HALF_WRITTEN if whole else SEND_HALF_WRITTEN, whole=whole)

    def _receive_failed(
        self, exc: Exception
    ) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self.closed:
            return trio.ClosedResourceError("this MemoryBIOStream was closed")
        stop = self.break_after(exc, f"the transport failed while receiving: {exc!r}", whole=True)
        return trio.BrokenResourceError(stop.message)

    # ------------------------------------------------------------------ lanes

    async def acquire_send_lane(self, *, closing: bool = False) -> bool:
        """Take the send lane, waiting for it; return whether this yielded.

        ``closing``: for our own close_notify, which may go out after
        send_eof() or unwrap() has stopped ordinary sending.
        """
        yielded = False
        while self.sending:
            await self.wait_for_change()
            self.check_sending(closing=closing)
            yielded = True
        self.sending = True
        return yielded

    def release_send_lane(self) -> None:
        self.sending = False
        if self.change_event is not None:
            self.notify_change()

    def check_sending(self, *, closing: bool = False) -> None:
        """Raise if sending is stopped (``closing``: our close_notify may still go)."""
        stop = self.send_stop
        if stop is not None and not (closing and stop.kind is StopKind.EOF_SENT):
            stop.raise_error()

    async def send_queued(self, *, closing: bool = False) -> bool:
        """Send the queue, waiting for the send lane; whether this yielded."""
        self.check_sending(closing=closing)
        yielded = await self.acquire_send_lane(closing=closing)
        try:
            sent_yielded = await self.send_queued_holding_lane()
        finally:
            self.release_send_lane()
        return yielded or sent_yielded

    async def send_queued_holding_lane(self) -> bool:
        """Send everything queued (rule 3); return whether this task yielded."""
        engine = self.engine
        output_bio = engine.output_bio
        generic = self.fast_path is None
        yielded = False
        while output_bio.pending:
            if generic:
                # Cancelled before any byte left the queue: nothing to record.
                # (The fast path tries the socket first, without a checkpoint.)
                await checkpoint_if_cancelled()
            yielded = await self.send(engine.data_to_send(SEND_WINDOW)) or yielded
        self.handshake_output_queued = False
        return yielded

    async def send_best_effort(self, *, shield: bool = True) -> None:
        """Send the queue for at most ALERT_TIMEOUT; give up quietly (rule 6).

        The caller holds the send lane, or it is free. ``shield``: sent even
        if the caller is being cancelled (a fatal alert); aclose() passes
        False, so that a cancelled aclose() closes at once.
        """
        if not self.engine.bytes_to_send:
            return
        was_sending, self.sending = self.sending, True
        try:
            # On a socket, what fits goes at once (the usual case: a close_notify
            # or an alert is small), without a cancel scope.
            if self.fast_path is None or not self.send_now():
                with trio.CancelScope(shield=shield, deadline=trio.current_time() + ALERT_TIMEOUT):
                    await self.send_queued_holding_lane()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # recorded by the funnel; the peer may well be gone
        finally:
            if not was_sending:
                self.release_send_lane()

    async def linger(self) -> None:
        """After our fatal alert, on TCP: half-close, then drain input (bounded, rule 6).

        Closing a TCP socket with unread input makes the kernel send a reset,
        and a peer that is still writing to us may then lose our alert before
        reading it. So, as ``openssl s_server`` does, stop sending and read
        (discarding) until the peer closes, for at most ALERT_TIMEOUT.
        """
        fast_path = self.fast_path
        if fast_path is None:
            return  # only TCP resets unread data
        with trio.CancelScope(shield=True, deadline=trio.current_time() + ALERT_TIMEOUT):
            try:
                fast_path.socket.shutdown(socket.SHUT_WR)
                while True:
                    data = fast_path.try_receive(TRANSPORT_RECEIVE_SIZE)
                    if data == b"":
                        return
                    if data is None:
                        await trio.lowlevel.wait_readable(fast_path.socket)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the peer is gone already: nothing left to protect

    def may_send_queued(self) -> bool:
        """Whether what is queued may still go out: sending is usable, or the
        stop is a TLS error whose fatal alert is queued (tell the peer why)."""
        stop = self.send_stop
        return (
            stop is None or stop.kind is StopKind.EOF_SENT or isinstance(stop.cause, ssl.SSLError)
        )

    def output_owed(self) -> bool:
        """Whether queued output waits for someone to take the free send lane (rule 5)."""
        return bool(self.engine.output_bio.pending and not self.sending and self.send_stop is None)

    def send_owed_now(self) -> None:
        """Fast path: send what the socket takes of owed output (rule 5).

        A failure is recorded, not raised: the caller hands out plaintext it
        already holds first, and the next call reports it.
        """
        if self.output_owed():
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self.send_now()

    async def receive_ciphertext(self) -> bool:
        """Feed the engine one transport receive, ours or another task's (rules 4, 5).

        Returns whether this task yielded to the scheduler.
        """
        if self.receiving and await self._wait_for_other_receiver():
            return True
        if self.fast_path is None and self.engine.output_bio.pending:
            self.send_owed_in_background()
        self.receiving = True
        try:
            # The funnel's receive half: one transport receive into the
            # engine, its outcome recorded (rule 1).
            data: bytes | bytearray | None
            try:
                fast_path = self.fast_path
                if fast_path is None:
                    if self.background_sending is None and not self.handshake_output_queued:
                        data = await self.stream.receive_some(TRANSPORT_RECEIVE_SIZE)
                    else:
                        # A send the peer waits for is under way in another
                        # task; if it fails, stop() cancels this receive.
                        # (A scope only then: it costs on every receive.)
                        data = None
                        with trio.CancelScope() as scope:
                            self._receive_waiter = scope
                            data = await self.stream.receive_some(TRANSPORT_RECEIVE_SIZE)
                    yielded = True
                else:
                    data = fast_path.try_receive(TRANSPORT_RECEIVE_SIZE)
                    yielded = data is None
                    # Waits only, never a transport call, and stop() wakes
                    # them (notify_closing) once receiving can no longer
                    # succeed: no cancel scope on every receive's path.
                    self._receive_waiter = fast_path.socket
                    while data is None:
                        if self.output_owed():
                            # Rule 5: wait to read or to write, sending what fits.
                            await self._wait_to_read_or_write(fast_path)
                            self.send_owed_now()
                            if self.receive_stop is not None:
                                break  # the send stopped everything: raised below
                        else:
                            await trio.lowlevel.wait_readable(fast_path.socket)
                        data = fast_path.try_receive(TRANSPORT_RECEIVE_SIZE)
            except Exception as exc:
                if self.receive_stop is not None and isinstance(exc, trio.ClosedResourceError):
                    self.receive_stop.raise_error()  # woken by stop(), or closed under us
                raise self._receive_failed(exc) from exc
            finally:
                self._receive_waiter = None
            if data is None:
                self.raise_closed_or_broken()
            engine = self.engine
            if data:
                self.ciphertext_received += len(data)
                engine.receive_data(data)
            else:
                engine.receive_eof()
            self.receive_count += 1
            return yielded
        finally:
            self.receiving = False
            if self.change_event is not None:
                self.notify_change()

    async def _wait_for_other_receiver(self) -> bool:
        """Wait while another task receives; True if it fed the engine meanwhile."""
        count = self.receive_count
        while self.receiving:
            await self.wait_for_change()
            if self.receive_count != count:
                return True
            if self.receive_stop is not None:
                self.receive_stop.raise_error()
        return False

    def send_owed_in_background(self) -> None:
        """Rule 5 on a transport with no try-send: send owed output from a task of its own.

        The task holds the send lane until the queue is empty, whatever the
        caller does meanwhile: nobody cancels it, so a handshake reply is
        never cut short by a receive_some() that gave up, and the caller
        receives (or returns plaintext) at once instead of waiting for a
        peer that may itself be blocked writing to us. It is a system task
        because it may outlive the call that found the output owed; it ends
        when the queue is sent, the transport fails (recorded, rule 1) or the
        transport is closed.
        """
        if not self.output_owed():
            return
        self.sending = True
        self.background_sending = trio.Event()
        trio.lowlevel.spawn_system_task(
            self._send_owed, name=f"<trio_membio: owed output for {self.stream!r}>"
        )

    async def _send_owed(self) -> None:
        # An exception escaping a system task would end the whole trio.run:
        # everything but the run's own cancellation is recorded and kept for
        # the next call on the stream.
        try:
            await self.send_queued_holding_lane()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # recorded by the funnel: the next call on the stream says so
        except trio.Cancelled:
            raise
        except BaseException as exc:  # a KeyboardInterrupt-like transport error, a trace bug
            if not self.closed:
                self.break_after(exc, f"sending owed TLS output failed: {exc!r}", whole=True)
        finally:
            done, self.background_sending = self.background_sending, None
            if done is not None:
                done.set()
            self.release_send_lane()

    async def _wait_to_read_or_write(self, fast_path: SocketFastPath) -> None:
        """Wait until the socket is readable or writable, holding the send lane.

        Holding the lane keeps any other task from waiting to write on the
        socket meanwhile (trio allows one writer-waiter per socket). Only
        waits are cancelled here, never a transport call.
        """
        self.sending = True
        try:
            async with trio.open_nursery() as nursery:

                async def wait(waiter: Callable[[trio.socket.SocketType], Awaitable[None]]) -> None:
                    await waiter(fast_path.socket)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wait, trio.lowlevel.wait_readable)
                nursery.start_soon(wait, trio.lowlevel.wait_writable)
            return
        except BaseExceptionGroup as group:
            # ClosedResourceError if the socket was closed, else Cancelled.
            leaf = _first_leaf(group)
            del group
        finally:
            self.release_send_lane()
        raise leaf

    # ----------------------------------------------------------------- events

    async def wait_for_change(self) -> None:
        """Wait until a lane, the handshake or a stop changes."""
        event = self.change_event
        if event is None:
            event = self.change_event = trio.Event()
        await event.wait()
        if self.closed:
            raise trio.ClosedResourceError("this MemoryBIOStream was closed while this task waited")

    def notify_change(self) -> None:
        event = self.change_event
        if event is not None:
            self.change_event = None
            event.set()

    def raise_closed_or_broken(self) -> NoReturn:
        """Raise the receive stop; only after one is set."""
        stop = self.receive_stop
        assert stop is not None
        stop.raise_error()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in ``group`` that is not Cancelled, else the first Cancelled."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return leaves[0]
