"""``python -m trio_membio serve``: a TLS echo server or a minimal HTTPS server.

Theory of operation
===================

The server is :func:`serve_tls_over_tcp` with one handler per ``--mode``; it
runs every handshake under ``--handshake-timeout`` and logs failures on the
``trio_membio`` logger, which this command prints as ``warning`` lines.

serve_tls_over_tcp creates the streams, so ``--trace`` cannot give them a
callback: it enables the ``trio_membio.trace`` logger instead, and labels each
event with its connection, found by trio task (serve_listeners runs each
connection in its own task, and records are emitted in the task that caused
them).

Standard output is the log: ``listening on HOST:PORT (TLS, MODE)`` first,
flushed, so scripts can wait for it instead of sleeping; then a line per
connection and per HTTP request. SIGINT and SIGTERM stop the server cleanly
(exit status 0, throwaway certificate removed).

``--mode http`` is the small HTTP/1.1 server of ``_http_server.py``; it
speaks nothing else, so an ``--alpn`` other than ``http/1.1`` is refused.

A connection can fail in any way (a port probe, a client that closes
mid-handshake or rejects our certificate, a bug in a handler, a log line
that cannot be formatted): each failure costs that connection only, and is
logged. Nothing a client does stops the server; only a signal or
cancellation does.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import ssl
import tempfile
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

import trio

from .._errors import clean_openssl_text
from .._highlevel import DEFAULT_HANDSHAKE_TIMEOUT, serve_tls_over_tcp
from .._stream import MemoryBIOStream
from .._trace import TraceEvent, trace_logger
from ._common import (
    PROGRAM,
    CLIError,
    Console,
    Tracer,
    add_tls_options,
    apply_keylog,
    check_tls_options,
    describe_os_error,
    describe_tls_failure,
    load_cafile,
    load_cert_chain,
    pin_version,
    port_number,
    seconds,
    show_address,
    throwaway_authority,
    tls_hint,
)
from ._http_server import serve_http

if TYPE_CHECKING:
    from ._common import Commands

__all__ = ["add_parser", "check", "run"]

Stream = MemoryBIOStream[trio.SocketStream]
#: What ``--mode http`` can speak (see _http_server.py).
_HTTP_ALPN = "http/1.1"


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    """Add the ``serve`` command and its options to ``commands``."""
    parser = commands.add_parser(
        "serve",
        help="run a TLS echo server or a minimal HTTPS server",
        description="A TLS echo server, or with --mode http a minimal HTTPS server "
        "(HTTP/1.1: GET / and GET /bytes/N). Without --cert and --key it makes a throwaway "
        "certificate for localhost and 127.0.0.1 and writes its CA to a file.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--port", type=port_number, default=0, help="port; 0 (the default) picks one"
    )
    parser.add_argument("--cert", metavar="FILE", help="the server's certificate chain (PEM)")
    parser.add_argument("--key", metavar="FILE", help="the private key of --cert (PEM)")
    parser.add_argument(
        "--ca-out", metavar="PATH", help="where to write the throwaway CA (default: a temp dir)"
    )
    parser.add_argument(
        "--require-client-cert",
        action="store_true",
        help="refuse clients without a certificate issued by --cafile",
    )
    parser.add_argument("--cafile", metavar="FILE", help="CAs trusted for client certificates")
    parser.add_argument(
        "--mode",
        choices=["echo", "http"],
        default="echo",
        help="echo (the default), or http: HTTP/1.1 only",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="close connections that have not finished the handshake by then (default 60)",
    )
    add_tls_options(parser)
    return parser


def check(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Cross-check serve's options; a usage error exits with status 2."""
    check_tls_options(arguments, parser)
    if arguments.require_client_cert and arguments.cafile is None:
        parser.error("--require-client-cert needs --cafile FILE, the CA of the client certs")
    if arguments.ca_out is not None and arguments.cert is not None:
        parser.error("--ca-out is for the throwaway certificate; drop it or --cert/--key")
    if arguments.mode == "http":
        others = [name for name in arguments.alpn if name != _HTTP_ALPN]
        if others:
            parser.error(
                f"--mode http speaks only HTTP/1.1, not {others[0][:40]!r}: "
                f"drop --alpn, or give --alpn {_HTTP_ALPN}"
            )


