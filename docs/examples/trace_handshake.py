"""Trace one TLS 1.3 connection through both ends' memory BIOs.

A client and a server ``MemoryBIOStream`` talk over
:func:`trio.testing.memory_stream_pair`, each with a ``trace=`` callback that
prints every hop a byte makes (transport, incoming BIO, SSLObject, outgoing
BIO, application). Under each transport send, the TLS records in that send
are listed by their cleartext header: content type and length. The steps run
one after the other, and the testing kit's throwaway certificates are Ed25519
(fixed-length signatures), so every run prints the same lines.
docs/how-it-works.md explains this output, and tests/test_docs.py checks that
it still matches.

Run it with ``python docs/examples/trace_handshake.py``; it needs cryptography
for the throwaway certificates (``pip install 'trio-membio[test]'``).
"""

from __future__ import annotations

import textwrap

import trio
import trio.testing

from trio_membio import MemoryBIOStream, TraceCallback, TraceEvent
from trio_membio.testing import handshake, throwaway_contexts

HOSTNAME = "tls.example.org"

# The content types a TLS record header can show. In TLS 1.3 everything after
# the ServerHello is encrypted and travels as "application_data" (23); the real
# type is inside the encryption.
RECORD_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}


def describe_records(data: bytes) -> str:
    """List the TLS records in ``data`` as ``type(length)``, from their headers."""
    records = []
    offset = 0
    while offset + 5 <= len(data):
        content_type = data[offset]
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        records.append(f"{RECORD_TYPES.get(content_type, content_type)}({length})")
        offset += 5 + length
    if offset != len(data):
        records.append(f"+{len(data) - offset} bytes of a partial record")
    return ", ".join(records)


class RecordListingStream(trio.abc.Stream):
    """Passes everything to ``inner``; lists the TLS records of every send."""

    def __init__(self, inner: trio.abc.Stream, name: str) -> None:
        self.inner = inner
        self.name = name

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        listing = textwrap.wrap(describe_records(bytes(data)), width=70)
        print(f"{'':8}records: " + f"\n{'':17}".join(listing))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def tracer(name: str) -> TraceCallback:
    """A trace callback that prints each event with the end it happened at."""

    def trace(event: TraceEvent) -> None:
        arrow = f"{event.source.value} -> {event.target.value}"
        if event.operation == "eof":
            print(f"{name:7} {arrow:32} end of stream")
        else:
            print(f"{name:7} {arrow:32} {event.size:5} bytes  ({event.operation})")

    return trace


def heading(text: str) -> None:
    """Print a section heading between the steps."""
    print(f"\n== {text}")


async def main() -> None:
    """Handshake, one message each way, then close; print every hop."""
    client_context, server_context = throwaway_contexts(tls_version="1.3", hostname=HOSTNAME)
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = MemoryBIOStream(
        RecordListingStream(client_transport, "client"),
        client_context,
        server_hostname=HOSTNAME,
        trace=tracer("client"),
    )
    server = MemoryBIOStream(
        RecordListingStream(server_transport, "server"),
        server_context,
        server_side=True,
        trace=tracer("server"),
    )

    heading("handshake (both ends at once)")
    await handshake(client, server)
    print(f"{'':8}negotiated {client.version()} {client.cipher()}")

    heading("client sends b'hello'")
    await client.send_all(b"hello")
    heading("server receives")
    print(f"{'':8}server got {await server.receive_some()!r}")

    heading("server sends b'welcome'")
    await server.send_all(b"welcome")
    heading("client receives")
    print(f"{'':8}client got {await client.receive_some()!r}")
    print(f"{'':8}client has a resumable session: {client.session is not None}")

    heading("client closes (close_notify, then the transport)")
    await client.aclose()
    heading("server receives the end")
    print(f"{'':8}server got {await server.receive_some()!r}")
    heading("server closes")
    await server.aclose()


if __name__ == "__main__":
    trio.run(main)
