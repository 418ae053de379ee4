"""Interop with the stdlib's blocking ssl.SSLSocket, running in a thread.

One end of a socket.socketpair() is a trio.SocketStream under a
MemoryBIOStream; the other end is wrapped by a blocking SSLContext.wrap_socket
in a worker thread (trio.to_thread.run_sync). The blocking side always has a
socket timeout and the trio side a fail_after, so a bug fails, never hangs.
The peer uses suppress_ragged_eofs=False, so its recv() returns b"" only for a
real close_notify (a bare EOF raises SSLEOFError).
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from functools import cache
from typing import Generic, Literal, TypeVar

import outcome
import pytest
import trio
import trustme

from trio_membio import MemoryBIOStream

from .helpers import HOSTNAME, TLSVersion, ca, client_context, receive_exactly, server_context

T = TypeVar("T")
Role = Literal["client", "server"]
Stream = MemoryBIOStream[trio.SocketStream]

PEER_TIMEOUT = 5.0  # per blocking socket operation
TRIO_TIMEOUT = 10.0
VERSIONS = pytest.mark.parametrize("version", ["1.2", "1.3"])
ROLES = pytest.mark.parametrize("trio_role", ["client", "server"])


@cache
def other_ca() -> trustme.CA:
    """A CA that neither helpers' client nor server contexts trust."""
    return trustme.CA(key_type=trustme.KeyType.ECDSA)


class Peer(Generic[T]):
    """The blocking peer's thread: its return value or exception, once done."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: outcome.Outcome[T] | None = None
        self.observed = False

    async def result(self) -> T:
        await self.done.wait()
        assert self.outcome is not None
        self.observed = True
        return self.outcome.unwrap()


@contextlib.asynccontextmanager
async def blocking_peer(
    context: ssl.SSLContext, peer_side: Role, body: Callable[[ssl.SSLSocket], T]
) -> AsyncIterator[tuple[trio.SocketStream, Peer[T]]]:
    """Run ``body(ssl_sock)`` in a thread; yield the trio transport and the peer."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(PEER_TIMEOUT)
    peer: Peer[T] = Peer()

    def run() -> T:
        with (
            theirs,
            context.wrap_socket(
                theirs,
                server_side=peer_side == "server",
                server_hostname=HOSTNAME if peer_side == "client" else None,
                do_handshake_on_connect=False,
                suppress_ragged_eofs=False,
            ) as sock,
        ):
            return body(sock)

    async def run_in_thread() -> None:
        peer.outcome = await outcome.acapture(trio.to_thread.run_sync, run)
        peer.done.set()

    try:
        with trio.fail_after(TRIO_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_in_thread)
                try:
                    yield trio.SocketStream(trio.socket.from_stdlib_socket(ours)), peer
                except BaseException:
                    # Unblock the thread at once instead of at its timeout.
                    with contextlib.suppress(OSError):
                        ours.shutdown(socket.SHUT_RDWR)
                    raise
        if not peer.observed:
            await peer.result()  # surface an error the test did not look at
    finally:
        ours.close()


def make_stream(
    transport: trio.SocketStream,
    trio_role: Role,
    context: ssl.SSLContext,
    *,
    https_compatible: bool = False,
) -> Stream:
    return MemoryBIOStream(
        transport,
        context,
        server_side=trio_role == "server",
        server_hostname=HOSTNAME if trio_role == "client" else None,
        https_compatible=https_compatible,
    )


def contexts(trio_role: Role, version: TLSVersion) -> tuple[ssl.SSLContext, ssl.SSLContext, Role]:
    """(trio context, peer context, peer role) for a normal, trusted connection."""
    if trio_role == "client":
        return client_context(version), server_context(version), "server"
    return server_context(version), client_context(version), "client"


# ---------------------------------------------------------------------- echo

MESSAGES = [
    b"hello",
    b"x",
    random.Random(1234).randbytes(1024 * 1024),
    b"\x00" * 17_000,  # spans two TLS records
    b"bye",
]


@VERSIONS
@ROLES
async def test_echo(trio_role: Role, version: TLSVersion) -> None:
    total = sum(map(len, MESSAGES))
    trio_ctx, peer_ctx, peer_role = contexts(trio_role, version)

    def echo(sock: ssl.SSLSocket) -> bytes:
        sock.do_handshake()
        echoed = 0
        while echoed < total:
            data = sock.recv(65536)
            assert data, "trio side closed early"
            sock.sendall(data)
            echoed += len(data)
        return sock.recv(1)  # b"" once trio's close_notify arrives

    async with blocking_peer(peer_ctx, peer_role, echo) as (transport, peer):
        stream = make_stream(transport, trio_role, trio_ctx)
        await stream.do_handshake()
        assert stream.version() == f"TLSv{version}"
        received = b""

        async def collect() -> None:
            nonlocal received
            received = await receive_exactly(stream, total)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            for message in MESSAGES:
                await stream.send_all(message)
        assert received == b"".join(MESSAGES)
        await stream.aclose()
        assert await peer.result() == b""


