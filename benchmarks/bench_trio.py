"""The trio family: MemoryBIOStream, trio.SSLStream, and trio with no TLS at all.

Each implementation is a :class:`TrioImpl`: how to listen, connect, make an
in-memory transport pair and put TLS on a transport (handshake included). The
workloads are written once against :class:`Conn` (``send_all``,
``receive_some``, ``aclose``: the trio stream interface) and run the same code
for every implementation; anyio's TLSStream joins through a thin adapter in
``bench_anyio.py``.

Protocols (all workloads, every implementation, including the receiver
processes of ``bench_remote.py``):

* bulk: the client sends an 8-byte size, waits for READY, then sends the
  payload in 64 KiB calls; the server checks every byte against the pattern
  and answers OK (or BAD); the client's clock runs from READY to OK. Then the
  client closes, the server waits for end-of-stream and closes.
* ping-pong: the client sends 64 bytes and waits for the server's 64 bytes, a
  fixed number of times; end-of-stream ends the server.
* handshake: connect, handshake, the server sends one byte that the client
  reads (on TLS 1.3 this is also what delivers the session ticket), close. The
  clock covers the whole loop: TCP connect, handshake, one byte, close.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import trio
import trio.testing
from bench_common import (
    BAD,
    CHUNKS,
    HOSTNAME,
    LOCALHOST,
    OK,
    PING,
    PONG,
    READY,
    BenchmarkError,
    Contexts,
    Measurement,
    Timer,
    Verifier,
    check_bulk_size,
    header,
    mib_per_s,
)

from trio_membio import MemoryBIOStream

T = TypeVar("T")
R = TypeVar("R")
T_co = TypeVar("T_co", covariant=True)


class Conn(Protocol):
    """What every workload needs from a connection: trio's stream interface."""

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int) -> bytes | bytearray: ...

    async def aclose(self) -> None: ...


class Listener(Protocol[T_co]):
    @property
    def port(self) -> int: ...

    async def accept(self) -> T_co: ...

    async def aclose(self) -> None: ...


class TrioImpl(Generic[T]):
    """One implementation; T is its transport type. This base class is trio, no TLS."""

    resumption: str | None = "no TLS"  # None if session resumption works

    async def listen(self) -> Listener[T]:
        raise NotImplementedError

    async def connect(self, port: int) -> T:
        raise NotImplementedError

    def memory_pair(self) -> tuple[T, T]:
        raise NotImplementedError

    async def client(
        self, transport: T, context: ssl.SSLContext, session: ssl.SSLSession | None = None
    ) -> Conn:
        raise NotImplementedError

    async def server(self, transport: T, context: ssl.SSLContext) -> Conn:
        raise NotImplementedError

    def cipher(self, conn: Conn) -> tuple[str | None, str | None]:
        return None, None

    def session(self, conn: Conn) -> tuple[ssl.SSLSession | None, bool]:
        """The session to resume next time and whether this one was resumed."""
        return None, False


class _TrioListener:
    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener
        self.port: int = listener.socket.getsockname()[1]

    async def accept(self) -> trio.abc.Stream:
        return await self._listener.accept()

    async def aclose(self) -> None:
        await self._listener.aclose()


