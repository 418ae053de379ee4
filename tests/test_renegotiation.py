"""TLS 1.2 renegotiation against a pyOpenSSL peer (Python's ssl cannot start one).

Renegotiation is the one case where "a send must receive" (SSL_write needs the
peer's handshake messages first, so engine.write() returns None) and "a receive
must send" (SSL_read answers a HelloRequest or ClientHello with handshake
output). The ``paths`` fixture counts both, so each test shows it took the path
it is about. The peer is pyOpenSSL, blocking in a worker thread, over a
socket.socketpair(), with a PEER_TIMEOUT on its socket and fail_after on ours.
Proof of a renegotiation, from both ends: the peer's client_random() changed
(it processed a new ClientHello), its renegotiate_pending() is False again
(the new handshake finished), and our "tls-unique" (the first Finished of the
latest handshake) changed.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing
from OpenSSL import SSL
from trio.testing import wait_all_tasks_blocked

from trio_membio import MemoryBIOStream
from trio_membio._engine import TLSEngine

from .helpers import (
    HANG,
    HOSTNAME,
    cancellable,
    receive_exactly,
    receive_forever,
)
from .peers import Role, pyopenssl_context, renegotiation_in_progress, trio_context
from .transports import opened

R = TypeVar("R")
Stream = MemoryBIOStream[trio.abc.Stream]
Wrap = Callable[[trio.SocketStream], trio.abc.Stream]

PEER_TIMEOUT = 5.0  # per blocking socket operation of the pyOpenSSL peer
TRIO_TIMEOUT = 10.0
PIECE = 16 * 1024
TOTAL = 2 * 1024 * 1024
RENEGOTIATE_AT = 256 * 1024  # a renegotiation every this many bytes of the stream
PAYLOAD = random.Random(5746).randbytes(TOTAL)


@dataclass
class Outcome:  # what the pyOpenSSL peer saw
    data: bytes  # what it received (an echo server: what it echoed)
    randoms_differ: bool  # client_random() changed: a new ClientHello was processed
    total_renegotiations: int
    pending: bool  # renegotiate_pending() at the end


@dataclass
class Run:  # one connection: our stream, and what both ends saw
    stream: Stream
    results: list[Outcome] = field(default_factory=list)
    before: bytes = b""  # our tls-unique after the first handshake...
    after: bytes = b""  # ...and at the end

    def assert_renegotiated(self, data: bytes = PAYLOAD, *, last_may_pend: bool = False) -> Outcome:
        """At least one renegotiation completed.

        With ``last_may_pend`` a later one may still be in flight when our
        side closed, which is legitimate for a client that has all its data.
        """
        result = self.results[0]
        assert result.data == data
        assert result.total_renegotiations >= 1
        assert result.randoms_differ, "the peer never processed a new ClientHello"
        assert last_may_pend or not result.pending, "the renegotiation never finished"
        assert self.before != self.after, "our side never finished a new handshake"
        return result


@dataclass
class Env:  # where the peer's PEM files go, and how our socket is wrapped
    tmp_path: Path
    wrap: Wrap


def through_methods(stream: trio.SocketStream) -> trio.abc.Stream:
    return trio.StapledStream(stream, stream)  # not a SocketStream: no fast path


@pytest.fixture(params=[lambda stream: stream, through_methods], ids=["fast-path", "generic"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    """Both of the stream's transport I/O paths: direct socket, and transport methods."""
    wrap: Wrap = request.param
    return Env(tmp_path, wrap)


@dataclass
class Paths:  # how often our engines took the two renegotiation paths
    send_must_receive: int = 0  # write() returned None
    receive_must_send: int = 0  # read() queued ciphertext for the peer


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Paths:
    counts = Paths()
    write, read = TLSEngine.write, TLSEngine.read

    def counting_write(self: TLSEngine, data: bytes | bytearray | memoryview) -> int | None:
        written = write(self, data)
        counts.send_must_receive += written is None
        return written

    def counting_read(self: TLSEngine, max_bytes: int) -> bytes | None:
        queued = self.bytes_to_send
        data = read(self, max_bytes)
        counts.receive_must_send += self.bytes_to_send > queued
        return data

    monkeypatch.setattr(TLSEngine, "write", counting_write)
    monkeypatch.setattr(TLSEngine, "read", counting_read)
    return counts


