"""``serve --mode http``: just enough HTTP/1.1 over a TLS stream for curl and httpx.

Theory of operation
===================

:func:`serve_http` handles one connection: GET only, keep-alive,
Content-Length, no request bodies. ``GET /`` says hello with what TLS
negotiated; ``GET /bytes/N`` answers N bytes of :data:`HTTP_PATTERN`, streamed
64 KiB at a time so that memory stays flat for any N. ``X-TLS-*`` response
headers show what was negotiated, and ``X-Request-Number`` counts requests
per connection, to make keep-alive visible.

A request this server cannot or will not answer gets a 4xx response and the
connection closes after it; anything the client can send ends in a response
or a clean close, never in an exception that reaches the caller except a
TLS failure (BrokenResourceError), which the caller reports.

It speaks HTTP/1.1 only, so ``serve`` refuses ``--mode http`` with an ALPN
protocol other than ``http/1.1`` (agreeing on h2 and then answering in
HTTP/1.1 leaves the client with an empty reply).
"""

from __future__ import annotations

from typing import Final

import trio

from .._engine import TLSTruncationError
from .._stream import MemoryBIOStream
from ._common import PROGRAM, Console

__all__ = ["HTTP_PATTERN", "KEEP_ALIVE_TIMEOUT", "serve_http"]

Stream = MemoryBIOStream[trio.SocketStream]

#: The bytes of ``/bytes/N`` repeat this pattern: byte i is ``i % 256``.
HTTP_PATTERN: Final = bytes(range(256))
_CHUNK: Final = HTTP_PATTERN * 256  # 64 KiB, a whole number of patterns
_MAX_BODY: Final = 1 << 30
_MAX_HEAD: Final = 65536
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_TIMEOUT: Final = 30.0


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


async def serve_http(stream: Stream, console: Console, label: str) -> None:
    """Answer requests on ``stream`` until the client closes or a response ends it."""
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
