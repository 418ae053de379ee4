"""Open TLS connections and serve them over TCP, as trio's SSL helpers do.

The names and arguments follow trio's ``open_ssl_over_tcp_stream``,
``open_ssl_over_tcp_listeners`` and ``serve_ssl_over_tcp``, so code can switch
by renaming the function. As with trio's, the default client context refuses
to ignore a missing close_notify. What they add: the server runs every
handshake under a deadline before calling the handler, so a client that
connects and never speaks costs one socket for at most ``handshake_timeout``
seconds and never stops the server. The handshake policy (deadline, logging,
error hook, close) is the listener's (``_listener.handshake_or_close``), so
``serve_tls_over_tcp`` and ``MemoryBIOListener.serve`` cannot drift apart.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from ._listener import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    MemoryBIOListener,
    check_handshake_timeout,
    handshake_or_close,
)
from ._stream import MemoryBIOStream

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "default_client_context",
    "open_tls_over_tcp_listeners",
    "open_tls_over_tcp_stream",
    "serve_tls_over_tcp",
]

TLSStream = MemoryBIOStream[trio.SocketStream]


def default_client_context() -> ssl.SSLContext:
    """The context used when none is given: verify certificates and host names.

    It is :func:`ssl.create_default_context` with ``OP_IGNORE_UNEXPECTED_EOF``
    cleared, so that a transport ending without close_notify is reported as
    truncation rather than taken for a clean end (some Python builds set it).
    """
    context = ssl.create_default_context()
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    return context


async def open_tls_over_tcp_stream(
    host: str | bytes,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    https_compatible: bool = False,
    happy_eyeballs_delay: float | None = 0.25,
    session: ssl.SSLSession | None = None,
) -> TLSStream:
    """Open a TCP connection and wrap it in TLS (without handshaking yet).

    Args:
        host: The host to connect to; also the name sent in SNI and checked
            against the certificate.
        port: The TCP port.
        ssl_context: Defaults to :func:`default_client_context`.
        https_compatible: See :class:`MemoryBIOStream`.
        happy_eyeballs_delay: See :func:`trio.open_tcp_stream`.
        session: A session to resume.

    Raises:
        OSError: the TCP connection failed.
        ValueError: ``session`` belongs to another context.
        ssl.SSLError: ``ssl_context`` cannot make client connections.

    On cancellation, or if the TLS stream cannot be made, the TCP connection
    is not opened (or is closed).
    """
    if ssl_context is None:
        ssl_context = default_client_context()
    server_hostname = host.decode("ascii") if isinstance(host, bytes) else host
    tcp_stream = await trio.open_tcp_stream(host, port, happy_eyeballs_delay=happy_eyeballs_delay)
    try:
        return MemoryBIOStream(
            tcp_stream,
            ssl_context,
            server_hostname=server_hostname,
            https_compatible=https_compatible,
            session=session,
        )
    except BaseException:
        tcp_stream.socket.close()  # synchronous: nothing can interrupt it
        raise


async def open_tls_over_tcp_listeners(
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    host: str | bytes | None = None,
    https_compatible: bool = False,
    backlog: int | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    on_handshake_error: (
        Callable[[TLSStream, trio.BrokenResourceError | trio.TooSlowError], object] | None
    ) = None,
    offload_handshake: bool = False,
) -> list[MemoryBIOListener[trio.SocketStream]]:
    """Open TCP listeners on ``port`` and wrap each in a :class:`MemoryBIOListener`.

    ``handshake_timeout``, ``on_handshake_error`` and ``offload_handshake``
    are given to each listener (see :class:`MemoryBIOListener`: its
    :meth:`~MemoryBIOListener.serve` applies the first two, its accept() does
    not).

    Raises:
        ValueError: ``handshake_timeout`` is negative or NaN (checked before
            listening).
        OSError: as :func:`trio.open_tcp_listeners` raises it.
    """
    check_handshake_timeout(handshake_timeout)
    tcp_listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    return [
        MemoryBIOListener(
            listener,
            ssl_context,
            https_compatible=https_compatible,
            handshake_timeout=handshake_timeout,
            on_handshake_error=on_handshake_error,
            offload_handshake=offload_handshake,
        )
        for listener in tcp_listeners
    ]


async def serve_tls_over_tcp(
    handler: Callable[[TLSStream], Awaitable[object]],
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    host: str | bytes | None = None,
    https_compatible: bool = False,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    on_handshake_error: (
        Callable[[TLSStream, trio.BrokenResourceError | trio.TooSlowError], object] | None
    ) = None,
    offload_handshake: bool = False,
    task_status: trio.TaskStatus[list[MemoryBIOListener[trio.SocketStream]]] = (
        trio.TASK_STATUS_IGNORED
    ),
) -> NoReturn:
    """Serve TLS connections on ``port`` forever, one handler task each.

    Each connection's handshake must finish within ``handshake_timeout``
    seconds (None: no limit) before ``handler`` is called with the stream. A
    failed or timed-out handshake closes that connection only, and is logged
    on the ``trio_membio`` logger: at DEBUG for a client that connected and
    left without sending a byte (a port probe or health check), else at
    WARNING; the record carries the exception as ``tls_error``. Then
    ``on_handshake_error`` is called with the stream and the exception, as
    :class:`MemoryBIOListener` describes. The stream is closed when the
    handler returns. ``task_status.started`` gets the listeners (to learn the
    port when ``port`` is 0). ``offload_handshake=True`` runs each
    handshake's expensive step in a worker thread when it is worth it (see
    :class:`MemoryBIOStream` and :doc:`performance`).

    Runs until cancelled; every connection task is cancelled with it (with
    ``handler_nursery``, they belong to that nursery instead).

    Raises:
        ValueError: ``handshake_timeout`` is negative or NaN (checked before
            listening, not when the first client connects).
        OSError: the port could not be opened.
        Exception: whatever ``handler`` or ``on_handshake_error`` raises, as
            :func:`trio.serve_listeners` propagates it.
    """
    listeners = await open_tls_over_tcp_listeners(
        port,
        ssl_context,
        host=host,
        https_compatible=https_compatible,
        backlog=backlog,
        handshake_timeout=handshake_timeout,
        on_handshake_error=on_handshake_error,
        offload_handshake=offload_handshake,
    )

    async def handshake_then_handle(stream: TLSStream) -> None:
        if await handshake_or_close(stream, handshake_timeout, on_handshake_error):
            await handler(stream)

    await trio.serve_listeners(
        handshake_then_handle,
        listeners,
        handler_nursery=handler_nursery,
        task_status=task_status,
    )
