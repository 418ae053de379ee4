"""Memory workloads, measured with tracemalloc (Python allocations only).

tracemalloc sees what Python allocates: objects, bytes buffers, the ciphertext
a stream holds. It does not see OpenSSL's own allocations (the SSL object,
its record buffers, the session cache), which are the same for every
implementation that uses the same OpenSSL.

* idle connections: ``pairs`` established client/server pairs over
  trio.testing.memory_stream_pair, each having moved one byte each way (so
  the TLS 1.3 tickets have been read and nothing is buffered). The number is
  the growth of traced memory divided by 2 * pairs: bytes per stream,
  *including* its share of the transport pair (the "trio, no TLS" row is that
  bare memory_stream_pair alone, for reference).
* send_all peak: the peak of traced memory during one ``send_all(payload)``
  minus the traced memory just before the call. The payload exists before the
  baseline. The receiver runs in another process (a blocking-ssl receiver
  from ``bench_remote.py``) over loopback TCP, so the kernel's socket buffers
  are the only transport buffering and the receiver's own buffers are not
  counted.
"""

from __future__ import annotations

import gc
import tracemalloc

from bench_common import OK, READY, BenchmarkError, Contexts, Measurement, header, payload
from bench_trio import Conn, T, TrioImpl, _both, receive_exactly


async def _established(impl: TrioImpl[T], contexts: Contexts) -> tuple[Conn, Conn]:
    client_transport, server_transport = impl.memory_pair()
    client, server = await _both(
        impl.client(client_transport, contexts.client),
        impl.server(server_transport, contexts.server),
    )
    await server.send_all(b"x")
    await client.send_all(b"y")
    if await receive_exactly(client, 1) != b"x" or await receive_exactly(server, 1) != b"y":
        raise BenchmarkError("idle connection: the exchanged bytes did not arrive")
    return client, server


async def idle_connections(impl: TrioImpl[T], contexts: Contexts, pairs: int) -> Measurement:
    """Traced bytes per stream for ``pairs`` established, idle connection pairs."""
    clients: list[Conn | None] = [None] * pairs
    servers: list[Conn | None] = [None] * pairs
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(pairs):
            clients[i], servers[i] = await _established(impl, contexts)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    first = clients[0]
    assert first is not None
    cipher, version = impl.cipher(first)
    for client, server in zip(clients, servers, strict=True):
        assert client is not None
        assert server is not None
        await _both(client.aclose(), server.aclose())
    return Measurement(grown / (2 * pairs), cipher, version)


async def send_peak(impl: TrioImpl[T], contexts: Contexts, port: int, nbytes: int) -> Measurement:
    """Peak traced bytes above the baseline during one send_all of nbytes."""
    data = payload(nbytes)
    gc.collect()
    tracemalloc.start()
    try:
        conn = await impl.client(await impl.connect(port), contexts.client)
        await conn.send_all(header(nbytes))
        if await receive_exactly(conn, 1) != READY:
            raise BenchmarkError("bulk receiver did not answer READY")
        gc.collect()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        await conn.send_all(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    answer = await receive_exactly(conn, 1)
    if answer != OK:
        raise BenchmarkError(f"bulk receiver reported {answer!r}: data lost or corrupted")
    cipher, version = impl.cipher(conn)
    await conn.aclose()
    return Measurement(peak - before, cipher, version)
