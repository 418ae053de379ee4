"""MemoryBIOStream: the trio adapter around the sans-I/O TLS engine.

Theory of operation
===================

The engine (``_engine.py``) decides what bytes move; this module decides when,
in which task, and what happens on cancellation. The machinery for sharing the
transport between tasks (send and receive lanes, the outgoing BIO as the send
queue, receive counting, per-direction breakage) is in ``_transport_lanes.py``
and its rules are numbered there. On top of it, this module's rules are:

1. **One handshake driver.** The first task that needs the handshake drives
   it; the others wait for the driver's *outcome*, not for the engine: the
   engine finishes before its final flight is on the wire. If the driver is
   cancelled while waiting for the peer's bytes, nothing was lost and a
   waiter takes over. If it fails, the failure is recorded and every waiter
   raises it. If it is cancelled while its ciphertext was being written, an
   unknown part reached the peer, and the stream is broken with a message
   that says so.

2. **No plaintext is lost.** receive_some() returns everything already
   decrypted, up to ``max_bytes``; if its read also queued TLS output, the
   plaintext is put back into the engine while that output is sent, so a
   cancelled or failed send loses nothing.

3. **send_all() holds a bounded window.** It encrypts a chunk, sends it, and
   only then encrypts the next, so memory does not grow with the payload; it
   yields to other tasks at least every ``YIELD_EVERY`` bytes even when the
   transport never blocks.

4. **aclose() waits for nobody.** It marks the stream closed, wakes every
   parked task (they raise ClosedResourceError), sends close_notify only if
   the send lane is free (bounded by a short timeout), and closes the
   transport, which wakes any task blocked inside it.
"""

from __future__ import annotations

import logging
import operator
import ssl
from typing import Final, Generic, TypeVar

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from ._conflict import ConflictDetector
from ._connection_info import PeerCertificate
from ._engine import TLSEngine, TLSTruncationError
from ._errors import HalfCloseNotSupportedError, UnreadDataError
from ._statistics import ConnectionEnd
from ._trace import TraceCallback, TracingEngine, log_trace_event, trace_logger
from ._transport_lanes import (
    ALERT_TIMEOUT,
    SET_ASIDE_LIMIT,
    TRUNCATED,
    TransportLanes,
)

__all__ = ["MemoryBIOStream", "PeerCertificate"]

#: receive_some() returns at most this much when max_bytes is None.
DEFAULT_RECEIVE_SIZE: Final = 65536
#: send_all() encrypts at most this much plaintext before sending it, so the
#: ciphertext held in memory stays under SEND_WINDOW whatever the payload size.
PLAINTEXT_CHUNK: Final = 65536
#: When the socket takes every chunk at once, send_all() still yields to
#: other tasks (and lets cancellation in) after this much plaintext.
YIELD_EVERY: Final = 262144

_TLS_1_3: Final = "TLSv1.3"

TransportStream = TypeVar("TransportStream", bound=trio.abc.Stream, covariant=True)


