"""The host name a TLS client asked for (SNI), read from its ClientHello.

Python's ssl module tells a server the SNI name only through
``SSLContext.sni_callback``, which belongs to the (shared, user-owned)
context. The stream must not take that hook from its user, so a server-side
engine reads the name from the first ciphertext itself: the ClientHello is
sent in the clear, and its ``server_name`` extension (RFC 6066 section 3)
holds the name.

:class:`ClientHelloReader` is fed the client's first bytes until it has a
whole ClientHello (which may span several TLS records) or knows there is
none to read; it never raises on bad input (OpenSSL judges the handshake, not
this reader) and stops reading past ``MAX_CLIENT_HELLO`` bytes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_CLIENT_HELLO", "ClientHelloReader"]

#: The most handshake bytes read while looking for the ClientHello's end.
MAX_CLIENT_HELLO: Final = 65536

_HANDSHAKE_RECORD: Final = 22
_CLIENT_HELLO: Final = 1
_SERVER_NAME_EXTENSION: Final = 0
_HOST_NAME: Final = 0


class ClientHelloReader:
    """Collects a client's first TLS records; ``done`` once the name is known."""

    __slots__ = ("_buffer", "_handshake", "done", "server_name")

    def __init__(self) -> None:
        self._buffer = bytearray()  # bytes of the current, incomplete record
        self._handshake = bytearray()  # handshake-layer bytes so far
        #: Whether reading has ended (name found, absent, or not a ClientHello).
        self.done = False
        #: The SNI host name (IDNA A-label form, as sent), or None.
        self.server_name: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next bytes the client sent."""
        if self.done:
            return
        self._buffer += data
        while len(self._buffer) >= 5 and not self.done:
            length = int.from_bytes(self._buffer[3:5], "big")
            if self._buffer[0] != _HANDSHAKE_RECORD:
                self.done = True
                return
            if len(self._buffer) < 5 + length:
                break
            self._handshake += self._buffer[5 : 5 + length]
            del self._buffer[: 5 + length]
            self._parse()
        if len(self._handshake) + len(self._buffer) > MAX_CLIENT_HELLO:
            self.done = True

    def _parse(self) -> None:
        handshake = self._handshake
        if len(handshake) < 4:
            return
        if handshake[0] != _CLIENT_HELLO:
            self.done = True
            return
        length = int.from_bytes(handshake[1:4], "big")
        if len(handshake) < 4 + length:
            return
        self.done = True
        self.server_name = _server_name(bytes(handshake[4 : 4 + length]))


def _server_name(body: bytes) -> str | None:
    """The host name in a ClientHello body's server_name extension, or None."""
    try:
        position = 2 + 32  # legacy_version, random
        position += 1 + body[position]  # legacy_session_id
        position += 2 + int.from_bytes(body[position : position + 2], "big")  # cipher_suites
        position += 1 + body[position]  # legacy_compression_methods
        end = position + 2 + int.from_bytes(body[position : position + 2], "big")
        position += 2
        while position + 4 <= end:
            kind = int.from_bytes(body[position : position + 2], "big")
            size = int.from_bytes(body[position + 2 : position + 4], "big")
            position += 4
            if kind == _SERVER_NAME_EXTENSION:
                return _host_name(body[position : position + size])
            position += size
    except IndexError:
        pass
    return None


def _host_name(extension: bytes) -> str | None:
    position = 2  # server_name_list length
    while position + 3 <= len(extension):
        kind = extension[position]
        size = int.from_bytes(extension[position + 1 : position + 3], "big")
        name = extension[position + 3 : position + 3 + size]
        if kind == _HOST_NAME and len(name) == size:
            try:
                return name.decode("ascii")
            except UnicodeDecodeError:
                return None
        position += 3 + size
    return None
