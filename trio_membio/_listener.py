"""MemoryBIOListener: a trio Listener that wraps accepted streams in TLS.

Theory of operation
===================

A TLS server has two waits per connection: for the TCP connection (accept)
and for the client's handshake, which a slow, silent or hostile client can
stretch without limit. They must not share a task, or one such client stops
every later one from being accepted. This module keeps them apart the way
trio.SSLListener does: :meth:`MemoryBIOListener.accept` only accepts and
wraps, and the handshake runs in the task that handles the connection, the
one :func:`trio.serve_listeners` (or the caller's own nursery) starts for it.

What trio.SSLListener leaves to every server, this module does once, in
:func:`handshake_or_close`: the handshake deadline, the report of a failure
(a log record, then the listener's ``on_handshake_error`` hook) and the
close. :meth:`MemoryBIOListener.serve` and :func:`serve_tls_over_tcp
<trio_membio.serve_tls_over_tcp>` both call it, so there is one
implementation of the policy.

A client that connects and leaves without sending a byte is a port probe (a
load balancer's health check, a scanner, ``nc -z``), not a TLS failure: it is
logged at DEBUG. Everything else that ends a handshake early is a WARNING.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Generic, NoReturn, TypeVar

import trio

from ._errors import clean_openssl_text
from ._stream import MemoryBIOStream

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "MemoryBIOListener",
    "check_handshake_timeout",
    "handshake_or_close",
]

logger = logging.getLogger("trio_membio")

#: Seconds a served connection may take to finish its TLS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 60.0

TransportStream = TypeVar("TransportStream", bound=trio.abc.Stream)

#: What a failed handshake is reported as: the stream's own error, or the
#: deadline's.
HandshakeError = trio.BrokenResourceError | trio.TooSlowError


class MemoryBIOListener(
    trio.abc.Listener[MemoryBIOStream[TransportStream]], Generic[TransportStream]
):
    """Accepts connections from ``transport_listener`` and wraps them in TLS.

    A drop-in for :class:`trio.SSLListener`: :meth:`accept` returns as soon as
    the transport connection is accepted, and the handshake runs on the
    stream's first use (or its ``do_handshake()``), in whichever task uses
    it. :meth:`serve` (and :func:`serve_tls_over_tcp`) run each connection in
    a task of its own and its handshake there under ``handshake_timeout``, so
    a slow or silent client costs one task and one socket for at most that
    long, and never delays another client.

    Why accept() does not handshake: trio's :meth:`~trio.abc.Listener.accept`
    returns one stream per call, so a handshake inside it would either run
    one client at a time (one silent client would stop the server) or
    overlap with other clients' in tasks that must live somewhere. Tasks
    that outlive the call need a nursery the caller never opened; tasks
    cancelled when the call returns would stall the handshakes still running
    between two calls (their deadline running meanwhile) and break the one of
    a client that reads slowly, whose handshake ciphertext was being written
    when the cancellation came (a handshake cut there cannot be resumed). The
    connection's own task has none of these problems: it exists anyway, its
    nursery is the caller's, and a deadline there covers exactly one client.
    Code that calls ``do_handshake()`` itself under its own deadline, as
    hypercorn does, keeps working unchanged.

    Args:
        transport_listener: The listener whose connections carry the TLS.
        ssl_context: The server-side context for every accepted connection.
        https_compatible: Passed to each :class:`MemoryBIOStream`.
        handshake_timeout: Seconds each handshake may take under
            :meth:`serve` (None: no limit). Not applied by :meth:`accept`
            alone: a stream you accept yourself handshakes when you use it,
            under your own deadline, as with trio.SSLListener.
        on_handshake_error: Called under :meth:`serve` when a handshake
            fails or misses its deadline, with the stream (not yet closed, so
            its :attr:`~MemoryBIOStream.transport_stream` still knows the
            peer) and the error: the :exc:`trio.BrokenResourceError` the
            handshake raised (chained from the ssl or transport error), or a
            :exc:`trio.TooSlowError` for the deadline. It runs after the
            failure is logged and before the stream is closed; the stream is
            closed whatever it does. It is a plain function so that it cannot
            hold a dead connection open; count, ban or hand the details to a
            task of yours from it. An exception it raises propagates (the
            stream is closed first): it is a bug, and trio does not hide bugs.
            ``stream.statistics().ciphertext_received == 0`` tells a port
            probe from a client that tried to speak TLS.
        offload_handshake: Given to each stream: run the handshake's
            expensive step in a worker thread when it is worth it (see
            :class:`MemoryBIOStream`).

    Raises:
        ValueError: ``handshake_timeout`` is negative or NaN.
    """

    def __init__(
        self,
        transport_listener: trio.abc.Listener[TransportStream],
        ssl_context: ssl.SSLContext,
        *,
        https_compatible: bool = False,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        on_handshake_error: (
            Callable[
                [MemoryBIOStream[TransportStream], trio.BrokenResourceError | trio.TooSlowError],
                object,
            ]
            | None
        ) = None,
        offload_handshake: bool = False,
    ) -> None:
        check_handshake_timeout(handshake_timeout)
        self.transport_listener = transport_listener
        self._offload_handshake = offload_handshake
        self._ssl_context = ssl_context
        self._https_compatible = https_compatible
        self._handshake_timeout = handshake_timeout
        self._on_handshake_error = on_handshake_error

    @property
    def handshake_timeout(self) -> float | None:
        """Seconds each handshake may take under :meth:`serve` (None: no limit)."""
        return self._handshake_timeout

    @property
    def on_handshake_error(
        self,
    ) -> (
        Callable[
            [MemoryBIOStream[TransportStream], trio.BrokenResourceError | trio.TooSlowError],
            object,
        ]
        | None
    ):
        """The hook :meth:`serve` calls when a handshake fails, or None."""
        return self._on_handshake_error

    async def accept(self) -> MemoryBIOStream[TransportStream]:
        """Accept the next connection and wrap it, without handshaking.

        ``handshake_timeout`` and ``on_handshake_error`` do not apply here
        (see the class description for why); :meth:`serve` applies them.

        On cancellation, no connection is accepted (as the transport
        listener's accept() guarantees).

        Raises:
            trio.ClosedResourceError: the listener was closed.
            OSError: as the transport listener raises it.
            ssl.SSLError: the context cannot serve (it is a client-side
                one); the accepted connection is closed.
        """
        transport_stream = await self.transport_listener.accept()
        try:
            return self.wrap(transport_stream)
        except BaseException:
            # A context that cannot serve (a client-side one, say).
            await trio.aclose_forcefully(transport_stream)
            raise

    def wrap(
        self,
        transport_stream: TransportStream,
        *,
        initial_data: bytes | bytearray | memoryview = b"",
    ) -> MemoryBIOStream[TransportStream]:
        """Wrap a connection as :meth:`accept` does, with this listener's settings.

        For a server that accepts and reads the first bytes itself: a
        ``STARTTLS`` command, or a peek that tells TLS from plaintext on one
        port. ``initial_data`` is what it read that belongs to TLS (the start
        of the ClientHello, often); see :class:`MemoryBIOStream`. No
        handshake yet, as with accept(); :meth:`serve`'s deadline and hook
        do not apply.

        Raises:
            ssl.SSLError: the context cannot serve (it is a client-side one).
        """
        return MemoryBIOStream(
            transport_stream,
            self._ssl_context,
            server_side=True,
            https_compatible=self._https_compatible,
            offload_handshake=self._offload_handshake,
            initial_data=initial_data,
        )

    async def serve(
        self,
        handler: Callable[[MemoryBIOStream[TransportStream]], Awaitable[object]],
        *,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[list[MemoryBIOListener[TransportStream]]] = (
            trio.TASK_STATUS_IGNORED
        ),
    ) -> NoReturn:
        """Serve connections forever: each in its own task, handshake first.

        :func:`trio.serve_listeners` over this listener, with each
        connection's handshake run in its task under ``handshake_timeout``
        before ``handler`` is called. A failed or timed-out handshake is
        logged on the ``trio_membio`` logger (DEBUG for a client that left
        without sending a byte, else WARNING, with the exception as the
        record's ``tls_error``), reported to ``on_handshake_error``, and
        closes that connection only. The stream is closed when ``handler``
        returns. ``task_status.started`` gets ``[self]``, as
        :func:`trio.serve_listeners` gives its listeners.

        Runs until cancelled; on cancellation every connection task started
        in the internal nursery is cancelled too (with ``handler_nursery``,
        they belong to that nursery instead).

        Raises:
            OSError: the transport listener's accept() failed with an error
                other than running out of file descriptors or memory (trio
                waits and retries those).
            Exception: whatever ``handler`` or ``on_handshake_error``
                raises, as :func:`trio.serve_listeners` propagates it.
        """
        timeout, on_error = self._handshake_timeout, self._on_handshake_error

        async def handshake_then_handle(stream: MemoryBIOStream[TransportStream]) -> None:
            if await handshake_or_close(stream, timeout, on_error):
                await handler(stream)

        await trio.serve_listeners(
            handshake_then_handle, [self], handler_nursery=handler_nursery, task_status=task_status
        )

    async def aclose(self) -> None:
        """Close the transport listener."""
        await self.transport_listener.aclose()


def check_handshake_timeout(handshake_timeout: float | None) -> None:
    """Raise ValueError for a deadline that would fail at the first client."""
    if handshake_timeout is not None and not handshake_timeout >= 0:
        raise ValueError(f"handshake_timeout must be >= 0 or None, not {handshake_timeout!r}")


async def handshake_or_close(
    stream: MemoryBIOStream[TransportStream],
    handshake_timeout: float | None,
    on_handshake_error: (
        Callable[[MemoryBIOStream[TransportStream], HandshakeError], object] | None
    ),
) -> bool:
    """Handshake under the deadline; on failure log, call the hook, close.

    Returns True if the handshake finished (the stream is ready for the
    handler), False if it failed or timed out (the stream is closed). The one
    implementation of the serving policy, for MemoryBIOListener.serve and
    serve_tls_over_tcp.
    """
    error: HandshakeError | None = None
    with trio.move_on_after(math.inf if handshake_timeout is None else handshake_timeout) as scope:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            error = exc
    if error is None:
        if not scope.cancelled_caught:
            return True
        # Only our own deadline: a cancellation from outside propagates.
        error = trio.TooSlowError(
            f"TLS handshake did not finish within {handshake_timeout} seconds"
        )
    try:
        _log_handshake_error(stream, error, handshake_timeout)
        if on_handshake_error is not None:
            on_handshake_error(stream, error)
    finally:
        # aclose(), not aclose_forcefully(): after a fatal alert it lingers
        # (bounded) so that the client reads the alert, not a reset.
        await stream.aclose()
    return False


def _log_handshake_error(
    stream: MemoryBIOStream[TransportStream], error: HandshakeError, timeout: float | None
) -> None:
    peer = _describe_peer(stream)
    if isinstance(error, trio.TooSlowError):
        logger.warning(
            "TLS handshake with %s timed out after %s seconds",
            peer,
            timeout,
            extra={"tls_error": error},
        )
    elif stream.statistics().ciphertext_received == 0:
        # Connected and left (FIN or reset) before a byte: a probe, not a
        # TLS client. One WARNING per health check would bury the real ones.
        logger.debug(
            "No TLS handshake with %s: it closed the connection without sending a byte",
            peer,
            extra={"tls_error": error},
        )
    else:
        # Not "failed: TLS handshake failed: ...", nor OpenSSL's codes.
        # Handlers that want the ssl error behind it find the exception in
        # tls_error.
        detail = clean_openssl_text(str(error).removeprefix("TLS handshake failed: "))
        logger.warning("TLS handshake with %s failed: %s", peer, detail, extra={"tls_error": error})


def _describe_peer(stream: MemoryBIOStream[TransportStream]) -> str:
    transport = stream.transport_stream
    if not isinstance(transport, trio.SocketStream):
        return "the peer"
    try:
        address = transport.socket.getpeername()
    except OSError:
        return "a peer that already left"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)