class PlainTrio(TrioImpl[trio.abc.Stream]):
    """trio.SocketStream (TCP workloads) or memory_stream_pair: the ceiling for trio I/O."""

    async def listen(self) -> Listener[trio.abc.Stream]:
        (listener,) = await trio.open_tcp_listeners(0, host=LOCALHOST)
        return _TrioListener(listener)

    async def connect(self, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(LOCALHOST, port)

    def memory_pair(self) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        return trio.testing.memory_stream_pair()

    async def client(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        session: ssl.SSLSession | None = None,
    ) -> Conn:
        return transport

    async def server(self, transport: trio.abc.Stream, context: ssl.SSLContext) -> Conn:
        return transport


class Handshaking(Conn, Protocol):
    async def do_handshake(self) -> None: ...


class TLSImpl(PlainTrio):
    """A TLS implementation over the plain trio transports: wrap(), then the handshake."""

    resumption = None

    def wrap(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        session: ssl.SSLSession | None = None,
    ) -> Handshaking:
        raise NotImplementedError

    async def client(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        session: ssl.SSLSession | None = None,
    ) -> Conn:
        conn = self.wrap(transport, context, server_side=False, session=session)
        await conn.do_handshake()
        return conn

    async def server(self, transport: trio.abc.Stream, context: ssl.SSLContext) -> Conn:
        conn = self.wrap(transport, context, server_side=True)
        await conn.do_handshake()
        return conn


class MembioImpl(TLSImpl):
    def wrap(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        session: ssl.SSLSession | None = None,
    ) -> Handshaking:
        return MemoryBIOStream(
            transport,
            context,
            server_side=server_side,
            server_hostname=None if server_side else HOSTNAME,
            session=session,
        )

    def cipher(self, conn: Conn) -> tuple[str | None, str | None]:
        assert isinstance(conn, MemoryBIOStream)
        cipher = conn.cipher()
        return (cipher[0] if cipher else None), conn.version()

    def session(self, conn: Conn) -> tuple[ssl.SSLSession | None, bool]:
        assert isinstance(conn, MemoryBIOStream)
        return conn.session, conn.session_reused


class TrioSSLImpl(TLSImpl):
    def wrap(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        session: ssl.SSLSession | None = None,
    ) -> Handshaking:
        stream = trio.SSLStream(
            transport,
            context,
            server_side=server_side,
            server_hostname=None if server_side else HOSTNAME,
        )
        if session is not None:
            stream.session = session  # forwarded to the SSLObject
        return stream

    def cipher(self, conn: Conn) -> tuple[str | None, str | None]:
        assert isinstance(conn, trio.SSLStream)
        cipher: tuple[str, str, int] | None = conn.cipher()
        version: str | None = conn.version()
        return (cipher[0] if cipher else None), version

    def session(self, conn: Conn) -> tuple[ssl.SSLSession | None, bool]:
        assert isinstance(conn, trio.SSLStream)
        session: ssl.SSLSession | None = conn.session
        reused: bool = conn.session_reused
        return session, reused


# ------------------------------------------------------------ protocol halves


async def receive_exactly(conn: Conn, nbytes: int) -> bytes:
    """nbytes, or fewer if the stream ends first."""
    data = await conn.receive_some(nbytes)
    if len(data) == nbytes or not data:
        return bytes(data)
    buffer = bytearray(data)
    while len(buffer) < nbytes:
        data = await conn.receive_some(nbytes - len(buffer))
        if not data:
            break
        buffer += data
    return bytes(buffer)


async def wait_eof_and_close(conn: Conn) -> None:
    try:
        while await conn.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    finally:
        await conn.aclose()


async def bulk_send(conn: Conn, nbytes: int) -> float:
    """The client half of a bulk transfer; returns the seconds from READY to OK."""
    nchunks = check_bulk_size(nbytes)
    chunks = CHUNKS
    count = len(chunks)
    send_all = conn.send_all
    await send_all(header(nbytes))
    if await receive_exactly(conn, 1) != READY:
        raise BenchmarkError("bulk receiver did not answer READY")
    with Timer() as timer:
        for i in range(nchunks):
            await send_all(chunks[i % count])
        answer = await receive_exactly(conn, 1)
    if answer != OK:
        raise BenchmarkError(f"bulk receiver reported {answer!r}: data lost or corrupted")
    return timer.elapsed


async def bulk_receive(conn: Conn) -> None:
    """The server half of a bulk transfer: check every byte, answer, wait for the end."""
    nbytes = int.from_bytes(await receive_exactly(conn, 8), "big")
    await conn.send_all(READY)
    verifier = Verifier()
    receive_some = conn.receive_some
    feed = verifier.feed
    while verifier.received < nbytes:
        data = await receive_some(65536)
        if not data:
            break
        feed(data)
    good = verifier.ok and verifier.received == nbytes
    await conn.send_all(OK if good else BAD)
    await wait_eof_and_close(conn)


async def echo_pongs(conn: Conn) -> None:
    """The server half of ping-pong."""
    while True:
        request = await receive_exactly(conn, len(PING))
        if not request:
            break
        if request != PING:
            raise BenchmarkError("ping-pong server received a corrupted request")
        await conn.send_all(PONG)
    await conn.aclose()


async def send_pings(conn: Conn, count: int) -> float:
    send_all = conn.send_all
    size = len(PONG)
    with Timer() as timer:
        for _ in range(count):
            await send_all(PING)
            if await receive_exactly(conn, size) != PONG:
                raise BenchmarkError("ping-pong client received a corrupted response")
    return timer.elapsed


async def send_byte_and_wait(conn: Conn) -> None:
    """The server half of a handshake round."""
    await conn.send_all(b"x")
    await wait_eof_and_close(conn)


# ------------------------------------------------------------------ drivers


async def _both(first: Awaitable[R], second: Awaitable[T]) -> tuple[R, T]:
    results: dict[int, object] = {}

    async def run(index: int, awaitable: Awaitable[object]) -> None:
        results[index] = await awaitable

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, first)
        nursery.start_soon(run, 1, second)
    return results[0], results[1]  # type: ignore[return-value]  # filled by run()


