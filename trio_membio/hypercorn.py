"""Serve an ASGI (or WSGI) app with hypercorn's trio worker over MemoryBIOStream.

Use :func:`serve` where you would use ``hypercorn.trio.serve``: the same
arguments, the same behaviour, but every TLS connection is a
:class:`~trio_membio.MemoryBIOStream` instead of a :class:`trio.SSLStream`.

Theory of operation
===================

Why a function and not a hook: hypercorn's trio worker
(``hypercorn.trio.run.worker_serve``, which ``hypercorn.trio.serve`` calls)
builds its TLS listeners itself, as ``trio.SSLListener(...)``, and has no
parameter, config option or hook that chooses the listener or stream class.
Without this module the only way in is to replace ``trio.SSLListener`` for
the whole process, which changes every other library's listeners too.

So :func:`serve` is that worker's serving loop, with one change: TLS sockets
are wrapped in :class:`~trio_membio.MemoryBIOListener` (lazy handshakes, as
trio.SSLListener's, so hypercorn's ``TCPServer`` still runs each handshake
itself under ``config.ssl_handshake_timeout``). Everything else (lifespan
startup and shutdown, the shutdown trigger, ``max_requests``, the graceful
timeout, statsd) is hypercorn's own objects, called as the worker calls them.
The loop is copied from hypercorn 0.18.0; those objects (``TCPServer``,
``Lifespan``, ``WorkerContext``) are not hypercorn's documented API, so this
is the one module that imports them, and tests/test_recipe_hypercorn.py pins
the copied worker by a digest of its source: when hypercorn changes it, that
test fails and says what to compare.

hypercorn's ``TCPServer`` ends a connection with ``send_eof()`` on any
:class:`trio.abc.HalfCloseableStream`; MemoryBIOStream's sends close_notify
on every TLS version, so that works on TLS 1.2 and 1.3 alike.

Not supported: HTTP/3 (``config.quic_bind``). QUIC carries its own TLS, so
MemoryBIOStream has nothing to do there; serve it with ``hypercorn.trio.serve``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from functools import partial
from random import randint
from typing import Literal, cast

import trio

try:
    from hypercorn.config import Config
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.statsd import StatsdLogger
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import AppWrapper, ConnectionState, Framework, LifespanState
    from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app
except ImportError as _hypercorn_missing:  # pragma: no cover - run in a subprocess by a test
    raise ImportError(
        "trio_membio.hypercorn needs hypercorn; install it with: "
        "pip install 'trio-membio[hypercorn]'",
        name=__name__,
    ) from _hypercorn_missing

from ._listener import MemoryBIOListener

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["serve"]


async def serve(
    app: Framework,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    mode: Literal["asgi", "wsgi"] | None = None,
) -> None:
    """Serve ``app`` as ``hypercorn.trio.serve`` does, TLS over MemoryBIOStream.

    The arguments are ``hypercorn.trio.serve``'s. TLS is on when the config
    has a ``certfile`` and ``keyfile`` (hypercorn's rule); the TLS context is
    ``config.create_ssl_context()``, so ciphers, ALPN (``h2`` and
    ``http/1.1`` by default), client certificates and the TLS 1.2 minimum are
    configured as for hypercorn. ``config.bind`` is served with TLS when it
    is on, ``config.insecure_bind`` without.

    Args:
        app: The ASGI (or, with ``mode="wsgi"``, WSGI) application.
        config: A ``hypercorn.config.Config``.
        shutdown_trigger: When the awaitable it returns finishes, the server
            shuts down gracefully (see ``config.graceful_timeout``).
        task_status: Gets the bound addresses (``https://127.0.0.1:8443``,
            ...) once the server accepts connections, for ``nursery.start``.
        mode: Force ASGI or WSGI instead of hypercorn's guess.

    Returns when shut down by ``shutdown_trigger`` or by the app's
    ``max_requests``. On cancellation, open connections are cancelled after
    ``config.graceful_timeout`` at most, and the lifespan shutdown runs.

    Raises:
        ValueError: ``config.quic_bind`` is set (HTTP/3 has its own TLS).
        OSError: a bind address could not be opened.
        Exception: what hypercorn raises: a lifespan startup failure, or an
            error of the app's that hypercorn does not contain.
    """
    if config.quic_bind:
        raise ValueError(
            "trio_membio.hypercorn.serve serves TCP only: HTTP/3 (config.quic_bind) carries "
            "its own TLS; serve it with hypercorn.trio.serve"
        )
    await _worker_serve(
        wrap_app(app, config.wsgi_max_body_size, mode),
        config,
        shutdown_trigger,
        task_status=task_status,
    )


async def _worker_serve(
    app: AppWrapper,
    config: Config,
    shutdown_trigger: Callable[[], Awaitable[object]] | None,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # hypercorn 0.18.0's hypercorn.trio.run.worker_serve, without its
    # ``sockets`` argument (for multi-process workers) and QUIC, and with
    # MemoryBIOListener for trio.SSLListener. Keep it close to the original,
    # so that comparing them stays easy when the pin test fails.
    config.set_statsd_logger_class(StatsdLogger)

    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    max_requests = None
    if config.max_requests is not None:
        max_requests = config.max_requests + randint(0, config.max_requests_jitter)
    context = WorkerContext(max_requests)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
                sock.listen(config.backlog)

            ssl_context = config.create_ssl_context()
            listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
            binds = []
            for sock in sockets.secure_sockets:
                assert ssl_context is not None  # secure sockets exist only with TLS on
                listeners.append(
                    MemoryBIOListener(
                        trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                        ssl_context,
                        https_compatible=True,
                    )
                )
                bind = repr_socket_addr(sock.family, sock.getsockname())
                binds.append(f"https://{bind}")
                await config.log.info(f"Running on https://{bind} (CTRL + C to quit)")

            for sock in sockets.insecure_sockets:
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                bind = repr_socket_addr(sock.family, sock.getsockname())
                binds.append(f"http://{bind}")
                await config.log.info(f"Running on http://{bind} (CTRL + C to quit)")

            # One state for every connection, copied once, as the worker does.
            state = ConnectionState(lifespan_state.copy())

            async def handle(stream: trio.abc.Stream) -> None:
                # TCPServer is annotated for trio.SSLStream but uses only what
                # MemoryBIOStream has with the same meaning (do_handshake,
                # selected_alpn_protocol, transport_stream.socket, send_all,
                # receive_some, send_eof, aclose); a plain SocketStream is
                # told apart by the AttributeError it gets.
                tls_stream = cast("trio.SSLStream[trio.SocketStream]", stream)
                await TCPServer(app, config, context, state, tls_stream)

            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)

                    nursery.start_soon(
                        partial(
                            trio.serve_listeners, handle, listeners, handler_nursery=server_nursery
                        )
                    )

                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None  # the shutdown part is no error
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
