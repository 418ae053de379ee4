"""MemoryBIOStream: the trio adapter around the sans-I/O TLS engine.

Theory of operation
===================

The engine (``_engine.py``) decides what bytes move; this module decides when,
in which task, and what happens on cancellation. The stream owns three
things and inherits none of them: the engine, a
:class:`~trio_membio._transport.Transport` (the one funnel every transport
byte passes through, the send and receive lanes, the stop of each direction;
its rules are numbered in ``_transport.py``), and a
:class:`~trio_membio._connection_info.ConnectionInfo` for what the handshake
negotiated. Every state the stream can be in is listed in ``_state.py``: the
lifecycle (changed only by :meth:`MemoryBIOStream._enter`) and each
direction's stop (changed only by ``Transport.stop``). On top of the
transport's rules, this module's are:

1. **One handshake driver.** The first task that needs the handshake drives
   it (HANDSHAKING); the others wait for the driver's *outcome*, not for the
   engine: the engine finishes before its final flight is on the wire. If the
   driver is cancelled while waiting for the peer's bytes, nothing was lost
   and a waiter takes over. If it fails, the failure is recorded and every
   waiter raises it. If it is cut short while its ciphertext was being
   written, an unknown part reached the peer, and the stream is broken with a
   message that says so.

2. **No plaintext is lost.** receive_some() returns everything already
   decrypted, up to ``max_bytes``. If its read also queued TLS output (a
   renegotiation or post-handshake reply), the plaintext is handed out
   first; the output goes out on the socket at once as far as it fits (the
   rest with the next call that waits for the peer), on other transports
   from a task of its own (transport rule 5).

3. **send_all() holds a bounded window.** It encrypts a chunk, sends it, and
   only then encrypts the next, so memory does not grow with the payload; it
   yields to other tasks at least every ``YIELD_EVERY`` bytes even when the
   transport never blocks. Once any of its data is encrypted, a cancellation
   stops the sending direction: the caller cannot know what reached the peer,
   and a retry would duplicate it.

4. **aclose() waits for nobody.** It marks the stream closed, wakes every
   parked task (they raise ClosedResourceError), sends close_notify only if
   the send lane is free (bounded), and closes the transport, which wakes any
   task blocked inside it. After our own fatal alert on a TCP transport it
   first half-closes and drains input for a bounded time, so the peer reads
   the alert instead of a connection reset.
"""

from __future__ import annotations

import logging
import operator
import ssl
from typing import Final, Generic, Literal, TypeVar, cast, final, overload

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from ._conflict import ConflictDetector
from ._connection_info import ConnectionInfo, PeerCertificate
from ._engine import TLSEngine, TLSTruncationError
from ._errors import UnreadDataError, encode_hostname
from ._offload import HandshakeOffload
from ._operations import (
    PLAINTEXT_CHUNK,
    authenticate_client,
    drive_handshake,
    handle_read_output,
    send_chunked,
    shut_down_both_ways,
)
from ._state import CLOSED, EOF_SENT, Lifecycle, StopKind
from ._statistics import ConnectionEnd, TLSStatistics
from ._trace import TraceCallback, TracingEngine, log_trace_event, trace_logger
from ._transport import ALERT_TIMEOUT, TRUNCATED, Transport

__all__ = ["MemoryBIOStream", "PeerCertificate"]

#: receive_some() returns at most this much when max_bytes is None.
DEFAULT_RECEIVE_SIZE: Final = 65536
TransportStream = TypeVar("TransportStream", bound=trio.abc.Stream, covariant=True)