class Peer:
    """pyOpenSSL over memory BIOs: we choose which bytes go out in one socket write."""

    def __init__(self, conn: SSL.Connection, sock: socket.socket) -> None:
        self.conn = conn
        self.sock = sock
        self.random_before: bytes | None = None  # client_random() after the handshake

    def flush(self) -> None:
        with contextlib.suppress(SSL.WantReadError):  # raised when nothing is queued
            self.sock.sendall(self.conn.bio_read(1 << 22))

    def feed(self) -> None:
        self.flush()
        if data := self.sock.recv(1 << 20):
            self.conn.bio_write(data)
        else:
            self.conn.bio_shutdown()

    def call(self, operation: Callable[[], R]) -> R:
        while True:
            try:
                result = operation()
            except SSL.WantReadError:
                self.feed()
            else:
                self.flush()
                return result

    def send(self, data: bytes) -> None:
        self.call(lambda: self.conn.sendall(data))

    def recv(self, size: int = 65536) -> bytes:
        try:
            return self.call(lambda: self.conn.recv(size))
        except SSL.ZeroReturnError:  # close_notify
            return b""

    def recv_exactly(self, size: int) -> bytes:
        received = bytearray()
        while len(received) < size:
            data = self.recv(size - len(received))
            assert data, f"EOF after {len(received)} of {size} bytes"
            received += data
        return bytes(received)

    def start_renegotiation(self) -> None:
        """Queue a server's HelloRequest or a client's ClientHello, and send it."""
        assert self.conn.renegotiate()
        with contextlib.suppress(SSL.WantReadError):  # a client waits for a ServerHello
            self.conn.do_handshake()
        self.flush()

    def finish_renegotiation(self) -> None:
        """Read handshake records (no application data expected) until it is done."""
        while self.conn.renegotiate_pending():
            try:
                data = self.conn.recv(1)
            except SSL.WantReadError:
                self.flush()
                if self.conn.renegotiate_pending():
                    self.feed()
            else:
                raise AssertionError(f"unexpected application data {data!r}")

    def outcome(self, data: bytes) -> Outcome:
        conn = self.conn
        random_now, pending = conn.client_random(), conn.renegotiate_pending()
        return Outcome(data, random_now != self.random_before, conn.total_renegotiations(), pending)


def tls_unique(stream: Stream) -> bytes:
    binding = stream.get_channel_binding("tls-unique")
    assert binding is not None
    return binding


@contextlib.asynccontextmanager
async def pyopenssl_peer(
    trio_role: Role, env: Env, body: Callable[[Peer], Outcome]
) -> AsyncIterator[Run]:
    """Handshake, run ``body`` in the peer's thread, and close our stream at the end."""
    peer_role: Role = "server" if trio_role == "client" else "client"
    peer_context = pyopenssl_context(peer_role, env.tmp_path)
    ours, theirs = socket.socketpair()
    theirs.settimeout(PEER_TIMEOUT)

    def run_peer() -> None:
        with theirs:
            conn = SSL.Connection(peer_context, None)
            if peer_role == "server":
                conn.set_accept_state()
            else:
                conn.set_tlsext_host_name(HOSTNAME.encode("ascii"))
                conn.set_connect_state()
            peer = Peer(conn, theirs)
            peer.call(conn.do_handshake)
            peer.random_before = conn.client_random()
            run.results.append(body(peer))

    with ours, theirs, trio.fail_after(TRIO_TIMEOUT):
        stream = MemoryBIOStream(
            env.wrap(trio.SocketStream(trio.socket.from_stdlib_socket(ours))),
            trio_context(trio_role),
            server_side=trio_role == "server",
            server_hostname=HOSTNAME if trio_role == "client" else None,
        )
        run = Run(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, run_peer)
            try:
                await stream.do_handshake()
                run.before = tls_unique(stream)
                yield run
                run.after = tls_unique(stream)
                await stream.aclose()
            except BaseException:
                with contextlib.suppress(OSError):
                    ours.shutdown(socket.SHUT_RDWR)  # unblock the thread now
                raise


