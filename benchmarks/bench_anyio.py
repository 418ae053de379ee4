"""anyio's TLSStream on the trio backend, for the trio-family workloads.

Importing this module fails with ImportError when anyio is not installed; the
suite then reports anyio as unavailable.

anyio runs inside ``trio.run`` (it detects trio through sniffio), so anyio's
TLSStream runs the very same workload code as the trio implementations,
through :class:`AnyioConn`, which maps ``send_all``/``receive_some`` onto
anyio's ``send``/``receive`` (one extra coroutine call per operation, a
fraction of a microsecond). Over TCP the transport is anyio's own trio-backend
socket stream (``anyio.connect_tcp``). In memory, anyio's memory object
streams would not be comparable (they carry whole objects, with another
buffering and scheduling model), so anyio's TLSStream runs over the same
``trio.testing.memory_stream_pair`` as the others, through
:class:`TrioByteStream`.

anyio's ``TLSStream.wrap`` takes no ``session``, so it cannot resume sessions.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import cast

import anyio
import anyio.abc
import trio
import trio.testing
from anyio.streams.tls import TLSAttribute, TLSStream
from bench_common import HOSTNAME, LOCALHOST
from bench_trio import Conn, Listener, TrioImpl

__all__ = ["AnyioImpl", "anyio_version"]


def anyio_version() -> str:
    from importlib.metadata import version

    return version("anyio")


class AnyioConn:
    """anyio's TLSStream seen through the trio stream interface."""

    __slots__ = ("stream",)

    def __init__(self, stream: TLSStream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes) -> None:
        await self.stream.send(data)

    async def receive_some(self, max_bytes: int) -> bytes:
        try:
            return await self.stream.receive(max_bytes)
        except anyio.EndOfStream:
            return b""

    async def aclose(self) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.stream.aclose()


class TrioByteStream(anyio.abc.ByteStream):
    """A trio stream as an anyio byte stream (to share memory_stream_pair)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return bytes(data)

    async def send(self, item: bytes) -> None:
        try:
            await self._stream.send_all(item)
        except trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self._stream.aclose()


class _AnyioListener:
    def __init__(self, listener: anyio.abc.SocketListener) -> None:
        self._listener = listener
        self.port: int = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def accept(self) -> anyio.abc.ByteStream:
        return await self._listener.accept()

    async def aclose(self) -> None:
        await self._listener.aclose()


class AnyioImpl(TrioImpl[anyio.abc.ByteStream]):
    resumption = "anyio's TLSStream.wrap() takes no session"

    async def listen(self) -> Listener[anyio.abc.ByteStream]:
        multi = await anyio.create_tcp_listener(local_host=LOCALHOST)
        (listener,) = multi.listeners
        return _AnyioListener(cast("anyio.abc.SocketListener", listener))

    async def connect(self, port: int) -> anyio.abc.ByteStream:
        return await anyio.connect_tcp(LOCALHOST, port)

    def memory_pair(self) -> tuple[anyio.abc.ByteStream, anyio.abc.ByteStream]:
        client, server = trio.testing.memory_stream_pair()
        return TrioByteStream(client), TrioByteStream(server)

    async def client(
        self,
        transport: anyio.abc.ByteStream,
        context: ssl.SSLContext,
        session: ssl.SSLSession | None = None,
    ) -> Conn:
        if session is not None:
            raise NotImplementedError(self.resumption)
        stream = await TLSStream.wrap(transport, hostname=HOSTNAME, ssl_context=context)
        return AnyioConn(stream)

    async def server(self, transport: anyio.abc.ByteStream, context: ssl.SSLContext) -> Conn:
        stream = await TLSStream.wrap(transport, server_side=True, ssl_context=context)
        return AnyioConn(stream)

    def cipher(self, conn: Conn) -> tuple[str | None, str | None]:
        assert isinstance(conn, AnyioConn)
        cipher: tuple[str, str, int] | None = conn.stream.extra(TLSAttribute.cipher, None)
        version: str | None = conn.stream.extra(TLSAttribute.tls_version, None)
        return (cipher[0] if cipher else None), version
