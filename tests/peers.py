"""TLS peers that Python's ssl alone cannot be, and their contexts.

- :func:`pyopenssl_context` / :func:`trio_context`: TLS 1.2 contexts for a
  pyOpenSSL peer and for our end, with renegotiation allowed on both.
- :class:`SteppedOpenSSLServer`: a pyOpenSSL TLS 1.2 server over a trio
  stream that can start a renegotiation (Python's ssl cannot). Unlike the
  threaded peer of test_renegotiation, whose contexts it shares, it only moves
  when the test awaits it, so the test decides when each of its flights leaves.
- :func:`pha_streams`: a TLS 1.3 pair with post-handshake client
  authentication, the one TLS 1.3 message that makes a *read* produce output.
"""

from __future__ import annotations

import contextlib
import ssl
from functools import cache
from pathlib import Path
from typing import Literal

import trio
import trio.testing
import trustme
from OpenSSL import SSL

from trio_membio import MemoryBIOStream, TraceCallback
from trio_membio.testing import handshake

from .helpers import HOSTNAME, ca, client_context, server_cert, server_context
from .transports import ControlledTransport

__all__ = [
    "Role",
    "SteppedOpenSSLServer",
    "pha_streams",
    "pyopenssl_context",
    "renegotiation_in_progress",
    "trio_context",
]

Role = Literal["client", "server"]
# SSL_OP_ALLOW_CLIENT_RENEGOTIATION (OpenSSL 3.0+), which Python's ssl does not name.
OP_ALLOW_CLIENT_RENEGOTIATION = ssl.Options(1 << 8)


def pyopenssl_context(role: Role, tmp_path: Path) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    pem = str(tmp_path / f"{role}.pem")
    if role == "server":
        server_cert().private_key_and_cert_chain_pem.write_to_path(pem)
        context.use_certificate_chain_file(pem)
        context.use_privatekey_file(pem)
    else:
        ca().cert_pem.write_to_path(pem)
        context.load_verify_locations(pem)
        context.set_verify(SSL.VERIFY_PEER)
    return context


def trio_context(role: Role) -> ssl.SSLContext:
    context = client_context("1.2") if role == "client" else server_context("1.2")
    # A Python build or policy may disable renegotiation outright (today's
    # defaults do not); these tests are about supporting it, so allow it.
    context.options &= ~ssl.OP_NO_RENEGOTIATION
    if role == "server" and ssl.OPENSSL_VERSION_INFO >= (3,):
        # OpenSSL 3.0 servers refuse client-initiated renegotiation by default.
        context.options |= OP_ALLOW_CLIENT_RENEGOTIATION
    return context


class SteppedOpenSSLServer:
    """pyOpenSSL over memory BIOs, writing to and reading from a trio stream."""

    def __init__(self, transport: trio.abc.Stream, tmp_path: Path) -> None:
        self.transport = transport
        self.conn = SSL.Connection(pyopenssl_context("server", tmp_path), None)
        self.conn.set_accept_state()
        self.received = bytearray()  # application data from our client

    async def flush(self) -> None:
        """Send whatever OpenSSL has queued."""
        with contextlib.suppress(SSL.WantReadError):  # raised when nothing is queued
            await self.transport.send_all(self.conn.bio_read(1 << 20))

    async def feed(self) -> None:
        """One transport receive into OpenSSL."""
        data = await self.transport.receive_some()
        assert data, "the client closed the transport"
        self.conn.bio_write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                await self.flush()
                await self.feed()
            else:
                await self.flush()
                return

    async def start_renegotiation(self) -> None:
        """Send a HelloRequest."""
        assert self.conn.renegotiate()
        with contextlib.suppress(SSL.WantReadError):
            self.conn.do_handshake()
        await self.flush()

    async def step(self) -> None:
        """Feed one transport receive, answer handshake messages, keep the data."""
        await self.feed()
        with contextlib.suppress(SSL.WantReadError):
            while True:
                self.received += self.conn.recv(65536)
        await self.flush()

    async def receive_exactly(self, size: int) -> bytes:
        while len(self.received) < size:
            await self.step()
        return bytes(self.received)

    @property
    def renegotiated(self) -> bool:
        """A renegotiation was started and has finished."""
        return self.conn.total_renegotiations() >= 1 and not self.conn.renegotiate_pending()


async def renegotiation_in_progress(
    client_transport: trio.abc.Stream, server_transport: trio.abc.Stream, tmp_path: Path
) -> tuple[MemoryBIOStream[trio.abc.Stream], SteppedOpenSSLServer]:
    """Our TLS 1.2 client and the stepped server, handshaken; then a HelloRequest is sent.

    Until the client reads the HelloRequest (only a receive does) and the
    renegotiation finishes, a send_all() has to wait for the server's answer.
    """
    client: MemoryBIOStream[trio.abc.Stream] = MemoryBIOStream(
        client_transport, trio_context("client"), server_hostname=HOSTNAME
    )
    peer = SteppedOpenSSLServer(server_transport, tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.handshake)
        await client.do_handshake()
    await peer.start_renegotiation()
    return client, peer


@cache
def client_cert() -> trustme.LeafCert:
    return ca().issue_cert("client.example.org", key_type=trustme.KeyType.ECDSA)


def pha_streams(
    client_transport: trio.abc.Stream,
    server_transport: trio.abc.Stream,
    *,
    client_trace: TraceCallback | None = None,
) -> tuple[MemoryBIOStream[trio.abc.Stream], MemoryBIOStream[trio.abc.Stream]]:
    """A TLS 1.3 (client, server) pair where the server may ask for a certificate later.

    After the handshake, ``server.ssl_object.verify_client_post_handshake()``
    sends a CertificateRequest with the server's next data; the client's read
    of it queues Certificate, CertificateVerify and Finished.
    """
    client_ctx = client_context("1.3")
    client_cert().configure_cert(client_ctx)
    client_ctx.post_handshake_auth = True
    server_ctx = server_context("1.3")
    ca().configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_OPTIONAL
    server_ctx.post_handshake_auth = True
    client: MemoryBIOStream[trio.abc.Stream] = MemoryBIOStream(
        client_transport, client_ctx, server_hostname=HOSTNAME, trace=client_trace
    )
    server: MemoryBIOStream[trio.abc.Stream] = MemoryBIOStream(
        server_transport, server_ctx, server_side=True
    )
    return client, server


async def controlled_pha_streams() -> tuple[
    ControlledTransport, MemoryBIOStream[trio.abc.Stream], MemoryBIOStream[trio.abc.Stream]
]:
    """:func:`pha_streams` over memory transports, handshaken, the client's
    transport a :class:`ControlledTransport` the test can hold up."""
    client_transport, server_transport = trio.testing.memory_stream_pair()
    transport = ControlledTransport(client_transport)
    client, server = pha_streams(transport, server_transport)
    await handshake(client, server)
    return transport, client, server