# -------------------------------------------------------------------- unwrap


@VERSIONS
@ROLES
@pytest.mark.parametrize("initiator", ["peer", "peer-read-eof-first", "trio"])
async def test_unwrap(trio_role: Role, version: TLSVersion, initiator: str) -> None:
    trio_ctx, peer_ctx, peer_role = contexts(trio_role, version)

    def peer_body(sock: ssl.SSLSocket) -> None:
        sock.do_handshake()
        assert sock.recv(100) == b"ping"
        sock.sendall(b"pong")
        if initiator == "trio":
            assert sock.recv(100) == b""  # trio's close_notify came first
        raw = sock.unwrap()
        raw.sendall(b"after-tls")

    async with blocking_peer(peer_ctx, peer_role, peer_body) as (transport, peer):
        stream = make_stream(transport, trio_role, trio_ctx)
        await stream.send_all(b"ping")
        assert await receive_exactly(stream, 4) == b"pong"
        if initiator == "peer-read-eof-first":
            assert await stream.receive_some() == b""
        plain, trailing = await stream.unwrap()
        assert plain is transport
        await peer.result()  # the peer has sent everything and closed
        data = trailing
        while chunk := await plain.receive_some():
            data += chunk
        assert data == b"after-tls"
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"no")
        await plain.aclose()


async def test_unwrap_trailing_data_after_half_close() -> None:
    """TLS 1.3: close_notify and plaintext arrive in the same transport read."""
    trio_ctx, peer_ctx, peer_role = contexts("client", "1.3")

    def peer_body(sock: ssl.SSLSocket) -> None:
        sock.do_handshake()
        assert sock.recv(100) == b""
        sock.unwrap().sendall(b"after-tls")

    async with blocking_peer(peer_ctx, peer_role, peer_body) as (transport, peer):
        stream = make_stream(transport, "client", trio_ctx)
        await stream.send_eof()
        await peer.result()  # close_notify + b"after-tls" now wait in the socket
        plain, trailing = await stream.unwrap()
        assert trailing == b"after-tls"
        assert await plain.receive_some() == b""
        await plain.aclose()


# ------------------------------------------------------ certificate failures

Observation = tuple[str, ssl.SSLError | bytes]


def observe_as_client(sock: ssl.SSLSocket) -> Observation:
    """Where the blocking client sees the server's verdict: handshake or recv."""
    try:
        sock.do_handshake()
    except ssl.SSLError as exc:
        return "handshake", exc
    try:
        return "recv", sock.recv(100)
    except ssl.SSLError as exc:
        return "recv", exc


async def rejected_by_trio_server(
    version: TLSVersion, client_cert: trustme.LeafCert | None
) -> tuple[trio.BrokenResourceError, Observation]:
    server_ctx = server_context(version)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca().configure_trust(server_ctx)
    client_ctx = client_context(version)
    if client_cert is not None:
        client_cert.configure_cert(client_ctx)
    async with blocking_peer(client_ctx, "client", observe_as_client) as (transport, peer):
        stream = make_stream(transport, "server", server_ctx)
        with pytest.raises(trio.BrokenResourceError) as info:
            await stream.do_handshake()
        # The stream (and so the transport) stays open until the client has
        # observed the verdict: only the alert can keep it from hanging.
        observation = await peer.result()
        await stream.aclose()
    return info.value, observation


def expected_step(version: TLSVersion) -> str:
    # A TLS 1.3 client finishes its handshake before the server checks its
    # certificate, so it meets the alert in its first recv().
    return "recv" if version == "1.3" else "handshake"


@VERSIONS
async def test_client_certificate_from_unknown_ca(version: TLSVersion) -> None:
    cert = other_ca().issue_cert("client.example.org", key_type=trustme.KeyType.ECDSA)
    error, (step, seen) = await rejected_by_trio_server(version, cert)
    assert isinstance(error.__cause__, ssl.SSLError)
    assert "certificate verify failed" in str(error.__cause__)
    assert step == expected_step(version)
    assert isinstance(seen, ssl.SSLError), seen
    assert "alert unknown ca" in str(seen)