async def send_payload(stream: Stream) -> None:
    for start in range(0, TOTAL, PIECE):
        await stream.send_all(PAYLOAD[start : start + PIECE])


# ---------------------------------------------------------------- scenarios


async def test_server_renegotiates_during_full_duplex_echo(env: Env, paths: Paths) -> None:
    """Scenario 1: our client sends and receives in two tasks; the server renegotiates."""

    def echo_server(peer: Peer) -> Outcome:
        echoed = bytearray()
        while len(echoed) < TOTAL:
            data = peer.recv()
            assert data, "client closed early"
            peer.send(data)
            crossed = (len(echoed) + len(data)) // RENEGOTIATE_AT > len(echoed) // RENEGOTIATE_AT
            finishing = len(echoed) + len(data) >= TOTAL  # we are about to close
            if crossed and not finishing and not peer.conn.renegotiate_pending():
                peer.start_renegotiation()  # a HelloRequest, mid-stream both ways
            echoed += data
        try:
            closing = peer.recv()
        except (BrokenPipeError, ConnectionResetError):
            # Our client had all its data and closed while the server's last
            # renegotiation was still in flight; the server's handshake
            # output then meets a closed socket. Anything else is a failure.
            assert peer.conn.renegotiate_pending()
            closing = b""
        assert closing == b""  # our close_notify
        return peer.outcome(bytes(echoed))

    async with (
        pyopenssl_peer("client", env, echo_server) as run,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(send_payload, run.stream)  # send and receive at once
        assert await receive_exactly(run.stream, TOTAL) == PAYLOAD
    run.assert_renegotiated(last_may_pend=True)
    # Which direction met the renegotiation depends on trio's scheduling here;
    # test_send_must_receive_past_application_data pins down the send side.
    assert paths.send_must_receive + paths.receive_must_send >= 1


async def test_client_renegotiates_against_our_echo_server(env: Env, paths: Paths) -> None:
    """Scenario 2: ClientHellos arrive mid-stream at our server, behind data it echoes."""

    def client(peer: Peer) -> Outcome:
        echoed = bytearray()
        for start in range(0, TOTAL, PIECE):
            piece = PAYLOAD[start : start + PIECE]
            if start and start % RENEGOTIATE_AT == 0:
                # The piece and the ClientHello behind it go out in one write,
                # so our server reads both at once; its echo of the piece then
                # waits for the rest of the handshake (a send that must
                # receive) unless its receive task finishes the handshake
                # first. Driven from SSL_read: only there does OpenSSL accept
                # application data before the ServerHello.
                peer.conn.sendall(piece)
                peer.start_renegotiation()
            else:
                peer.send(piece)
            echoed += peer.recv_exactly(len(piece))
        peer.call(peer.conn.shutdown)
        assert peer.recv() == b""  # our close_notify
        return peer.outcome(bytes(echoed))

    async with pyopenssl_peer("server", env, client) as run:
        send_channel, receive_channel = trio.open_memory_channel[bytes](4)

        async def receive() -> None:
            async with send_channel:
                while data := await run.stream.receive_some():
                    await send_channel.send(bytes(data))

        async with trio.open_nursery() as nursery, receive_channel:
            nursery.start_soon(receive)
            async for data in receive_channel:
                await run.stream.send_all(data)
    renegotiations = TOTAL // RENEGOTIATE_AT - 1
    assert run.assert_renegotiated().total_renegotiations == renegotiations
    # Every ClientHello is answered by ServerHello..ServerHelloDone.
    assert paths.receive_must_send >= renegotiations
    # Whether the echo also met a renegotiation depends on thread scheduling:
    # under CPU load the receive task finished every handshake first in 2 of
    # 60 runs (send_must_receive 0; else up to 14).
    # test_send_must_receive_past_application_data pins down the send side.


async def test_server_renegotiates_while_we_only_receive(env: Env, paths: Paths) -> None:
    """Scenario 3: no sends at all, so receive_some must send the handshake replies."""

    def server(peer: Peer) -> Outcome:
        peer.send(PAYLOAD[:RENEGOTIATE_AT])
        peer.start_renegotiation()
        peer.send(PAYLOAD[RENEGOTIATE_AT : 2 * RENEGOTIATE_AT])  # while it is pending
        peer.finish_renegotiation()
        peer.send(PAYLOAD[2 * RENEGOTIATE_AT :])
        assert peer.recv() == b""  # our close_notify
        return peer.outcome(PAYLOAD)

    async with pyopenssl_peer("client", env, server) as run:
        assert await receive_exactly(run.stream, TOTAL) == PAYLOAD
    run.assert_renegotiated()
    # The ClientHello, then ClientKeyExchange..Finished, all sent by receive_some.
    assert paths.receive_must_send >= 2
    assert paths.send_must_receive == 0


async def test_server_renegotiates_while_we_only_send(env: Env) -> None:
    """Scenario 4: the server sends a HelloRequest, then only reads; we only send.

    Observed (OpenSSL 3.0 on our side): SSL_write never reads, so our client
    never sees the HelloRequest and nothing is renegotiated (the server's
    renegotiate_pending() stays True, our tls-unique is unchanged). TLS 1.2
    allows ignoring a HelloRequest; what matters is that every byte arrives.
    """

    def server(peer: Peer) -> Outcome:
        peer.start_renegotiation()
        received = peer.recv_exactly(TOTAL)
        assert peer.recv() == b""  # our close_notify
        return peer.outcome(received)

    async with pyopenssl_peer("client", env, server) as run:
        await send_payload(run.stream)
    result = run.results[0]
    assert result.data == PAYLOAD
    assert result.total_renegotiations == 1  # the HelloRequest was sent...
    assert result.pending == (run.before == run.after)  # ...answered iff we renegotiated


async def test_send_must_receive_past_application_data(
    env: Env, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send that must receive while application data precedes the handshake reply.

    After a HelloRequest a TLS 1.2 server may go on sending data until it reads
    our ClientHello. receive_some(100) answers the HelloRequest and returns
    record A; record B then sits in front of the ServerHello and nobody is
    receiving. send_all must get past B to finish the handshake, and B must
    still be delivered afterwards.

    How it gets past B depends on timing: usually the write needs the
    server's reply and receives it (send_must_receive); if the reply was
    already buffered, the write first sets B aside (engine rule 7) and the
    reply is read on the way. Either way is counted.
    """
    a, b, ours = b"A" * 100, b"B" * 100, b"after the HelloRequest"
    set_aside_by_write = 0
    set_aside = TLSEngine._set_aside_application_data

    def counting_set_aside(self: TLSEngine) -> None:
        nonlocal set_aside_by_write
        before = self.buffered_plaintext
        set_aside(self)
        set_aside_by_write += self.buffered_plaintext > before

    monkeypatch.setattr(TLSEngine, "_set_aside_application_data", counting_set_aside)

    def server(peer: Peer) -> Outcome:
        peer.start_renegotiation()
        peer.send(a)
        peer.send(b)  # a second record, sent before the server sees a ClientHello
        received = peer.recv_exactly(len(ours))
        peer.send(received)
        assert peer.recv() == b""  # our close_notify
        return peer.outcome(received)

    async with pyopenssl_peer("client", env, server) as run:
        assert await run.stream.receive_some(len(a)) == a
        await run.stream.send_all(ours)
        assert await receive_exactly(run.stream, len(b + ours)) == b + ours
    run.assert_renegotiated(data=ours)
    assert paths.send_must_receive + set_aside_by_write >= 1


def test_write_sets_aside_the_rest_of_a_partly_read_record(tmp_path: Path) -> None:
    """Engine rule 7 also covers plaintext a short read() left inside the SSLObject.

    The server asks to renegotiate and sends data; our read() takes 3 of its
    10 bytes. The other 7 stay in OpenSSL's record buffer (the incoming BIO is
    empty), and an SSL_write that met them mid-renegotiation failed the
    connection with SSLEOFError.
    """
    server = SSL.Connection(pyopenssl_context("server", tmp_path), None)
    server.set_accept_state()
    client = TLSEngine(trio_context("client"), server_hostname=HOSTNAME)

    def to_server() -> None:
        if data := client.data_to_send():
            server.bio_write(data)

    def to_client() -> None:
        with contextlib.suppress(SSL.WantReadError):  # nothing queued
            client.receive_data(server.bio_read(1 << 20))

    def server_step() -> None:
        with contextlib.suppress(SSL.WantReadError):
            server.do_handshake()

    for _ in range(5):
        client.do_handshake()
        to_server()
        server_step()
        to_client()
    assert client.do_handshake()
    to_server()
    server_step()

    assert server.renegotiate()
    server_step()  # the HelloRequest
    server.send(b"0123456789")
    to_client()
    assert client.read(3) == b"012"
    assert client.buffered_ciphertext == 0
    assert client.ssl_object.pending() == 7
    assert client.write(b"x") is None  # waits for the server's reply, nothing lost
    assert client.read(100) == b"3456789"
    # The renegotiation completes and the write goes through.
    for _ in range(5):
        to_server()
        with contextlib.suppress(SSL.WantReadError):
            assert server.recv(100) == b"x"
            break
        to_client()
        if client.write(b"x") is not None:
            to_server()
    else:
        raise AssertionError("the renegotiation did not finish")


# -------------------- stepped by the test: a send cancelled mid-renegotiation


async def test_send_cancelled_during_renegotiation_does_not_pin_its_bytes(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """send_all() cancelled mid-renegotiation pinned its bytes: later sends raised ValueError."""
    with trio.fail_after(HANG):
        client, peer = await renegotiation_in_progress(*trio.testing.memory_stream_pair(), tmp_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_forever, client, [])
            await wait_all_tasks_blocked()  # it answered with a ClientHello
            with trio.move_on_after(1) as scope:
                await client.send_all(b"never sent")  # waits for the server's answer
            assert scope.cancelled_caught
            async with trio.open_nursery() as peer_side:
                peer_side.start_soon(peer.receive_exactly, 10)
                await client.send_all(b"later")
                await client.send_all(b"later")
            nursery.cancel_scope.cancel()
        assert peer.received == b"laterlater"
        assert peer.renegotiated
        await client.aclose()


async def test_send_cancelled_during_renegotiation_keeps_anothers_send_lane(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """send_all() cancelled mid-renegotiation freed a send lane another task held."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        pump = client_transport.send_stream.send_all_hook
        assert pump is not None
        gate = opened()

        async def gated_pump() -> None:  # runs inside the memory stream's send_all
            await gate.wait()
            await pump()

        client_transport.send_stream.send_all_hook = gated_pump
        client, peer = await renegotiation_in_progress(client_transport, server_transport, tmp_path)
        ready = trio.Event()

        async def wait_to_send() -> None:
            await client.wait_send_all_might_not_block()
            ready.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_forever, client, [])
            await wait_all_tasks_blocked()  # it answered with a ClientHello
            sender = trio.CancelScope()
            nursery.start_soon(cancellable, sender, functools.partial(client.send_all, b"hello"))
            await wait_all_tasks_blocked()  # the write waits for the renegotiation
            gate = trio.Event()  # the client's transport now holds its sends
            await peer.step()  # ServerHello .. ServerHelloDone
            await wait_all_tasks_blocked()  # the reader holds the send lane, stuck answering
            sender.cancel()
            await wait_all_tasks_blocked()
            nursery.start_soon(wait_to_send)
            await wait_all_tasks_blocked()
            assert not ready.is_set()  # it waits for the reader's send...
            gate.set()
            await ready.wait()  # ...and then goes ahead, without BusyResourceError
            async with trio.open_nursery() as peer_side:
                peer_side.start_soon(peer.receive_exactly, 5)
                await client.send_all(b"after")
            nursery.cancel_scope.cancel()
        assert peer.received == b"after"
        assert peer.renegotiated
        await client.aclose()
