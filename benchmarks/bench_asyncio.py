"""asyncio streams with ssl (the standard event loop), same protocols as bench_trio.

``writer.write(chunk)`` followed by ``await writer.drain()`` is asyncio's
equivalent of one ``send_all``. asyncio's streams take no ``session``, so
asyncio cannot resume sessions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

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

RESUMPTION = "asyncio's open_connection() takes no session"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _cipher(writer: asyncio.StreamWriter) -> tuple[str | None, str | None]:
    ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None, None
    cipher = ssl_object.cipher()
    return (cipher[0] if cipher else None), ssl_object.version()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def _wait_eof_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await reader.read(65536):
            pass
    await _close(writer)


async def bulk_receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    nbytes = int.from_bytes(await reader.readexactly(8), "big")
    writer.write(READY)
    await writer.drain()
    verifier = Verifier()
    read = reader.read
    feed = verifier.feed
    while verifier.received < nbytes:
        data = await read(65536)
        if not data:
            break
        feed(data)
    writer.write(OK if verifier.ok and verifier.received == nbytes else BAD)
    await writer.drain()
    await _wait_eof_and_close(reader, writer)


async def echo_pongs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            request = await reader.readexactly(len(PING))
        except asyncio.IncompleteReadError:
            break
        if request != PING:
            raise BenchmarkError("ping-pong server received a corrupted request")
        writer.write(PONG)
        await writer.drain()
    await _close(writer)


async def send_byte_and_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"x")
    await writer.drain()
    await _wait_eof_and_close(reader, writer)


class Server:
    """asyncio.start_server that also knows when every handler has finished."""

    def __init__(self, handler: Handler, context: ssl.SSLContext | None) -> None:
        self._handler = handler
        self._context = context
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except BaseException as exc:
            self._errors.append(exc)
            raise
        finally:
            self._tasks.discard(task)

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, LOCALHOST, 0, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self._errors:
            raise BenchmarkError("an asyncio handler failed") from self._errors[0]


async def _connect(
    port: int, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        LOCALHOST, port, ssl=context, server_hostname=HOSTNAME if context else None
    )


async def _bulk(contexts: Contexts, nbytes: int, port: int) -> Measurement:
    nchunks = check_bulk_size(nbytes)
    reader, writer = await _connect(port, contexts.client)
    writer.write(header(nbytes))
    if await reader.readexactly(1) != READY:
        raise BenchmarkError("bulk receiver did not answer READY")
    chunks = CHUNKS
    count = len(chunks)
    write = writer.write
    drain = writer.drain
    with Timer() as timer:
        for i in range(nchunks):
            write(chunks[i % count])
            await drain()
        answer = await reader.readexactly(1)
    if answer != OK:
        raise BenchmarkError(f"bulk receiver reported {answer!r}: data lost or corrupted")
    cipher, version = _cipher(writer)
    await _close(writer)
    return Measurement(mib_per_s(nbytes, timer.elapsed), cipher, version)


async def _bulk_local(contexts: Contexts, nbytes: int) -> Measurement:
    async with Server(bulk_receive, contexts.server) as server:
        return await _bulk(contexts, nbytes, server.port)


def bulk_tcp(contexts: Contexts, nbytes: int, port: int | None = None) -> Measurement:
    if port is None:
        return asyncio.run(_bulk_local(contexts, nbytes))
    return asyncio.run(_bulk(contexts, nbytes, port))


async def _ping_pong(contexts: Contexts, count: int) -> Measurement:
    async with Server(echo_pongs, contexts.server) as server:
        reader, writer = await _connect(server.port, contexts.client)
        write = writer.write
        drain = writer.drain
        readexactly = reader.readexactly
        size = len(PONG)
        with Timer() as timer:
            for _ in range(count):
                write(PING)
                await drain()
                if await readexactly(size) != PONG:
                    raise BenchmarkError("ping-pong client received a corrupted response")
        cipher, version = _cipher(writer)
        await _close(writer)
    return Measurement(count / timer.elapsed, cipher, version)


def ping_pong(contexts: Contexts, count: int) -> Measurement:
    return asyncio.run(_ping_pong(contexts, count))


async def _handshakes(contexts: Contexts, count: int) -> Measurement:
    async with Server(send_byte_and_wait, contexts.server) as server:
        reader, writer = await _connect(server.port, contexts.client)
        await reader.readexactly(1)
        cipher, version = _cipher(writer)
        await _close(writer)
        with Timer() as timer:
            for _ in range(count):
                reader, writer = await _connect(server.port, contexts.client)
                if await reader.readexactly(1) != b"x":
                    raise BenchmarkError("handshake server did not send its byte")
                await _close(writer)
    return Measurement(count / timer.elapsed, cipher, version)


def handshakes(contexts: Contexts, count: int) -> Measurement:
    return asyncio.run(_handshakes(contexts, count))


async def _receive_bulk_connections(contexts: Contexts, connections: int) -> None:
    done = asyncio.Semaphore(0)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await bulk_receive(reader, writer)
        finally:
            done.release()

    async with Server(handler, contexts.server) as server:
        print(server.port, flush=True)
        for _ in range(connections):
            await done.acquire()


def receive_bulk_connections(contexts: Contexts, connections: int) -> None:
    """The receiver process: print the port, then receive that many bulk transfers."""
    asyncio.run(_receive_bulk_connections(contexts, connections))