class MemoryBIOStream(TransportLanes, trio.abc.HalfCloseableStream, Generic[TransportStream]):
    """TLS over any trio stream, through a pair of memory BIOs.

    A drop-in for :class:`trio.SSLStream`: the same constructor arguments and
    methods, plus the ``session`` and ``trace`` arguments and
    :meth:`send_eof`. The handshake runs automatically on the first
    send or receive, or explicitly with :meth:`do_handshake`.

    Args:
        transport_stream: The stream that carries the ciphertext: a TCP
            stream, an in-memory stream, another TLS stream.
        ssl_context: Decides certificates, verification and versions. With
            :func:`ssl.create_default_context` the peer's certificate and host
            name are checked; the stream never weakens that (OpenSSL is never
            allowed to run the handshake implicitly, which would skip the
            host name check, bpo-30141).
        server_hostname: The host name to send in SNI and to check the
            server's certificate against (client side).
        server_side: True to act as the TLS server.
        https_compatible: Security decision. False (the default) requires the
            peer to end with a TLS close_notify: a transport that ends without
            one raises :exc:`trio.BrokenResourceError`, because an attacker
            who can close TCP connections could otherwise truncate the data
            undetected. True accepts that end as a clean ``b""`` and makes
            aclose() skip close_notify, as HTTPS clients and servers do (HTTP
            carries its own lengths). Only set it for such protocols.
        session: A :class:`ssl.SSLSession` from an earlier connection to the
            same server, to resume (client side).
        trace: A callback that receives a :class:`TraceEvent` for every
            transfer between transport, incoming BIO, SSLObject, outgoing BIO
            and application. If None and the ``trio_membio.trace`` logger is
            enabled for DEBUG when the stream is created, events are logged
            there.

    """

    def __init__(
        self,
        transport_stream: TransportStream,
        ssl_context: ssl.SSLContext,
        *,
        server_hostname: str | bytes | None = None,
        server_side: bool = False,
        https_compatible: bool = False,
        session: ssl.SSLSession | None = None,
        trace: TraceCallback | None = None,
    ) -> None:
        if isinstance(server_hostname, bytes):
            server_hostname = server_hostname.decode("ascii")
        self._transport = transport_stream
        if trace is None and trace_logger.isEnabledFor(logging.DEBUG):
            trace = log_trace_event
        engine: TLSEngine
        if trace is None:
            engine = TLSEngine(
                ssl_context,
                server_side=server_side,
                server_hostname=server_hostname,
                session=session,
            )
        else:
            engine = TracingEngine(
                ssl_context,
                trace=trace,
                server_side=server_side,
                server_hostname=server_hostname,
                session=session,
            )
        super().__init__(transport_stream, engine, https_compatible=https_compatible)
        # engine.handshake_complete (with its final flight sent), cached for
        # the hot paths.
        self._handshook = False
        self._handshake_driven = False
        self._send_conflict = ConflictDetector(
            "another task is already sending on this MemoryBIOStream "
            "(send_all, send_eof and wait_send_all_might_not_block must not overlap)"
        )
        self._receive_conflict = ConflictDetector(
            "another task is already receiving on this MemoryBIOStream"
        )

    # ------------------------------------------------------- connection info

    @property
    def transport_stream(self) -> TransportStream:
        """The stream carrying the ciphertext, as passed to the constructor."""
        return self._transport

    def has_buffered_input(self) -> bool:
        """Whether this TLS layer holds input its transport no longer shows.

        True when ciphertext or plaintext is buffered inside the stream, or
        the connection's end has already been seen (close_notify either way,
        the transport's end, a TLS failure): a receive_some() would then not
        need to wait for the transport. Connection pools use this, with the
        transport's own readability, to tell a reusable idle connection from
        a dead one.
        """
        engine = self._engine
        return bool(
            engine.buffered_ciphertext
            or engine.buffered_plaintext
            or engine.ssl_object.pending()
            or engine.close_notify_received
            or engine.close_notify_sent
            or engine.transport_ended
            or engine.failure is not None
        )

    # ------------------------------------------------------------- handshake

    async def do_handshake(self) -> None:
        """Run the TLS handshake now, or wait for the one already running.

        You rarely need this: the first send or receive runs the handshake.
        Call it to look at the peer's certificate or the negotiated protocol
        before exchanging data. Several tasks may call it at once; one drives
        the handshake and the others wait for it.

        On cancellation: if this task was waiting for the peer's bytes,
        nothing is lost; the stream stays usable and the next call (or a
        waiting task, which takes over at once) resumes the handshake. If it
        was cancelled while writing handshake ciphertext to the transport, the
        stream is broken and later calls raise BrokenResourceError saying so.

        Raises:
            trio.BrokenResourceError: the handshake failed (chained from the
                ssl error; the fatal alert has been sent to the peer, best
                effort), the transport failed, or the stream was already
                broken.
            trio.ClosedResourceError: the stream was closed, before or during
                the call.
        """
        self._check_usable()
        await checkpoint_if_cancelled()
        if self._handshook:
            await cancel_shielded_checkpoint()
            return
        await self._ensure_handshake()

    async def _ensure_handshake(self) -> None:
        """Make sure the handshake has finished; always yields at least once."""
        engine = self._engine
        yielded = False
        while True:
            self._check_usable()
            if self._handshake_driven:
                # Even if the engine has finished, the driver may still be
                # writing the final flight: wait for its outcome.
                await self._wait_for_change()
                yielded = True
                continue
            if engine.handshake_complete:
                # A final flight still queued (its driver was cancelled while
                # waiting for the send lane) goes out with the next send.
                break
            self._handshake_driven = True
            try:
                yielded = await self._drive_handshake() or yielded
            finally:
                self._handshake_driven = False
                self._notify_change()
        # The engine may have finished while its final flight was cut short
        # by a cancelled driver: that breaks the stream for every waiter too.
        self._check_usable()
        self._handshook = True
        if not yielded:
            await cancel_shielded_checkpoint()

    async def _drive_handshake(self) -> bool:
        engine = self._engine
        yielded = False
        if self._handshake_started is None:
            self._handshake_started = trio.current_time()
        while True:
            try:
                finished = engine.do_handshake()
            except ssl.SSLError as exc:
                await self._fail(exc, "TLS handshake failed")
            if engine.bytes_to_send:
                # Until these bytes are out, a half-written send breaks the
                # whole stream, whoever is sending (see _send_queued_holding_lane).
                self._handshake_output_queued = True
                yielded = await self._send_queued() or yielded
            if finished:
                self._handshake_finished = trio.current_time()
                return yielded
            yielded = await self._receive_ciphertext() or yielded

    # --------------------------------------------------------------- receive

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Return the next plaintext from the peer: up to ``max_bytes`` bytes.

        Everything already decryptable is returned at once (several records,
        not one), up to ``max_bytes`` (default 64 KiB). Returns ``b""`` once
        the peer has sent close_notify (or, with ``https_compatible=True``,
        once the transport ends). Runs the handshake first if needed.

        On cancellation no plaintext or ciphertext is lost: the stream stays
        usable, except when the cancelled call was writing TLS output the
        protocol needed (the sending direction is then broken).

        Raises:
            trio.BrokenResourceError: the peer sent bad or truncated data (the
                message says which, chained from the ssl error), the
                handshake failed, or the transport failed.
            trio.ClosedResourceError: the stream was closed, before or during
                the call.
            trio.BusyResourceError: another task is already receiving.
            ValueError: ``max_bytes`` is less than 1.
        """
        conflict = self._receive_conflict
        if conflict.in_use:
            raise trio.BusyResourceError(conflict.message)
        conflict.in_use = True
        try:
            if self._closed or (self._broken is not None and not self._engine.buffered_plaintext):
                # Plaintext decrypted before a failure is still authentic: it
                # is handed out before the failure is reported.
                self._check_usable()
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            else:
                if max_bytes.__class__ is not int:
                    max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be at least 1")
            await checkpoint_if_cancelled()
            engine = self._engine
            output_bio = engine.output_bio
            yielded = False
            if not self._handshook:
                try:
                    await self._ensure_handshake()
                except trio.BrokenResourceError as exc:
                    if self._https_compatible and isinstance(exc.__cause__, TLSTruncationError):
                        # trio.SSLStream's policy: in HTTPS mode an EOF during
                        # the handshake is just an EOF.
                        await trio.lowlevel.checkpoint()
                        return b""
                    raise
                yielded = True
            while True:
                try:
                    data = engine.read(max_bytes)
                except TLSTruncationError as exc:
                    if self._https_compatible:
                        self._end(ConnectionEnd.TRUNCATED)
                        if not yielded:
                            await cancel_shielded_checkpoint()
                        return b""
                    await self._fail(exc, TRUNCATED)
                except ssl.SSLError as exc:
                    await self._fail(exc, "TLS error while receiving")
                if output_bio.pending:
                    # The read queued TLS output (a renegotiation or
                    # post-handshake reply).
                    if self._send_broken is not None or self._eof_sent:
                        engine.data_to_send()  # it can never be sent (lanes rule 4)
                    elif not self._sending:
                        if self._fast_path is not None:
                            # What the socket takes now; the rest waits in the
                            # queue, sent by the next sender or by this receive
                            # once the socket has room, so that a full socket
                            # never stops us reading (lanes rule 6).
                            self._send_output_now()
                            if self._broken is not None and not data:
                                # Plaintext in hand goes out first; the failure
                                # is reported by the next call.
                                self._raise_broken()
                        else:
                            # Keep the plaintext in the engine meanwhile: a
                            # cancelled or failed send must not lose it. The
                            # send reads on meanwhile (lanes rule 6): decrypt
                            # what that fed in before receiving more.
                            if data:
                                engine.put_back(data)
                            yielded = await self._send_output_of_receive() or yielded
                            continue
                    # Otherwise the send lane's holder sends it (lanes rule 2).
                if data is not None:
                    if data:
                        self._plaintext_received += len(data)
                        if self._changed is not None:
                            self._notify_change()  # a writer may wait for room (engine rule 7)
                    else:
                        self._end(ConnectionEnd.CLOSE_NOTIFY)
                    if not yielded:
                        await cancel_shielded_checkpoint()
                    return data
                yielded = await self._receive_ciphertext() or yielded
        finally:
            conflict.in_use = False

    # ------------------------------------------------------------------ send

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and send it to the peer.

        Runs the handshake first if needed. Large payloads are encrypted and
        sent a window at a time, so memory use does not grow with
        ``len(data)``.

        On cancellation: if the call was still waiting for its turn on the
        transport nothing was sent and the stream is intact. If it was
        cancelled while writing to the transport, an unknown part of the data
        was sent, so the sending direction is broken (later sends raise
        BrokenResourceError); receiving keeps working.

        Raises:
            trio.BrokenResourceError: the sending direction or the whole
                stream is broken, the handshake failed, or the transport
                failed.
            trio.ClosedResourceError: the stream was closed (or send_eof()
                was called), before or during the call.
            trio.BusyResourceError: another task is already sending.
        """
        conflict = self._send_conflict
        if conflict.in_use:
            raise trio.BusyResourceError(conflict.message)
        conflict.in_use = True
        try:
            if self._closed or self._broken is not None or self._send_broken is not None:
                self._check_can_send()
            if self._eof_sent:
                self._check_can_send()
            await checkpoint_if_cancelled()
            engine = self._engine
            if not self._handshook:
                await self._ensure_handshake()
                self._check_can_send()
                if not data:
                    return
            elif not data:
                await cancel_shielded_checkpoint()
                return
            data_type = type(data)
            small = len(data) <= PLAINTEXT_CHUNK and (data_type is bytes or data_type is bytearray)
            if small and not self._sending and not self._handshake_output_queued:
                # The express lane: one chunk, encrypted and sent at once; on
                # a socket, tried without waiting (the usual case on TCP).
                # Whatever it cannot finish (a TLS 1.2 renegotiation) goes on
                # below.
                self._sending = True
                try:
                    try:
                        written = engine.write(data) or 0
                    except ssl.SSLError as exc:
                        await self._fail(exc, "TLS error while sending", lane_held=True)
                    self._plaintext_sent += written
                    if written == len(data):
                        if self._try_send is None:
                            yielded = await self._send_queued_holding_lane()
                        else:
                            try:
                                sent_all = self._send_queued_now()
                            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                                self._raise_transport_error(exc, sending=True)
                            # What did not fit waits for room the ordinary way.
                            yielded = False if sent_all else await self._send_queued_holding_lane()
                finally:
                    self._sending = False
                    if self._changed is not None:
                        self._notify_change()
                if written == len(data):
                    if not yielded:
                        await cancel_shielded_checkpoint()
                    return
                if written:
                    data = memoryview(data)[written:]
                    small = False
            view: bytes | bytearray | memoryview
            if small:
                view = data  # one chunk: no memoryview needed
            else:
                view = memoryview(data)
                if view.itemsize != 1 or not view.c_contiguous:
                    view = view.cast("B")
            if self._sending:
                yielded = await self._acquire_send_lane()
            else:
                self._sending = True
                yielded = False
            lane_held = True
            sent_since_yield = 0
            try:
                while view:
                    chunk = view if len(view) <= PLAINTEXT_CHUNK else view[:PLAINTEXT_CHUNK]
                    try:
                        consumed = engine.write(chunk)
                    except ssl.SSLError as exc:
                        await self._fail(exc, "TLS error while sending", lane_held=True)
                    if consumed is None:
                        # A TLS 1.2 renegotiation: the peer must answer first.
                        await self._send_queued_holding_lane()
                        self._release_send_lane()
                        lane_held = False
                        try:
                            await self._wait_for_renegotiation()
                            await self._acquire_send_lane()
                        except BaseException:
                            # None of this chunk was consumed: the stream is
                            # intact, and the next send may carry other bytes.
                            engine.abandon_write()
                            raise
                        lane_held = True
                        yielded = True
                        continue
                    view = view[consumed:]
                    self._plaintext_sent += consumed
                    if await self._send_queued_holding_lane():
                        yielded = True
                        sent_since_yield = 0
                    else:
                        sent_since_yield += consumed
                        if view and sent_since_yield >= YIELD_EVERY:
                            # The socket took everything at once: let other
                            # tasks run and cancellation in, as SocketStream does.
                            sent_since_yield = 0
                            await self._checkpoint_between_chunks()
                            yielded = True
            finally:
                if lane_held:
                    self._sending = False
                    if self._changed is not None:
                        self._notify_change()
            if not yielded:
                await cancel_shielded_checkpoint()
        finally:
            conflict.in_use = False

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport can probably take more data.

        See :meth:`trio.abc.SendStream.wait_send_all_might_not_block`.
        Cancelling it loses nothing.

        Raises:
            trio.BrokenResourceError: the sending direction is broken.
            trio.ClosedResourceError: the stream was closed.
            trio.BusyResourceError: another task is sending.
        """
        with self._send_conflict:
            self._check_can_send()
            await checkpoint_if_cancelled()
            await self._acquire_send_lane()
            try:
                try:
                    await self._transport_base.wait_send_all_might_not_block()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._raise_transport_error(exc, sending=True)
                await self._send_queued_holding_lane()
            except BaseException:
                # Other tasks may have queued ciphertext behind us, trusting
                # the lane holder to send it (lanes rule 2): do, before leaving.
                await self._send_stranded_output()
                raise
            finally:
                self._release_send_lane()

    async def send_eof(self) -> None:
        """Send close_notify and keep receiving (a TLS 1.3 half-close).

        The peer's receive_some() returns ``b""`` and the peer can go on
        sending to us. Afterwards send_all() raises ClosedResourceError;
        calling send_eof() again does nothing (or raises BrokenResourceError
        if the first one was cancelled while writing).

        On cancellation: before the close_notify was queued nothing changed;
        while it was being written the sending direction is broken.

        Raises:
            HalfCloseNotSupportedError: the connection negotiated TLS 1.2 or
                lower, where close_notify ends both directions.
            trio.BrokenResourceError: the sending direction or the stream is
                broken, or the handshake failed.
            trio.ClosedResourceError: the stream was closed.
            trio.BusyResourceError: another task is sending.
        """
        with self._send_conflict:
            self._check_usable()
            await checkpoint_if_cancelled()
            if self._eof_sent:
                # Nothing to do, unless that close_notify was cut off half-way:
                # then the peer may never see it, and saying so is the point.
                self._check_sending_direction()
                await cancel_shielded_checkpoint()
                return
            engine = self._engine
            if not self._handshook:
                await self._ensure_handshake()
            version = engine.ssl_object.version()
            if version != _TLS_1_3:
                raise HalfCloseNotSupportedError(
                    f"send_eof() needs TLS 1.3 but this connection negotiated {version}; "
                    "before TLS 1.3 close_notify ends both directions, so use aclose()"
                )
            self._check_can_send()
            yielded = await self._acquire_send_lane()
            try:
                try:
                    engine.send_close_notify()
                except ssl.SSLError as exc:
                    await self._fail(exc, "TLS error while sending close_notify", lane_held=True)
                self._eof_sent = True
                yielded = await self._send_queued_holding_lane() or yielded
            finally:
                self._release_send_lane()
            if not yielded:
                await cancel_shielded_checkpoint()

    # ----------------------------------------------------------------- close

    async def aclose(self) -> None:
        """Close the stream and its transport, without waiting for anyone.

        If no other task is sending and the handshake has finished, sends
        close_notify once (waiting at most a second for the transport to take
        it; never waiting for the peer's reply), then closes the transport.
        Otherwise closes the transport at once. Tasks blocked in this
        stream's methods wake up with ClosedResourceError. Calling aclose()
        again does nothing. With ``https_compatible=True`` no close_notify is
        sent. For a two-way TLS shutdown, use :meth:`unwrap`.

        On cancellation the transport is still closed (forcefully) and
        Cancelled is raised.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._end(ConnectionEnd.CLOSED_LOCALLY)
        self._notify_change()
        engine = self._engine
        try:
            if (
                self._broken is None
                and self._send_broken is None
                and engine.failure is None
                and engine.handshake_complete
                and not self._sending
            ):
                self._sending = True
                try:
                    if self._https_compatible or engine.close_notify_sent:
                        # No close_notify, but held session tickets still go
                        # out (engine rule 5), so the client can resume.
                        engine.release_held_output()
                    else:
                        engine.send_close_notify()
                    if engine.bytes_to_send:
                        final_bytes = engine.data_to_send()
                        sent = 0 if self._try_send is None else self._try_send(final_bytes)
                        self._ciphertext_sent += sent
                        if sent < len(final_bytes):
                            rest = final_bytes[sent:]
                            with trio.move_on_after(ALERT_TIMEOUT) as scope:
                                await self._transport_send(rest)
                            if not scope.cancelled_caught:
                                self._ciphertext_sent += len(rest)
                            elif self._fast_path is not None:
                                self._ciphertext_sent += len(rest) - self._fast_path.unsent
                except (ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError):
                    # The peer may already be gone; close_notify is a courtesy.
                    pass
                finally:
                    self._sending = False
        finally:
            await self._transport_base.aclose()

    async def unwrap(self) -> tuple[TransportStream, bytes]:
        """Shut down TLS both ways and hand back the transport.

        Sends close_notify and waits for the peer's. Afterwards this stream
        is closed and the transport is yours again, unencrypted.

        Returns:
            ``(transport_stream, trailing_bytes)``: the bytes that arrived
            after the peer's close_notify; treat them as if they had come from
            ``transport_stream.receive_some()``.

        On cancellation: while waiting for the peer's close_notify, nothing is
        lost and unwrap() may be called again; while writing, the sending
        direction is broken.

        Raises:
            trio.BrokenResourceError: the peer closed the transport before its
                close_notify, or a TLS or transport error.
            trio.ClosedResourceError: the stream was closed.
            trio.BusyResourceError: another task is sending or receiving.
            UnreadDataError: the peer sent data that was never received, and
                either its close_notify followed or 1 MiB of it is waiting.
        """
        with self._receive_conflict, self._send_conflict:
            self._check_usable()
            await checkpoint_if_cancelled()
            engine = self._engine
            yielded = False
            if not self._handshook:
                await self._ensure_handshake()
                yielded = True
            while True:
                # After send_eof() our close_notify is out; after a broken send
                # nobody knows whether it is, so a two-way shutdown is off.
                broken = self._send_broken
                if broken is not None:
                    raise trio.BrokenResourceError(broken[0]) from broken[1]
                try:
                    finished = engine.unwrap()
                except TLSTruncationError as exc:
                    await self._fail(exc, TRUNCATED)
                except ssl.SSLError as exc:
                    await self._fail(exc, "TLS error during unwrap()")
                self._eof_sent = True  # our close_notify is queued: no more sending
                if engine.bytes_to_send:
                    yielded = await self._send_queued(closing=True) or yielded
                # A peer that goes on sending data instead of its close_notify:
                # stop reading ahead there, so memory stays bounded.
                if finished or engine.buffered_plaintext >= SET_ASIDE_LIMIT:
                    break
                yielded = await self._receive_ciphertext() or yielded
            if engine.buffered_plaintext:
                # The peer sent data that nobody received. Keep it readable
                # rather than drop it.
                if not yielded:
                    await cancel_shielded_checkpoint()
                sent = (
                    "before its close_notify that were never received"
                    if finished
                    else "that were never received, and no close_notify yet"
                )
                raise UnreadDataError(
                    f"the peer sent {engine.buffered_plaintext} bytes of data {sent}: call "
                    "receive_some() until it returns b'', then unwrap() again"
                )
            if not yielded:
                await cancel_shielded_checkpoint()
            self._closed = True
            self._end(ConnectionEnd.UNWRAPPED)
            self._notify_change()
            return self._transport, engine.take_trailing_data()

    # --------------------------------------------------------------- helpers