async def run(
    arguments: argparse.Namespace,
    console: Console,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the server until SIGINT/SIGTERM (or cancellation); return 0."""
    with contextlib.ExitStack() as cleanup:
        context = _server_context(arguments, console, cleanup)
        apply_keylog(context, arguments.keylog, console)
        labels = _ConnectionLabels()
        cleanup.enter_context(_log_to(console, labels, trace=arguments.trace))
        mode: str = arguments.mode
        handler = partial(_handle, console=console, labels=labels, mode=mode)
        timeout = arguments.handshake_timeout or DEFAULT_HANDSHAKE_TIMEOUT
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(
                    partial(
                        serve_tls_over_tcp,
                        handler,
                        arguments.port,
                        context,
                        host=arguments.host,
                        handshake_timeout=timeout,
                    )
                )
            except OSError as exc:
                raise CLIError(
                    f"cannot listen on {arguments.host} port {arguments.port}: "
                    f"{describe_os_error(exc)} (try another --port, or 0 for any free one)"
                ) from None
            addresses = [
                listener.transport_listener.socket.getsockname()[:2] for listener in listeners
            ]
            shown = ", ".join(show_address(host, port) for host, port in addresses)
            with _stop_signals() as signals:
                # Announced only now, so that a signal sent by whoever waited
                # for this line is caught rather than fatal.
                console.say(f"listening on {shown} (TLS, {mode})")
                task_status.started(addresses)
                stopped_by = "stopped"
                async for number in signals:
                    stopped_by = f"{signal.Signals(number).name} received"
                    break
            nursery.cancel_scope.cancel()
    console.note(f"{PROGRAM}: {stopped_by}, server stopped")
    return 0


@contextlib.contextmanager
def _stop_signals() -> Iterator[AsyncIterator[int]]:
    """SIGINT and SIGTERM, when this is the main thread (else: never anything)."""
    if threading.current_thread() is not threading.main_thread():
        # Signals can only be caught in the main thread; whoever runs us in
        # another thread stops us by cancelling.
        send, receive = trio.open_memory_channel[int](0)
        with send, receive:
            yield receive
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        yield signals


# ----------------------------------------------------------------- TLS setup


def _server_context(
    arguments: argparse.Namespace, console: Console, cleanup: contextlib.ExitStack
) -> ssl.SSLContext:
    # Not create_default_context(CLIENT_AUTH): that would also trust the
    # system's CAs for client certificates, and --cafile should be the only ones.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pin_version(context, arguments.tls_version)
    if arguments.cert is not None:
        load_cert_chain(context, arguments.cert, arguments.key)
    else:
        _throwaway_certificate(context, arguments, console, cleanup)
    if arguments.cafile is not None:
        load_cafile(context, arguments.cafile)
        context.verify_mode = (
            ssl.CERT_REQUIRED if arguments.require_client_cert else ssl.CERT_OPTIONAL
        )
    alpn = arguments.alpn or ([_HTTP_ALPN] if arguments.mode == "http" else [])
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def _throwaway_certificate(
    context: ssl.SSLContext,
    arguments: argparse.Namespace,
    console: Console,
    cleanup: contextlib.ExitStack,
) -> None:
    names = ["localhost", "127.0.0.1", "::1"]
    if arguments.host not in (*names, "0.0.0.0", "::", ""):
        names.append(arguments.host)
    authority, leaf = throwaway_authority(
        *names,
        missing=CLIError(
            "the throwaway certificate needs trustme: pip install 'trio-membio[demo]', "
            "or pass --cert and --key"
        ),
    )
    leaf.configure_cert(context)
    path = arguments.ca_out
    if path is None:
        directory = tempfile.mkdtemp(prefix="trio_membio-")
        cleanup.callback(shutil.rmtree, directory, ignore_errors=True)
        path = os.path.join(directory, "ca.pem")
    try:
        authority.cert_pem.write_to_path(path)
    except OSError as exc:
        raise CLIError(f"cannot write the CA to --ca-out: {describe_os_error(exc)}") from None
    console.say(
        f"throwaway CA certificate in {path} "
        f"(trust it with: connect --cafile {path}, or curl --cacert {path})"
    )


# ------------------------------------------------------------------- logging


class _ConnectionLabels:
    """Numbers connections by the trio task they run in: ``conn 1``, ..."""

    def __init__(self) -> None:
        self._numbers: weakref.WeakKeyDictionary[trio.lowlevel.Task, int] = (
            weakref.WeakKeyDictionary()
        )
        self._count = 0

    def current(self) -> str:
        try:
            task = trio.lowlevel.current_task()
        except RuntimeError:  # not in a trio task: not a connection
            return ""
        number = self._numbers.get(task)
        if number is None:
            self._count += 1
            number = self._numbers[task] = self._count
        return f"conn {number}: "


class _ConsoleHandler(logging.Handler):
    """Prints the library's warnings, and its trace events, on stderr."""

    def __init__(self, console: Console, labels: _ConnectionLabels) -> None:
        super().__init__(logging.DEBUG)
        self._console = console
        self._labels = labels
        self._tracer = Tracer(console.err, labels.current)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._print(record)
        except Exception:
            # logging.Handler's contract: emit() never raises into the code
            # that logged (here, the server's connection task). Print what we
            # can without the formatting that failed.
            try:
                message = record.getMessage()
            except Exception:
                message = str(record.msg)
            self._console.note(f"{PROGRAM}: {record.levelname.lower()}: {message}")

    def _print(self, record: logging.LogRecord) -> None:
        arguments = record.args if isinstance(record.args, tuple) else ()
        if record.name == trace_logger.name:
            for event in arguments:
                if isinstance(event, TraceEvent):
                    self._tracer(event)
        elif record.levelno >= logging.WARNING:
            # serve_tls_over_tcp attaches the exception: it knows the cause.
            cause = getattr(record, "tls_error", None)
            hint = tls_hint(cause, server_side=True) if isinstance(cause, BaseException) else ""
            message = clean_openssl_text(record.getMessage())
            level = record.levelname.lower()
            self._console.note(f"{PROGRAM}: {level}: {self._labels.current()}{message}{hint}")


@contextlib.contextmanager
def _log_to(console: Console, labels: _ConnectionLabels, *, trace: bool) -> Iterator[None]:
    """Print the library's warnings, and with ``trace`` its trace, on stderr."""
    library_logger = logging.getLogger(PROGRAM)
    handler = _ConsoleHandler(console, labels)
    saved = trace_logger.level, trace_logger.propagate
    library_logger.addHandler(handler)
    if trace:
        trace_logger.addHandler(handler)
        trace_logger.setLevel(logging.DEBUG)
        # Only here: through the parent logger or a root handler every event
        # would be printed again.
        trace_logger.propagate = False
    try:
        yield
    finally:
        library_logger.removeHandler(handler)
        trace_logger.removeHandler(handler)
        trace_logger.setLevel(saved[0])
        trace_logger.propagate = saved[1]


def _peer(stream: Stream) -> str:
    try:
        host, port = stream.transport_stream.socket.getpeername()[:2]
    except OSError:
        return "a client that already left"
    return show_address(str(host), port)


def _client_certificate(stream: Stream) -> str:
    subject = (stream.getpeercert() or {}).get("subject", ())
    names = [pair[1] for rdn in subject for pair in rdn if pair[0] == "commonName"]
    return f", client certificate CN={names[0]}" if names else ""


# ------------------------------------------------------------------ handlers


async def _handle(
    stream: Stream, *, console: Console, labels: _ConnectionLabels, mode: str
) -> None:
    """Serve one connection; whatever goes wrong costs this connection only."""
    label = labels.current()
    try:
        await _converse(stream, console=console, label=label, mode=mode)
    except Exception as exc:
        # A bug (ours, or in what we call) must not reach serve_listeners,
        # which would end the server for every client.
        console.say(f"{label}internal error, connection dropped: {exc!r}")
        await trio.aclose_forcefully(stream)


async def _converse(stream: Stream, *, console: Console, label: str, mode: str) -> None:
    """Log the connection, run the mode's handler, log how it ended."""
    cipher = stream.cipher()
    console.say(
        f"{label}from {_peer(stream)}, {stream.version()}, {cipher[0] if cipher else None}, "
        f"ALPN {stream.selected_alpn_protocol() or '(none)'}{_client_certificate(stream)}"
    )
    handler: Callable[[Stream, Console, str], Awaitable[None]] = (
        _echo if mode == "echo" else serve_http
    )
    problem = ""
    try:
        await handler(stream, console, label)
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        problem = "; " + describe_tls_failure(exc, server_side=True)
    except Exception as exc:
        # A bug in a handler costs its own connection, never the server.
        problem = f"; internal error, connection dropped: {exc!r}"
        await trio.aclose_forcefully(stream)
    finally:
        # Also when the server is stopping (cancelled): serve_listeners closes the stream.
        statistics = stream.statistics()
        ended = statistics.ended.value if statistics.ended is not None else "server stopping"
        console.say(
            f"{label}closed, {statistics.plaintext_received} bytes in, "
            f"{statistics.plaintext_sent} bytes out ({ended}){problem}"
        )


async def _echo(stream: Stream, console: Console, label: str) -> None:
    # On TLS 1.3 a client's send_eof() ends this loop; returning closes the
    # stream, which sends our close_notify and so ends the client's output.
    while data := await stream.receive_some():
        await stream.send_all(data)
