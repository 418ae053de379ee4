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

The HTTP mode is just enough HTTP/1.1 for curl: GET, keep-alive,
Content-Length. ``X-TLS-*`` response headers show what was negotiated, and
``X-Request-Number`` counts requests per connection, to make keep-alive visible.
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
from typing import Final

import trio

from ._cli import (
    PROGRAM,
    CLIError,
    Console,
    Tracer,
    describe_os_error,
    describe_tls_failure,
    load_cafile,
    load_cert_chain,
    pin_version,
    tidy,
    tls_hint,
)
from ._engine import TLSTruncationError
from ._highlevel import DEFAULT_HANDSHAKE_TIMEOUT, serve_tls_over_tcp
from ._stream import MemoryBIOStream
from ._trace import TraceEvent, trace_logger

__all__ = ["HTTP_PATTERN", "serve"]

Stream = MemoryBIOStream[trio.SocketStream]

#: The bytes of ``/bytes/N`` repeat this pattern: byte i is ``i % 256``.
HTTP_PATTERN: Final = bytes(range(256))
_CHUNK: Final = HTTP_PATTERN * 256  # 64 KiB, a whole number of patterns
_MAX_BODY: Final = 1 << 30
_MAX_HEAD: Final = 65536
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_TIMEOUT: Final = 30.0