@final
class MemoryBIOStream(trio.abc.HalfCloseableStream, Generic[TransportStream]):
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
        initial_data: Bytes already read from ``transport_stream`` that
            belong to the TLS stream: a server that read a ``STARTTLS`` line
            (SMTP, IMAP, XMPP, PostgreSQL's SSLRequest) or peeked at the first
            bytes to tell TLS from plaintext on one port often holds the start
            of the ClientHello already. They are fed to TLS before anything
            is read from the transport (trio issue #195).
        offload_handshake: Server side: run the handshake's expensive step
            (answering the ClientHello, with the private-key signature) in a
            worker thread of the library's own, when it is measured to be
            worth it (an RSA certificate, not ECDSA), so that a burst of new
            clients does not stall established connections. A cancellation
            then takes effect when the step ends (a millisecond or so). See
            :doc:`performance`. Ignored when ``trace`` is given.

    Any exception the transport raises (not only trio's own) stops the
    direction it happened in, and is raised as
    :exc:`trio.BrokenResourceError` chained from it; see
    :doc:`cancellation`.
    """

    # No __dict__: an idle stream costs only what it holds (trio's stream
    # ABCs and Generic declare empty __slots__ too).
    __slots__ = (
        "_engine",
        "_info",
        "_io",
        "_lifecycle",
        "_receive_conflict",
        "_send_conflict",
    )

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
        initial_data: bytes | bytearray | memoryview = b"",
        offload_handshake: bool = False,
    ) -> None:
        if isinstance(server_hostname, bytes):
            server_hostname = server_hostname.decode("ascii")
        elif server_hostname is not None:
            server_hostname = encode_hostname(server_hostname)
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
        self._engine = engine
        self._io = Transport(transport_stream, engine)
        self._info = ConnectionInfo(self._io, https_compatible=https_compatible)
        if offload_handshake:
            if not server_side:
                raise ValueError(
                    "offload_handshake is for servers: a client's handshake has no step "
                    "expensive enough to be worth a thread"
                )
            if trace is None:  # a trace callback must run on the event-loop thread
                self._io.handshake_offload = HandshakeOffload(ssl_context)
        if initial_data:
            # Read from the transport before the stream existed (STARTTLS,
            # protocol sniffing): the start of the TLS data, fed first.
            self._io.ciphertext_received += len(initial_data)
            engine.receive_data(initial_data)
        self._lifecycle = Lifecycle.HANDSHAKE_PENDING
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
        """The stream carrying the ciphertext, as passed to the constructor.

        None once :meth:`unwrap` has handed it back, as on
        :class:`trio.SSLStream`: the TLS stream is done with it. (The
        annotation keeps the type users rely on while the stream is in use.)
        """
        if self._lifecycle is Lifecycle.UNWRAPPED:
            return None  # type: ignore[return-value]  # trio.SSLStream's behaviour
        return cast("TransportStream", self._io.stream)

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The :class:`ssl.SSLObject` doing the TLS work (for inspection)."""
        return self._info.ssl_object

    @property
    def server_side(self) -> bool:
        """Whether this end is the TLS server."""
        return self._info.server_side

    @property
    def server_hostname(self) -> str | None:
        """The host name given for SNI and certificate checking, if any."""
        return self._info.server_hostname

    @property
    def context(self) -> ssl.SSLContext:
        """The :class:`ssl.SSLContext` in use.

        Settable before the handshake starts, as on :class:`trio.SSLStream`
        (a server picking certificates per connection, say); afterwards
        setting it raises RuntimeError, because OpenSSL would apply only part
        of the new context to a handshake already under way.
        """
        return self._info.context

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        if self._io.handshake_started is not None:
            raise RuntimeError(
                "the TLS handshake has started: set context before the first "
                "do_handshake(), send_all() or receive_some()"
            )
        self._info.context = context

    @property
    def https_compatible(self) -> bool:
        """Whether a missing close_notify is accepted (see the constructor)."""
        return self._info.https_compatible

    @property
    def session(self) -> ssl.SSLSession | None:
        """The TLS session, to pass as ``session=`` to a later connection.

        On TLS 1.3 the server sends the resumable session after the handshake,
        so read it after the client has received some data. Setting it is
        allowed before the handshake only.
        """
        return self._info.session

    @session.setter
    def session(self, session: ssl.SSLSession | None) -> None:
        self._info.session = session

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session."""
        return self._info.session_reused

    def cipher(self) -> tuple[str, str, int] | None:
        """The negotiated cipher as (name, protocol, secret bits)."""
        return self._info.cipher()

    def version(self) -> str | None:
        """The negotiated protocol version, such as ``"TLSv1.3"``."""
        return self._info.version()

    def selected_alpn_protocol(self) -> str | None:
        """The ALPN protocol both sides agreed on, or None."""
        return self._info.selected_alpn_protocol()

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
        return self._info.getpeercert(binary_form)

    def get_channel_binding(self, cb_type: str = "tls-unique") -> bytes | None:
        """Channel binding data for ``cb_type`` (RFC 5929), or None."""
        return self._info.get_channel_binding(cb_type)

    def shared_ciphers(self) -> list[tuple[str, str, int]] | None:
        """The ciphers both ends support (server side), or None on the client.

        As ``ssl.SSLSocket.shared_ciphers()``; after the handshake only.
        """
        return self._info.shared_ciphers()

    def compression(self) -> str | None:
        """The compression algorithm in use, or None (OpenSSL 1.1+ never compresses)."""
        return self._info.compression()

    def selected_npn_protocol(self) -> str | None:
        """The protocol NPN selected, or None. NPN is deprecated: use ALPN.

        For code written against :class:`trio.SSLStream`; after the handshake
        only.
        """
        return self._info.selected_npn_protocol()

    def pending(self) -> int:
        """Decrypted bytes OpenSSL holds that a read can return without I/O.

        As ``ssl.SSLSocket.pending()``; the stream's own read-ahead (see
        :meth:`has_buffered_input`) is not included.
        """
        offload = self._io.handshake_offload
        if offload is not None and offload.running is not None:
            return 0  # a worker thread is in the handshake (nothing decrypted yet)
        return self._engine.ssl_object.pending()

    @property
    def requested_server_name(self) -> str | None:
        """The host name the client asked for in SNI (server side), or None.

        In the form the client sent it (IDNA A-labels, such as
        ``xn--fa-hia.de``); None on the client side, before the client's
        ClientHello has arrived (run :meth:`do_handshake` first), or if it
        sent no name (a client connecting to an IP address, say). Read from
        the ClientHello by the stream itself, so the context's
        ``sni_callback`` stays yours.
        """
        return self._info.requested_server_name()

    def statistics(self) -> TLSStatistics:
        """Byte counts each way, handshake time, resumption and how it ended."""
        return self._info.statistics()

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
            or self.pending()
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
                effort), the transport failed (chained from its exception),
                or the stream was already broken.
            trio.ClosedResourceError: the stream was closed, before or during
                the call.
        """
        self._check_usable()
        await checkpoint_if_cancelled()
        if self._lifecycle is Lifecycle.OPEN:
            await cancel_shielded_checkpoint()
            return
        await self._ensure_handshake()

    async def _ensure_handshake(self) -> None:
        """Make sure the handshake has finished (rule 1); always yields at least once."""
        engine = self._engine
        yielded = False
        while True:
            self._check_usable()
            if self._lifecycle is Lifecycle.HANDSHAKING:
                # Even if the engine has finished, the driver may still be
                # writing the final flight: wait for its outcome.
                await self._io.wait_for_change()
                yielded = True
                continue
            if engine.handshake_complete:
                # A final flight still queued (its driver was cancelled while
                # waiting for the send lane) goes out with the next send.
                break
            self._enter(Lifecycle.HANDSHAKING)
            try:
                yielded = await drive_handshake(self._io) or yielded
            finally:
                self._enter(Lifecycle.HANDSHAKE_PENDING)
        # The engine may have finished while its final flight was cut short
        # by a cancelled driver: that breaks the stream for every waiter too.
        self._check_usable()
        self._enter(Lifecycle.OPEN)
        if not yielded:
            await cancel_shielded_checkpoint()

    # --------------------------------------------------------------- receive

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Return the next plaintext from the peer: up to ``max_bytes`` bytes.

        Everything already decryptable is returned at once (several records,
        not one), up to ``max_bytes`` (default 64 KiB). Returns ``b""`` once
        the peer has sent close_notify (or, with ``https_compatible=True``,
        once the transport ends). Runs the handshake first if needed.

        On cancellation no plaintext or ciphertext is lost and the stream
        stays usable: TLS output a read queued (a renegotiation or
        post-handshake reply) is written to a socket without waiting, or sent
        by the stream's own task on other transports, so a cancellation never
        cuts it short.

        Raises:
            trio.BrokenResourceError: the peer sent bad or truncated data (the
                message says which, chained from the ssl error), the
                handshake failed, or the transport failed (chained from its
                exception).
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
            stop = self._io.receive_stop
            if stop is not None and (
                stop.kind is not StopKind.BROKEN or not self._engine.buffered_plaintext
            ):
                # Plaintext decrypted before a failure is still authentic: it
                # is handed out before the failure is reported.
                stop.raise_error()
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            else:
                if max_bytes.__class__ is not int:
                    max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be at least 1")
            await checkpoint_if_cancelled()
            yielded = False
            if self._lifecycle is not Lifecycle.OPEN:
                try:
                    await self._ensure_handshake()
                except trio.BrokenResourceError as exc:
                    truncated = isinstance(exc.__cause__, TLSTruncationError)
                    if truncated and self._info.https_compatible:
                        # trio.SSLStream's policy: in HTTPS mode an EOF during
                        # the handshake is just an EOF.
                        await trio.lowlevel.checkpoint()
                        return b""
                    raise
                yielded = True
            # Decrypt, receiving as needed, until there is something to
            # return. Inline, not a helper: this is the hottest path.
            engine = self._engine
            io = self._io
            output_bio = engine.output_bio
            while True:
                try:
                    data = engine.read(max_bytes)
                except TLSTruncationError as exc:
                    if self._info.https_compatible:
                        io.end(ConnectionEnd.TRUNCATED)
                        if not yielded:
                            await cancel_shielded_checkpoint()
                        return b""
                    await io.fail(exc, TRUNCATED)
                except ssl.SSLError as exc:
                    await io.fail(exc, "TLS error while receiving")
                if output_bio.pending:
                    handle_read_output(io, data)
                if data is not None:
                    if data:
                        io.plaintext_received += len(data)
                        if io.change_event is not None:
                            io.notify_change()  # a writer may wait for room (engine rule 7)
                    else:
                        io.end(ConnectionEnd.CLOSE_NOTIFY)
                    if not yielded:
                        await cancel_shielded_checkpoint()
                    return data
                yielded = await io.receive_ciphertext() or yielded
        finally:
            conflict.in_use = False

    # ------------------------------------------------------------------ send

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and send it to the peer.

        Runs the handshake first if needed. Large payloads are encrypted and
        sent a window at a time, so memory use does not grow with
        ``len(data)``.

        On cancellation: if the call was still waiting for its turn on the
        transport (or for a TLS 1.2 renegotiation) before any of its data was
        encrypted, nothing was sent and the stream is intact. Otherwise an
        unknown part of the data was sent, so the sending direction is broken
        (later sends raise BrokenResourceError); receiving keeps working.

        Raises:
            trio.BrokenResourceError: the sending direction or the whole
                stream is broken, the handshake failed, or the transport
                failed (chained from its exception).
            trio.ClosedResourceError: the stream was closed (or send_eof()
                was called), before or during the call.
            trio.BusyResourceError: another task is already sending.
        """
        conflict = self._send_conflict
        if conflict.in_use:
            raise trio.BusyResourceError(conflict.message)
        conflict.in_use = True
        try:
            io = self._io
            stop = io.send_stop
            if stop is not None:
                stop.raise_error()
            await checkpoint_if_cancelled()
            if self._lifecycle is not Lifecycle.OPEN:
                await self._ensure_handshake()
                io.check_sending()
                if not data:
                    return
            elif not data:
                await cancel_shielded_checkpoint()
                return
            data_type = type(data)
            if (
                (data_type is bytes or data_type is bytearray)
                and len(data) <= PLAINTEXT_CHUNK
                and not io.sending
                and not io.handshake_output_queued
            ):
                # The express lane: one chunk, encrypted and sent at once; on
                # a socket, tried without waiting. Inline, not a helper: this
                # is the hottest path, and an await costs a coroutine.
                engine = self._engine
                io.sending = True
                try:
                    try:
                        written = engine.write(data) or 0
                    except ssl.SSLError as exc:
                        await io.fail(exc, "TLS error while sending", lane_held=True)
                    io.plaintext_sent += written
                    if written == len(data):
                        if io.fast_path is None:
                            yielded = await io.send_queued_holding_lane()
                        else:
                            # What did not fit waits for room the ordinary way.
                            yielded = not io.send_now() and await io.send_queued_holding_lane()
                finally:
                    io.sending = False
                    if io.change_event is not None:
                        io.notify_change()
                if written == len(data):
                    if not yielded:
                        await cancel_shielded_checkpoint()
                    return
                # A TLS 1.2 renegotiation stopped it: the rest goes below.
            else:
                written = 0
            await send_chunked(io, data, written)
        finally:
            conflict.in_use = False

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport can probably take more data.

        See :meth:`trio.abc.SendStream.wait_send_all_might_not_block`.
        Cancelling it loses nothing.

        Raises:
            trio.BrokenResourceError: the sending direction is broken, or the
                transport failed (chained from its exception).
            trio.ClosedResourceError: the stream was closed.
            trio.BusyResourceError: another task is sending.
        """
        with self._send_conflict:
            io = self._io
            io.check_sending()
            await checkpoint_if_cancelled()
            await io.acquire_send_lane()
            try:
                await io.wait_send_all_might_not_block()
                await io.send_queued_holding_lane()
            except BaseException:
                # Other tasks may have queued ciphertext behind us (a fatal
                # alert among it), trusting the lane holder to send it
                # (transport rule 3): do, bounded.
                if io.may_send_queued():
                    await io.send_best_effort()
                raise
            finally:
                io.release_send_lane()

    async def send_eof(self) -> None:
        """Send close_notify and keep receiving (a TLS half-close).

        The peer's receive_some() returns ``b""`` and the peer can go on
        sending to us. Afterwards send_all() raises ClosedResourceError;
        calling send_eof() again does nothing (or raises BrokenResourceError
        if the first one was cut short or failed while writing).

        On every TLS version, so that code written against
        :class:`trio.abc.HalfCloseableStream` works whatever the peer
        negotiated. TLS 1.3 defines the half-close. Before it, RFC 5246 tells
        a peer that receives close_notify to answer with its own and discard
        what it had not sent yet; OpenSSL (and so Python's ssl) does not
        discard, but a strict TLS 1.2 peer may, so on TLS 1.2 do not count on
        data the peer had not sent before our close_notify reached it.

        On cancellation: before the close_notify was queued nothing changed;
        while it was being written the sending direction is broken.

        Raises:
            trio.BrokenResourceError: the sending direction or the stream is
                broken, the handshake failed, or the transport failed.
            trio.ClosedResourceError: the stream was closed.
            trio.BusyResourceError: another task is sending.
        """
        with self._send_conflict:
            io = self._io
            self._check_usable()
            await checkpoint_if_cancelled()
            stop = io.send_stop
            if stop is not None and stop.kind is StopKind.EOF_SENT:
                await cancel_shielded_checkpoint()
                return
            engine = self._engine
            if self._lifecycle is not Lifecycle.OPEN:
                await self._ensure_handshake()
            io.check_sending()
            yielded = await io.acquire_send_lane()
            try:
                try:
                    engine.send_close_notify()
                except ssl.SSLError as exc:
                    await self._io.fail(exc, "TLS error while sending close_notify", lane_held=True)
                io.stop(EOF_SENT, receiving=False)
                yielded = await io.send_queued_holding_lane() or yielded
            finally:
                io.release_send_lane()
            if not yielded:
                await cancel_shielded_checkpoint()

    # ------------------------------------------- post-handshake authentication

    async def request_client_certificate(self) -> PeerCertificate:
        """Ask the client for its certificate now, and return it once verified.

        TLS 1.3 post-handshake authentication (RFC 8446 section 4.6.2), for
        a server that needs a client certificate only for some requests
        (trio issue #741). The server's context must have
        ``post_handshake_auth = True`` and ``verify_mode = ssl.CERT_REQUIRED``
        (OpenSSL then asks for no certificate in the initial handshake, and a
        client that sends none here is an error rather than a silent wait),
        and trust the clients' CA; the client's context needs
        ``post_handshake_auth = True`` and its certificate. A
        MemoryBIOStream client answers on its own, in its next receive.

        Application data the client sends meanwhile is kept for
        :meth:`receive_some`. Holds both directions for the duration, like
        :meth:`unwrap`.

        On cancellation: the request stays open and nothing is lost; calling
        again waits for the same answer.

        Returns:
            The client's certificate, decoded (as :meth:`getpeercert`).

        Raises:
            RuntimeError: this is the client side, the connection is not TLS
                1.3, or the client did not offer post-handshake
                authentication; the stream is unaffected.
            ValueError: the server context's ``verify_mode`` is not
                ``CERT_REQUIRED``.
            trio.BrokenResourceError: the client sent no certificate or one
                that failed verification (chained from the ssl error; the
                fatal alert was sent), or the transport failed.
            trio.ClosedResourceError: the stream was closed.
            trio.BusyResourceError: another task is sending or receiving.
            UnreadDataError: the client sent 1 MiB of data before answering:
                receive it, then call again.
        """
        with self._receive_conflict, self._send_conflict:
            self._check_usable()
            await checkpoint_if_cancelled()
            engine = self._engine
            if not engine.ssl_object.server_side:
                raise RuntimeError("only a server can request the client's certificate")
            if self.context.verify_mode != ssl.CERT_REQUIRED:
                raise ValueError(
                    "request_client_certificate() needs the server context's verify_mode "
                    "to be ssl.CERT_REQUIRED (with post_handshake_auth = True)"
                )
            yielded = False
            if self._lifecycle is not Lifecycle.OPEN:
                await self._ensure_handshake()
                yielded = True
            version = engine.ssl_object.version()
            if version != "TLSv1.3":
                raise RuntimeError(
                    "post-handshake authentication needs TLS 1.3; this connection "
                    f"negotiated {version} (renegotiate instead, or require TLS 1.3)"
                )
            yielded = await authenticate_client(self._io) or yielded
            if not yielded:
                await cancel_shielded_checkpoint()
            certificate = engine.ssl_object.getpeercert()
            assert certificate is not None  # verified: CERT_REQUIRED
            return certificate

    # ----------------------------------------------------------------- close

    async def aclose(self) -> None:
        """Close the stream and its transport, without waiting for anyone.

        If no other task is sending (the stream's own sender of TLS replies
        does not count: close_notify goes out behind its bytes) and the
        handshake has finished, sends close_notify once (waiting at most a
        second for the transport to take it; never waiting for the peer's
        reply), then closes the transport.
        Otherwise closes the transport at once. After a fatal TLS alert of
        ours on a TCP transport, half-closes it and reads (discarding) for at
        most a second first, so that the peer reads the alert instead of a
        connection reset (not after the peer's alert: nothing of ours
        waits). Tasks blocked in this stream's methods wake up with
        ClosedResourceError. Calling aclose() again does nothing. With
        ``https_compatible=True`` no close_notify is sent. For a two-way TLS
        shutdown, use :meth:`unwrap`.

        On cancellation the transport is still closed (forcefully) and
        Cancelled is raised.
        """
        io = self._io
        if io.closed:
            await trio.lowlevel.checkpoint()
            return
        send_stop = io.send_stop
        # The stream's own sender (transport rule 5) holds the lane but sends
        # whatever is queued behind its bytes: close_notify can still go.
        background = io.background_sending
        can_send = (send_stop is None or send_stop.kind is StopKind.EOF_SENT) and (
            not io.sending or background is not None
        )
        self._close(ConnectionEnd.CLOSED_LOCALLY)
        engine = self._engine
        try:
            if can_send and engine.failure is None and engine.handshake_complete:
                try:
                    if self._info.https_compatible or engine.close_notify_sent:
                        # No close_notify, but held session tickets still go
                        # out (engine rule 5), so the client can resume.
                        engine.release_held_output()
                    else:
                        engine.send_close_notify()
                except ssl.SSLError:
                    pass  # close_notify is a courtesy; the peer may be gone
                else:
                    if background is not None:
                        with trio.move_on_after(ALERT_TIMEOUT):
                            await background.wait()
                    else:
                        await io.send_best_effort(shield=False)
            elif io.ended is ConnectionEnd.ALERT and io.fatal_alert_queued and not io.receiving:
                # Our alert must not be lost to a reset; a peer that sent
                # the alert has nothing of ours to read (rule 6).
                await io.linger()
        finally:
            offload = io.handshake_offload
            if offload is not None and offload.running is not None:
                # The worker's step cannot be stopped: let it end (a few ms)
                # before the transport and the stream go away.
                with trio.CancelScope(shield=True):
                    await offload.running.wait()
            await io.stream.aclose()

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
            io = self._io
            self._check_usable()
            await checkpoint_if_cancelled()
            engine = self._engine
            yielded = False
            if self._lifecycle is not Lifecycle.OPEN:
                await self._ensure_handshake()
                yielded = True
            finished, yielded = await shut_down_both_ways(io, yielded)
            if not yielded:
                await cancel_shielded_checkpoint()
            if engine.buffered_plaintext:
                # The peer sent data that nobody received. Keep it readable
                # rather than drop it.
                sent = (
                    "before its close_notify that were never received"
                    if finished
                    else "that were never received, and no close_notify yet"
                )
                raise UnreadDataError(
                    f"the peer sent {engine.buffered_plaintext} bytes of data {sent}: call "
                    "receive_some() until it returns b'', then unwrap() again"
                )
            transport = self.transport_stream
            self._close(ConnectionEnd.UNWRAPPED)
            return transport, engine.take_trailing_data()

    # ----------------------------------------------------------- transitions

    def _enter(self, lifecycle: Lifecycle) -> None:
        """Move to ``lifecycle``: the only place it changes (CLOSED and UNWRAPPED are final)."""
        if self._lifecycle is not Lifecycle.CLOSED and self._lifecycle is not Lifecycle.UNWRAPPED:
            self._lifecycle = lifecycle
            self._io.notify_change()

    def _close(self, how: ConnectionEnd) -> None:
        """aclose() or unwrap(): everything stops with ClosedResourceError."""
        self._io.end(how)
        self._enter(Lifecycle.UNWRAPPED if how is ConnectionEnd.UNWRAPPED else Lifecycle.CLOSED)
        self._io.stop(CLOSED)

    def _check_usable(self) -> None:
        stop = self._io.receive_stop
        if stop is not None:
            stop.raise_error()