async def serve(
    impl: TrioImpl[T],
    listener: Listener[T],
    context: ssl.SSLContext,
    handler: Callable[[Conn], Awaitable[None]],
    connections: int | None = None,
) -> None:
    """Accept connections (forever, or a number of them), each handled in its own task."""

    async def one(transport: T) -> None:
        await handler(await impl.server(transport, context))

    async with trio.open_nursery() as nursery:
        accepted = 0
        while connections is None or accepted < connections:
            nursery.start_soon(one, await listener.accept())
            accepted += 1


async def _with_server(
    impl: TrioImpl[T],
    contexts: Contexts,
    handler: Callable[[Conn], Awaitable[None]],
    client: Callable[[int], Awaitable[R]],
) -> R:
    listener = await impl.listen()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, impl, listener, contexts.server, handler)
            result = await client(listener.port)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
    return result


async def bulk_tcp(
    impl: TrioImpl[T], contexts: Contexts, nbytes: int, port: int | None = None
) -> Measurement:
    """Bulk over loopback TCP; the receiver in this process, or at ``port``."""

    async def client(port: int) -> Measurement:
        conn = await impl.client(await impl.connect(port), contexts.client)
        elapsed = await bulk_send(conn, nbytes)
        cipher, version = impl.cipher(conn)
        await conn.aclose()
        return Measurement(mib_per_s(nbytes, elapsed), cipher, version)

    if port is not None:
        return await client(port)
    return await _with_server(impl, contexts, bulk_receive, client)


async def bulk_memory(impl: TrioImpl[T], contexts: Contexts, nbytes: int) -> Measurement:
    """Bulk over trio.testing.memory_stream_pair, as the fuzz tests run."""
    client_transport, server_transport = impl.memory_pair()

    async def server() -> None:
        await bulk_receive(await impl.server(server_transport, contexts.server))

    async def client() -> Measurement:
        conn = await impl.client(client_transport, contexts.client)
        elapsed = await bulk_send(conn, nbytes)
        cipher, version = impl.cipher(conn)
        await conn.aclose()
        return Measurement(mib_per_s(nbytes, elapsed), cipher, version)

    _, measurement = await _both(server(), client())
    return measurement


async def ping_pong(impl: TrioImpl[T], contexts: Contexts, count: int) -> Measurement:
    async def client(port: int) -> Measurement:
        conn = await impl.client(await impl.connect(port), contexts.client)
        elapsed = await send_pings(conn, count)
        cipher, version = impl.cipher(conn)
        await conn.aclose()
        return Measurement(count / elapsed, cipher, version)

    return await _with_server(impl, contexts, echo_pongs, client)


async def handshakes(
    impl: TrioImpl[T], contexts: Contexts, count: int, *, resume: bool
) -> Measurement:
    """Connections per second: connect, handshake, read one byte, close."""

    async def connect_once(port: int, session: ssl.SSLSession | None) -> Conn:
        conn = await impl.client(await impl.connect(port), contexts.client, session)
        if await receive_exactly(conn, 1) != b"x":
            raise BenchmarkError("handshake server did not send its byte")
        return conn

    async def client(port: int) -> Measurement:
        # One untimed connection: it gives the first session and the cipher.
        conn = await connect_once(port, None)
        session, _ = impl.session(conn)
        cipher, version = impl.cipher(conn)
        await conn.aclose()
        with Timer() as timer:
            for _ in range(count):
                conn = await connect_once(port, session if resume else None)
                if resume:
                    session, reused = impl.session(conn)
                    if not reused:
                        raise BenchmarkError("the session was not resumed")
                await conn.aclose()
        return Measurement(count / timer.elapsed, cipher, version)

    return await _with_server(impl, contexts, send_byte_and_wait, client)
