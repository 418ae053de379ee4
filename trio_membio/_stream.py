"""MemoryBIOStream: the trio adapter around the sans-I/O TLS engine.

Theory of operation
===================

The engine (``_engine.py``) decides what bytes move; this module decides when,
in which task, and what happens on cancellation. Several tasks may be inside
one stream at once: one sending, one receiving, and aclose() from anywhere.
They share one engine and one transport, so the rules are:

1. **Lanes.** At most one task uses each direction of the transport at a time:
   ``_sending`` guards ``transport_stream.send_all`` (and
   ``wait_send_all_might_not_block``), ``_receiving`` guards
   ``transport_stream.receive_some``. A lane is a flag, not a lock, so the
   uncontended path costs no scheduler round trip; waiters park on
   ``_changed``, an event set whenever a lane, the handshake or the stream's
   state changes, and then look again.

2. **The outgoing BIO is the send queue.** Ciphertext is only taken out of the
   BIO by the task holding the send lane, which sends everything it finds
   before releasing the lane. So bytes reach the wire in the order OpenSSL
   produced them, whoever produced them, and a task that queued ciphertext
   while another holds the send lane may go on without waiting: the holder
   sends it. A sending task takes the lane *before* encrypting, so a send_all
   cancelled while waiting for the lane has consumed nothing.

3. **Receive counting.** A task that needs ciphertext while another task is
   already blocked in ``transport_stream.receive_some`` does not receive too:
   it waits, and when the count of completed receives has moved it retries
   its TLS operation with what the other task fed in.

4. **One handshake driver.** The first task that needs the handshake drives
   it; the others wait. If the driver is cancelled while waiting for the
   peer's bytes, nothing was lost and a waiter takes over. If it fails, the
   failure is recorded and every waiter raises it. If it is cancelled while
   its ciphertext was being written, an unknown part reached the peer, and
   the stream is broken with a message that says so.

5. **Breakage is per direction where TLS allows it.** A send_all cancelled
   while writing to the transport breaks the sending direction only:
   receive_some goes on working, dropping any ciphertext TLS would have liked
   to send (it could never be sent). TLS errors, transport receive errors and
   a half-written handshake break the whole stream.

6. **aclose() waits for nobody.** It marks the stream closed, wakes every
   parked task (they raise ClosedResourceError), sends close_notify only if
   the send lane is free (bounded by a short timeout), and closes the
   transport, which wakes any task blocked inside it.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import ssl
from collections.abc import Awaitable, Callable
from typing import Final, Generic, Literal, NoReturn, TypeVar, overload

import trio

from ._conflict import ConflictDetector
from ._engine import TLSEngine, TLSTruncationError
from ._errors import (
    HalfCloseNotSupportedError,
    NeedHandshakeError,
    UnreadDataError,
    describe_tls_error,
)
from ._socket_fast_path import fast_path_for
from ._statistics import ConnectionEnd, TLSStatistics
from ._trace import TraceCallback, TracingEngine, log_trace_event, trace_logger

__all__ = ["MemoryBIOStream"]

#: receive_some() returns at most this much when max_bytes is None.
DEFAULT_RECEIVE_SIZE: Final = 65536
#: How much ciphertext one transport receive_some() asks for.
TRANSPORT_RECEIVE_SIZE: Final = 262144
#: send_all() encrypts at most this much plaintext before sending it, so the
#: ciphertext held in memory stays under SEND_WINDOW whatever the payload size.
PLAINTEXT_CHUNK: Final = 65536
#: The most ciphertext handed to one transport send_all().
SEND_WINDOW: Final = 262144
#: Seconds a fatal alert or an aclose() close_notify may take to be sent.
ALERT_TIMEOUT: Final = 1.0
#: When the socket takes every chunk at once, send_all() still yields to
#: other tasks (and lets cancellation in) after this much plaintext.
YIELD_EVERY: Final = 262144
#: How much application data a write waiting on a TLS 1.2 renegotiation may
#: set aside before it waits for receive_some() to take it.
SET_ASIDE_LIMIT: Final = 1048576

_TLS_1_3: Final = "TLSv1.3"

TransportStream = TypeVar("TransportStream", bound=trio.abc.Stream, covariant=True)

#: The decoded form of a certificate, as :meth:`ssl.SSLSocket.getpeercert` returns it.
PeerCertificate = dict[
    str, str | tuple[tuple[tuple[str, str], ...], ...] | tuple[tuple[str, str], ...]
]


class MemoryBIOStream(trio.abc.HalfCloseableStream, Generic[TransportStream]):
    """TLS over any trio stream, through a pair of memory BIOs.

    A drop-in for :class:`trio.SSLStream`: the same constructor arguments and
    methods, plus ``session``. The handshake runs automatically on the first
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
        # How ciphertext moves: straight on the socket for a plain
        # SocketStream, through the transport's methods otherwise. Both
        # report whether they yielded, so that checkpoints are not doubled.
        fast_path = fast_path_for(transport_stream)
        self._transport_send: Callable[[bytes], Awaitable[bool]]
        self._transport_receive: Callable[[int], Awaitable[tuple[bytes | bytearray, bool]]]
        if fast_path is not None:
            self._transport_send = fast_path.send_all
            self._transport_receive = fast_path.receive_some
        else:
            self._transport_send = self._send_through_transport
            self._transport_receive = self._receive_through_transport
        if trace is None and trace_logger.isEnabledFor(logging.DEBUG):
            trace = log_trace_event
        if trace is None:
            self._engine = TLSEngine(
                ssl_context,
                server_side=server_side,
                server_hostname=server_hostname,
                session=session,
            )
        else:
            self._engine = TracingEngine(
                ssl_context,
                trace=trace,
                server_side=server_side,
                server_hostname=server_hostname,
                session=session,
            )
        self._https_compatible = https_compatible
        self._closed = False
        # (message, cause) when the whole stream is unusable.
        self._broken: tuple[str, BaseException | None] | None = None
        # (message, cause) when only the sending direction is unusable.
        self._send_broken: tuple[str, BaseException | None] | None = None
        self._eof_sent = False
        # engine.handshake_complete (with its final flight sent), cached for
        # the hot paths.
        self._handshook = False
        # Handshake ciphertext is waiting in the outgoing BIO.
        self._handshake_output_queued = False
        self._sending = False
        self._receiving = False
        self._receive_count = 0
        self._handshake_driven = False
        self._changed: trio.Event | None = None
        self._send_conflict = ConflictDetector(
            "another task is already sending on this MemoryBIOStream "
            "(send_all, send_eof and wait_send_all_might_not_block must not overlap)"
        )
        self._receive_conflict = ConflictDetector(
            "another task is already receiving on this MemoryBIOStream"
        )
        self._plaintext_sent = 0
        self._plaintext_received = 0
        self._ciphertext_sent = 0
        self._ciphertext_received = 0
        self._handshake_started: float | None = None
        self._handshake_finished: float | None = None
        self._ended: ConnectionEnd | None = None

    # ------------------------------------------------------- connection info

    @property
    def transport_stream(self) -> TransportStream:
        """The stream carrying the ciphertext, as passed to the constructor."""
        return self._transport

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The :class:`ssl.SSLObject` doing the TLS work (for inspection)."""
        return self._engine.ssl_object

    @property
    def server_side(self) -> bool:
        """Whether this end is the TLS server."""
        return self._engine.ssl_object.server_side

    @property
    def server_hostname(self) -> str | None:
        """The host name given for SNI and certificate checking, if any."""
        return self._engine.ssl_object.server_hostname

    @property
    def context(self) -> ssl.SSLContext:
        """The :class:`ssl.SSLContext` this stream was created with."""
        return self._engine.ssl_object.context

    @property
    def https_compatible(self) -> bool:
        """Whether a missing close_notify is accepted (see the constructor)."""
        return self._https_compatible

    @property
    def session(self) -> ssl.SSLSession | None:
        """The TLS session, to pass as ``session=`` to a later connection.

        On TLS 1.3 the server sends the resumable session after the handshake,
        so read it after the client has received some data. Setting it is
        allowed before the handshake only.
        """
        return self._engine.ssl_object.session

    @session.setter
    def session(self, session: ssl.SSLSession | None) -> None:
        self._engine.ssl_object.session = session

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session."""
        self._require_handshake("session_reused")
        return self._engine.ssl_object.session_reused

    def cipher(self) -> tuple[str, str, int] | None:
        """The negotiated cipher as (name, protocol, secret bits)."""
        self._require_handshake("cipher()")
        return self._engine.ssl_object.cipher()

    def version(self) -> str | None:
        """The negotiated protocol version, such as ``"TLSv1.3"``."""
        self._require_handshake("version()")
        return self._engine.ssl_object.version()

    def selected_alpn_protocol(self) -> str | None:
        """The ALPN protocol both sides agreed on, or None."""
        self._require_handshake("selected_alpn_protocol()")
        return self._engine.ssl_object.selected_alpn_protocol()

    @overload
    def getpeercert(self, binary_form: Literal[False] = False) -> PeerCertificate | None: ...
    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...
    @overload
    def getpeercert(self, binary_form: bool) -> PeerCertificate | bytes | None: ...

    def getpeercert(self, binary_form: bool = False) -> PeerCertificate | bytes | None:
        """The peer's certificate, as :meth:`ssl.SSLSocket.getpeercert` gives it.

        A dict of its decoded fields (only when it was verified), or with
        ``binary_form=True`` its DER bytes; None if the peer sent none.
        """
        self._require_handshake("getpeercert()")
        return self._engine.ssl_object.getpeercert(binary_form)

    def get_channel_binding(self, cb_type: str = "tls-unique") -> bytes | None:
        """Channel binding data for ``cb_type`` (RFC 5929), or None."""
        self._require_handshake("get_channel_binding()")
        return self._engine.ssl_object.get_channel_binding(cb_type)

    def statistics(self) -> TLSStatistics:
        """Byte counts each way, handshake time, resumption and how it ended."""
        started, finished = self._handshake_started, self._handshake_finished
        return TLSStatistics(
            plaintext_sent=self._plaintext_sent,
            plaintext_received=self._plaintext_received,
            ciphertext_sent=self._ciphertext_sent,
            ciphertext_received=self._ciphertext_received,
            handshake_duration=None if started is None or finished is None else finished - started,
            session_reused=(
                self._engine.ssl_object.session_reused if self._engine.handshake_complete else None
            ),
            ended=self._ended,
        )

    def _end(self, how: ConnectionEnd) -> None:
        if self._ended is None:
            self._ended = how

    def _require_handshake(self, name: str) -> None:
        if not self._engine.handshake_complete:
            raise NeedHandshakeError(f"call do_handshake() before {name}")

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
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._handshook:
            await trio.lowlevel.cancel_shielded_checkpoint()
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
            await trio.lowlevel.cancel_shielded_checkpoint()

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
        with self._receive_conflict:
            if self._closed or (self._broken is not None and not self._engine.buffered_plaintext):
                # Plaintext decrypted before a failure is still authentic: it
                # is handed out before the failure is reported.
                self._check_usable()
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            else:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be at least 1")
            await trio.lowlevel.checkpoint_if_cancelled()
            engine = self._engine
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
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        return b""
                    await self._fail(exc, _TRUNCATED)
                except ssl.SSLError as exc:
                    await self._fail(exc, "TLS error while receiving")
                if engine.bytes_to_send:
                    # The read queued TLS output (a renegotiation or
                    # post-handshake reply).
                    if self._send_broken is not None or self._eof_sent:
                        engine.data_to_send()  # it can never be sent (rule 5)
                    elif not self._sending:
                        # Keep the plaintext in the engine meanwhile: a
                        # cancelled or failed send must not lose it.
                        if data:
                            engine.put_back(data)
                        yielded = await self._send_output_of_receive() or yielded
                        if data:
                            continue
                    # Otherwise the send lane's holder sends it (rule 2).
                if data is not None:
                    if data:
                        self._plaintext_received += len(data)
                        if self._changed is not None:
                            self._notify_change()  # a writer may wait for room (rule 7)
                    else:
                        self._end(ConnectionEnd.CLOSE_NOTIFY)
                    if not yielded:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                yielded = await self._receive_ciphertext() or yielded

    async def _receive_ciphertext(self) -> bool:
        """Feed the engine one transport receive (ours or another task's).

        Returns whether this task yielded to the scheduler.
        """
        count = self._receive_count
        while self._receiving:
            await self._wait_for_change()
            if self._receive_count != count:
                return True
            self._check_usable()
        self._receiving = True
        try:
            try:
                data, yielded = await self._transport_receive(TRANSPORT_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._raise_transport_error(exc, sending=False)
            if data:
                self._ciphertext_received += len(data)
                self._engine.receive_data(data)
            else:
                self._engine.receive_eof()
            self._receive_count += 1
        finally:
            self._receiving = False
            if self._changed is not None:
                self._notify_change()
        return yielded

    async def _receive_through_transport(self, max_bytes: int) -> tuple[bytes | bytearray, bool]:
        return await self._transport.receive_some(max_bytes), True

    async def _send_through_transport(self, data: bytes) -> bool:
        await self._transport.send_all(data)
        return True

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
        with self._send_conflict:
            if self._closed or self._broken is not None or self._send_broken is not None:
                self._check_can_send()
            if self._eof_sent:
                self._check_can_send()
            await trio.lowlevel.checkpoint_if_cancelled()
            engine = self._engine
            if not self._handshook:
                await self._ensure_handshake()
                self._check_can_send()
                if not data:
                    return
            elif not data:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            view = memoryview(data)
            if view.itemsize != 1 or not view.c_contiguous:
                view = view.cast("B")
            yielded = await self._acquire_send_lane()
            lane_held = True
            sent_since_yield = 0
            try:
                while view:
                    chunk = view[:PLAINTEXT_CHUNK]
                    try:
                        written = engine.write(chunk)
                    except ssl.SSLError as exc:
                        await self._fail(exc, "TLS error while sending", lane_held=True)
                    if written is None:
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
                    view = view[written:]
                    self._plaintext_sent += written
                    if await self._send_queued_holding_lane():
                        yielded = True
                        sent_since_yield = 0
                    else:
                        sent_since_yield += written
                        if view and sent_since_yield >= YIELD_EVERY:
                            # The socket took everything at once: let other
                            # tasks run and cancellation in, as SocketStream does.
                            sent_since_yield = 0
                            await self._checkpoint_between_chunks()
                            yielded = True
            finally:
                if lane_held:
                    self._release_send_lane()
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def _wait_for_renegotiation(self) -> None:
        """Let the peer's renegotiation reply in, while a write waits for it.

        Application data that arrives first is set aside in the engine for
        receive_some() (engine rule 7). Past a limit, wait for the receiving
        task to take it rather than read more: memory stays bounded even if
        the peer floods us meanwhile.
        """
        if self._engine.buffered_plaintext >= SET_ASIDE_LIMIT:
            await self._wait_for_change()
        else:
            await self._receive_ciphertext()

    async def _checkpoint_between_chunks(self) -> None:
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            # Part of the caller's data went out: the same as a half-written send.
            self._end(ConnectionEnd.CANCELLED)
            self._send_broken = (_SEND_HALF_WRITTEN, None)
            raise

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
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._acquire_send_lane()
            try:
                try:
                    await self._transport.wait_send_all_might_not_block()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._raise_transport_error(exc, sending=True)
                await self._send_queued_holding_lane()
            except BaseException:
                # Other tasks may have queued ciphertext behind us, trusting
                # the lane holder to send it (rule 2): do, before leaving.
                await self._send_stranded_output()
                raise
            finally:
                self._release_send_lane()

    async def send_eof(self) -> None:
        """Send close_notify and keep receiving (a TLS 1.3 half-close).

        The peer's receive_some() returns ``b""`` and the peer can go on
        sending to us. Afterwards send_all() raises ClosedResourceError;
        calling send_eof() again does nothing.

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
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._eof_sent:
                await trio.lowlevel.cancel_shielded_checkpoint()
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
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def _acquire_send_lane(self, *, closing: bool = False) -> bool:
        """Take the send lane, waiting for it; return whether this yielded.

        ``closing``: for our own close_notify, which may go out after
        send_eof() or unwrap() has stopped ordinary sending.
        """
        yielded = False
        while self._sending:
            await self._wait_for_change()
            self._check_sending_direction() if closing else self._check_can_send()
            yielded = True
        self._sending = True
        return yielded

    def _release_send_lane(self) -> None:
        self._sending = False
        if self._changed is not None:
            self._notify_change()

    async def _send_queued(self, *, closing: bool = False) -> bool:
        """Send the engine's queued ciphertext, waiting for the send lane.

        Returns whether this task yielded to the scheduler.
        """
        self._check_sending_direction() if closing else self._check_can_send()
        yielded = await self._acquire_send_lane(closing=closing)
        try:
            sent_yielded = await self._send_queued_holding_lane()
        finally:
            self._release_send_lane()
        return yielded or sent_yielded

    async def _send_output_of_receive(self) -> bool:
        """Send what a read queued; the send lane must be free.

        A send that fails breaks only the sending direction: receiving goes
        on, dropping output that can never be sent (rule 5). Returns whether
        this task yielded.
        """
        self._sending = True
        try:
            return await self._send_queued_holding_lane()
        except trio.BrokenResourceError:
            if self._broken is not None:
                raise
            return True
        finally:
            self._release_send_lane()

    async def _send_stranded_output(self) -> None:
        """Before a lane holder leaves on an exception, send what others queued.

        Shielded and bounded like an alert: it runs even while the holder is
        being cancelled, and a deadline stops it from waiting on the peer.
        """
        if not self._engine.bytes_to_send or self._send_broken is not None or self._closed:
            return
        with (
            trio.CancelScope(shield=True, deadline=trio.current_time() + ALERT_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self._send_queued_holding_lane()

    async def _send_queued_holding_lane(self) -> bool:
        """Send everything queued; return whether this task yielded.

        A send cut short leaves an unknown part of the ciphertext on the wire:
        if handshake bytes were among it the whole stream is broken (the peer
        can never finish the handshake), otherwise the sending direction.
        """
        engine = self._engine
        send = self._transport_send
        yielded = False
        try:
            while engine.bytes_to_send:
                chunk = engine.data_to_send(SEND_WINDOW)
                yielded = await send(chunk) or yielded
                self._ciphertext_sent += len(chunk)
        except trio.Cancelled:
            self._end(ConnectionEnd.CANCELLED)
            if self._handshake_output_queued:
                self._broken = (_HANDSHAKE_HALF_WRITTEN, None)
            else:
                self._send_broken = (_SEND_HALF_WRITTEN, None)
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._raise_transport_error(exc, sending=True)
        self._handshake_output_queued = False
        return yielded

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
                        with trio.move_on_after(ALERT_TIMEOUT):
                            final_bytes = engine.data_to_send()
                            await self._transport_send(final_bytes)
                            self._ciphertext_sent += len(final_bytes)
                except (ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError):
                    # The peer may already be gone; close_notify is a courtesy.
                    pass
                finally:
                    self._sending = False
        finally:
            await self._transport.aclose()

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
        """
        with self._receive_conflict, self._send_conflict:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
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
                    await self._fail(exc, _TRUNCATED)
                except ssl.SSLError as exc:
                    await self._fail(exc, "TLS error during unwrap()")
                self._eof_sent = True  # our close_notify is queued: no more sending
                if engine.bytes_to_send:
                    yielded = await self._send_queued(closing=True) or yielded
                if finished:
                    break
                yielded = await self._receive_ciphertext() or yielded
            if engine.buffered_plaintext:
                # The peer sent data before its close_notify that nobody
                # received. Keep it readable rather than drop it.
                if not yielded:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                raise UnreadDataError(
                    f"the peer sent {engine.buffered_plaintext} bytes of data before its "
                    "close_notify that were never received: call receive_some() until it "
                    "returns b'', then unwrap() again"
                )
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._closed = True
            self._end(ConnectionEnd.UNWRAPPED)
            self._notify_change()
            return self._transport, engine.take_trailing_data()

    # --------------------------------------------------------------- helpers

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this MemoryBIOStream was closed")
        broken = self._broken
        if broken is not None:
            raise trio.BrokenResourceError(broken[0]) from broken[1]

    def _check_can_send(self) -> None:
        self._check_usable()
        if self._eof_sent:
            raise trio.ClosedResourceError(
                "send_eof() or unwrap() was called: this stream can no longer send"
            )
        broken = self._send_broken
        if broken is not None:
            raise trio.BrokenResourceError(broken[0]) from broken[1]

    def _check_sending_direction(self) -> None:
        self._check_usable()
        broken = self._send_broken
        if broken is not None:
            raise trio.BrokenResourceError(broken[0]) from broken[1]

    async def _wait_for_change(self) -> None:
        event = self._changed
        if event is None:
            event = self._changed = trio.Event()
        await event.wait()
        if self._closed:
            raise trio.ClosedResourceError("this MemoryBIOStream was closed while this task waited")

    def _notify_change(self) -> None:
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    def _raise_transport_error(self, exc: BaseException, *, sending: bool) -> NoReturn:
        """Record a transport failure and raise it as BrokenResourceError.

        A failed receive breaks the stream; a failed send breaks the sending
        direction only, unless handshake bytes were in flight.
        """
        if self._closed:
            raise trio.ClosedResourceError("this MemoryBIOStream was closed") from None
        self._end(ConnectionEnd.TRANSPORT_FAILED)
        message = f"the transport failed while {'sending' if sending else 'receiving'}: {exc!r}"
        if sending and not self._handshake_output_queued:
            if self._send_broken is None:
                self._send_broken = (message, exc)
        elif self._broken is None:
            self._broken = (message, exc)
        raise trio.BrokenResourceError(message) from exc

    async def _fail(self, exc: ssl.SSLError, what: str, *, lane_held: bool = False) -> NoReturn:
        """Record a TLS failure, send the fatal alert (best effort), raise."""
        message = f"{what}: {describe_tls_error(exc)}"
        self._end(
            ConnectionEnd.TRUNCATED if isinstance(exc, TLSTruncationError) else ConnectionEnd.ALERT
        )
        if self._broken is None:
            self._broken = (message, exc)
        engine = self._engine
        if (
            engine.bytes_to_send
            and not self._closed
            and self._send_broken is None
            and (lane_held or not self._sending)
        ):
            # The alert tells the peer why, instead of leaving it hanging.
            # Bounded and shielded: it is sent even if we are being cancelled.
            self._sending = True
            try:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + ALERT_TIMEOUT):
                    alert = engine.data_to_send()
                    await self._transport_send(alert)
                    self._ciphertext_sent += len(alert)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                if not lane_held:
                    self._release_send_lane()
        raise trio.BrokenResourceError(message) from exc


_TRUNCATED: Final = (
    "TLS stream truncated (pass https_compatible=True only if the protocol on top "
    "detects truncation itself)"
)
_HANDSHAKE_HALF_WRITTEN: Final = (
    "the TLS handshake was cancelled while its ciphertext was being written to the "
    "transport; an unknown part of it reached the peer, so this connection cannot "
    "continue: open a new one"
)
_SEND_HALF_WRITTEN: Final = (
    "an earlier send on this stream was cancelled while writing ciphertext to the "
    "transport; an unknown part of it reached the peer, so nothing more can be sent "
    "(receiving still works)"
)