async def serve(
    arguments: argparse.Namespace,
    console: Console,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the server until SIGINT/SIGTERM (or cancellation); return 0."""
    with contextlib.ExitStack() as cleanup:
        context = _server_context(arguments, console, cleanup)
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
            shown = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)
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
    alpn = arguments.alpn or (["http/1.1"] if arguments.mode == "http" else [])
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def _throwaway_certificate(
    context: ssl.SSLContext,
    arguments: argparse.Namespace,
    console: Console,
    cleanup: contextlib.ExitStack,
) -> None:
    try:
        import trustme
    except ImportError:  # pragma: no cover - depends on how it was installed
        raise CLIError(
            "the throwaway certificate needs trustme: pip install 'trio-membio[demo]', "
            "or pass --cert and --key"
        ) from None
    names = ["localhost", "127.0.0.1", "::1"]
    if arguments.host not in (*names, "0.0.0.0", "::", ""):
        names.append(arguments.host)
    authority = trustme.CA(key_type=trustme.KeyType.ECDSA)
    authority.issue_cert(*names, key_type=trustme.KeyType.ECDSA).configure_cert(context)
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
        arguments = record.args if isinstance(record.args, tuple) else ()
        if record.name == trace_logger.name:
            for event in arguments:
                if isinstance(event, TraceEvent):
                    self._tracer(event)
        elif record.levelno >= logging.WARNING:
            # serve_tls_over_tcp attaches the exception: it knows the cause.
            cause = getattr(record, "tls_error", None)
            hint = tls_hint(cause, server_side=True) if isinstance(cause, BaseException) else ""
            message = tidy(record.getMessage())
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
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _client_certificate(stream: Stream) -> str:
    subject = (stream.getpeercert() or {}).get("subject", ())
    names = [pair[1] for rdn in subject for pair in rdn if pair[0] == "commonName"]
    return f", client certificate CN={names[0]}" if names else ""


# ------------------------------------------------------------------ handlers


async def _handle(
    stream: Stream, *, console: Console, labels: _ConnectionLabels, mode: str
) -> None:
    """Log the connection, run the mode's handler, log how it ended."""
    label = labels.current()
    cipher = stream.cipher()
    console.say(
        f"{label}from {_peer(stream)}, {stream.version()}, {cipher[0] if cipher else None}, "
        f"ALPN {stream.selected_alpn_protocol() or '(none)'}{_client_certificate(stream)}"
    )
    handler: Callable[[Stream, Console, str], Awaitable[None]] = _echo if mode == "echo" else _http
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


class _BadRequest(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def _read_head(stream: Stream, buffer: bytearray) -> bytes | None:
    """The next request head (up to the blank line), or None at a clean end."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > _MAX_HEAD:
            raise _BadRequest("431 Request Header Fields Too Large", "request head too large")
        try:
            data = await stream.receive_some()
        except trio.BrokenResourceError as exc:
            # Not https_compatible, so that our own close sends close_notify;
            # but an HTTP client may skip it, and between requests nothing is lost.
            if buffer or not isinstance(exc.__cause__, TLSTruncationError):
                raise
            return None
        if not data:
            if buffer:
                raise _BadRequest("400 Bad Request", "the client ended mid-request")
            return None
        buffer += data
    head = bytes(buffer[:end])
    del buffer[: end + 4]
    return head


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest("400 Bad Request", f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise _BadRequest("400 Bad Request", f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


async def _http(stream: Stream, console: Console, label: str) -> None:
    buffer = bytearray()
    number = 0
    keep_alive = True
    while keep_alive:
        head, request = None, "a request"
        try:
            with trio.move_on_after(KEEP_ALIVE_TIMEOUT):
                head = await _read_head(stream, buffer)
            if head is None:
                return  # the client closed, or stayed idle too long
            number += 1
            method, target, version, headers = _parse_head(head)
            request = f"{method} {target}"
            tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
            keep_alive = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
            if method != "GET":
                raise _BadRequest("405 Method Not Allowed", f"{method} is not supported")
            if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
                # Skipping a body is more HTTP than this server needs to speak.
                raise _BadRequest("400 Bad Request", "GET requests carry no body here")
            status, body = _route(stream, target)
        except _BadRequest as exc:
            status, body, keep_alive = exc.status, f"{exc}\n".encode(), False
        size = body if isinstance(body, int) else len(body)
        console.say(f"{label}{request} -> {status} ({size} bytes)")
        await _respond(stream, status, body, number, keep_alive=keep_alive)


#: A response body: the bytes, or a number of bytes of HTTP_PATTERN.
Body = bytes | int


def _route(stream: Stream, target: str) -> tuple[str, Body]:
    """The status and body for ``target``."""
    if target == "/":
        return "200 OK", (
            f"hello from {PROGRAM} over {stream.version()}, "
            f"ALPN {stream.selected_alpn_protocol()}\n"
        ).encode()
    prefix, _, count = target.partition("/bytes/")
    # isdigit() alone takes "²" and other digits int() refuses, and a huge
    # count would exceed int()'s digit limit: both would end the connection.
    if prefix == "" and count.isascii() and count.isdigit():
        if len(count) > len(str(_MAX_BODY)) or int(count) > _MAX_BODY:
            raise _BadRequest("400 Bad Request", f"at most {_MAX_BODY} bytes per request")
        return "200 OK", int(count)
    return "404 Not Found", f"no such path: {target} (try / or /bytes/N)\n".encode()


async def _respond(
    stream: Stream, status: str, body: Body, number: int, *, keep_alive: bool
) -> None:
    cipher = stream.cipher()
    size = body if isinstance(body, int) else len(body)
    kind = "application/octet-stream" if isinstance(body, int) else "text/plain"
    head = [
        f"HTTP/1.1 {status}",
        f"Server: {PROGRAM}",
        f"Content-Type: {kind}",
        f"Content-Length: {size}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        f"X-TLS-Version: {stream.version()}",
        f"X-TLS-Cipher: {cipher[0] if cipher else None}",
        f"X-TLS-ALPN: {stream.selected_alpn_protocol()}",
        f"X-Request-Number: {number}",
    ]
    if status.startswith("405"):
        head.append("Allow: GET")
    await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    if isinstance(body, bytes):
        await stream.send_all(body)
        return
    # Streamed a chunk at a time: memory stays flat for any size.
    while body:
        chunk = _CHUNK[: min(body, len(_CHUNK))]
        await stream.send_all(chunk)
        body -= len(chunk)