@VERSIONS
async def test_client_certificate_missing(version: TLSVersion) -> None:
    error, (step, seen) = await rejected_by_trio_server(version, None)
    assert isinstance(error.__cause__, ssl.SSLError)
    assert "peer did not return a certificate" in str(error.__cause__)
    assert step == expected_step(version)
    assert isinstance(seen, ssl.SSLError), seen
    # OpenSSL: TLS 1.3 has a dedicated alert; TLS 1.2 uses handshake_failure.
    alert = "alert certificate required" if version == "1.3" else "alert handshake failure"
    assert alert in str(seen)


@VERSIONS
async def test_client_certificate_accepted(version: TLSVersion) -> None:
    """Control for the two tests above: the same setup with a trusted cert works."""
    server_ctx = server_context(version)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca().configure_trust(server_ctx)
    client_ctx = client_context(version)
    ca().issue_cert("client.example.org", key_type=trustme.KeyType.ECDSA).configure_cert(client_ctx)
    async with blocking_peer(client_ctx, "client", observe_as_client) as (transport, peer):
        stream = make_stream(transport, "server", server_ctx)
        await stream.do_handshake()
        await stream.send_all(b"welcome")
        assert await peer.result() == ("recv", b"welcome")
        await stream.aclose()


@VERSIONS
async def test_server_certificate_from_unknown_ca(version: TLSVersion) -> None:
    peer_ctx = server_context(version)
    other_ca().issue_cert(HOSTNAME, key_type=trustme.KeyType.ECDSA).configure_cert(peer_ctx)

    def server(sock: ssl.SSLSocket) -> ssl.SSLError | None:
        try:
            sock.do_handshake()
        except ssl.SSLError as exc:
            return exc
        return None

    async with blocking_peer(peer_ctx, "server", server) as (transport, peer):
        stream = make_stream(transport, "client", client_context(version))
        with pytest.raises(trio.BrokenResourceError) as info:
            await stream.do_handshake()
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
        seen = await peer.result()  # before the transport is closed
        await stream.aclose()
    assert isinstance(seen, ssl.SSLError), seen
    assert "alert unknown ca" in str(seen)


# -------------------------------------------------------------- close_notify


@VERSIONS
@ROLES
async def test_trio_aclose_sends_close_notify(trio_role: Role, version: TLSVersion) -> None:
    trio_ctx, peer_ctx, peer_role = contexts(trio_role, version)

    def peer_body(sock: ssl.SSLSocket) -> bytes:
        sock.do_handshake()
        return sock.recv(100)  # raises SSLEOFError on a bare EOF

    async with blocking_peer(peer_ctx, peer_role, peer_body) as (transport, peer):
        stream = make_stream(transport, trio_role, trio_ctx)
        await stream.do_handshake()
        await stream.aclose()
        assert await peer.result() == b""


@VERSIONS
@ROLES
async def test_peer_close_notify_is_clean_eof(trio_role: Role, version: TLSVersion) -> None:
    trio_ctx, peer_ctx, peer_role = contexts(trio_role, version)

    def peer_body(sock: ssl.SSLSocket) -> None:
        sock.do_handshake()
        sock.sendall(b"last words")
        sock.unwrap()  # sends close_notify, then waits for ours

    async with blocking_peer(peer_ctx, peer_role, peer_body) as (transport, peer):
        stream = make_stream(transport, trio_role, trio_ctx)
        assert await receive_exactly(stream, 10) == b"last words"
        assert await stream.receive_some() == b""
        assert await stream.receive_some() == b""
        await stream.aclose()  # answers with our close_notify
        await peer.result()


@VERSIONS
@ROLES
@pytest.mark.parametrize("https_compatible", [False, True], ids=["strict", "https"])
async def test_peer_eof_without_close_notify(
    trio_role: Role, version: TLSVersion, https_compatible: bool
) -> None:
    trio_ctx, peer_ctx, peer_role = contexts(trio_role, version)

    def peer_body(sock: ssl.SSLSocket) -> None:
        sock.do_handshake()
        sock.sendall(b"partial")
        sock.shutdown(socket.SHUT_RDWR)  # drops TLS state; no close_notify

    async with blocking_peer(peer_ctx, peer_role, peer_body) as (transport, peer):
        stream = make_stream(transport, trio_role, trio_ctx, https_compatible=https_compatible)
        assert await receive_exactly(stream, 7) == b"partial"
        await peer.result()
        if https_compatible:
            assert await stream.receive_some() == b""
        else:
            with pytest.raises(trio.BrokenResourceError, match="truncat"):
                await stream.receive_some()
        await stream.aclose()
