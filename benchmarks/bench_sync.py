"""The implementations without an event loop: blocking ssl.SSLSocket and a raw SSLObject pump.

* blocking: a server thread and the client in the calling thread, each with
  its own blocking :class:`ssl.SSLSocket` (so the two ends share the GIL),
  over loopback TCP; same protocols as bench_trio. Closing is a full
  close_notify exchange (``unwrap()``) on both ends. Both ends set
  TCP_NODELAY, as trio, anyio and asyncio do on every TCP stream (without it,
  Nagle's algorithm holds the second TLS 1.3 session ticket until the
  client's delayed ACK, 40 ms per connection).
* pump: a client and a server :class:`ssl.SSLObject` in one thread, with the
  bytes moved between their MemoryBIOs by hand: no sockets, no event loop, no
  close. The ceiling set by OpenSSL and the BIO copies.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

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

# ------------------------------------------------------------------ blocking


def recv_exactly(sock: ssl.SSLSocket, nbytes: int) -> bytes:
    data = sock.recv(nbytes)
    if len(data) == nbytes or not data:
        return data
    buffer = bytearray(data)
    while len(buffer) < nbytes:
        data = sock.recv(nbytes - len(buffer))
        if not data:
            break
        buffer += data
    return bytes(buffer)


def close(sock: ssl.SSLSocket) -> None:
    """close_notify both ways, then close the socket."""
    try:
        sock.unwrap()
    except (OSError, ValueError):
        pass
    finally:
        sock.close()


def wait_eof_and_close(sock: ssl.SSLSocket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    close(sock)


def bulk_receive(sock: ssl.SSLSocket) -> None:
    nbytes = int.from_bytes(recv_exactly(sock, 8), "big")
    sock.sendall(READY)
    verifier = Verifier()
    recv = sock.recv
    feed = verifier.feed
    while verifier.received < nbytes:
        data = recv(65536)
        if not data:
            break
        feed(data)
    sock.sendall(OK if verifier.ok and verifier.received == nbytes else BAD)
    wait_eof_and_close(sock)


def echo_pongs(sock: ssl.SSLSocket) -> None:
    while True:
        request = recv_exactly(sock, len(PING))
        if not request:
            break
        if request != PING:
            raise BenchmarkError("ping-pong server received a corrupted request")
        sock.sendall(PONG)
    close(sock)


def send_byte_and_wait(sock: ssl.SSLSocket) -> None:
    sock.sendall(b"x")
    wait_eof_and_close(sock)


class ServerThread:
    """Accept a number of connections in a thread, handling each in turn."""

    def __init__(
        self, context: ssl.SSLContext, handler: Callable[[ssl.SSLSocket], None], connections: int
    ) -> None:
        self._listener = socket.create_server((LOCALHOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._context = context
        self._handler = handler
        self._connections = connections
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for _ in range(self._connections):
                sock, _ = self._listener.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._handler(self._context.wrap_socket(sock, server_side=True))
        except BaseException as exc:
            self._error = exc
        finally:
            self._listener.close()

    def serve_forever_in_this_thread(self) -> None:
        print(self.port, flush=True)
        self._run()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> ServerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise BenchmarkError("the blocking server thread did not finish")
        if self._error is not None:
            raise BenchmarkError("the blocking server thread failed") from self._error


def connect(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLSocket:
    sock = socket.create_connection((LOCALHOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return context.wrap_socket(sock, server_hostname=HOSTNAME, session=session)


def _cipher(sock: ssl.SSLSocket | ssl.SSLObject) -> tuple[str | None, str | None]:
    cipher = sock.cipher()
    return (cipher[0] if cipher else None), sock.version()


def _bulk(contexts: Contexts, nbytes: int, port: int) -> Measurement:
    nchunks = check_bulk_size(nbytes)
    sock = connect(port, contexts.client)
    sock.sendall(header(nbytes))
    if recv_exactly(sock, 1) != READY:
        raise BenchmarkError("bulk receiver did not answer READY")
    chunks = CHUNKS
    count = len(chunks)
    sendall = sock.sendall
    with Timer() as timer:
        for i in range(nchunks):
            sendall(chunks[i % count])
        answer = recv_exactly(sock, 1)
    if answer != OK:
        raise BenchmarkError(f"bulk receiver reported {answer!r}: data lost or corrupted")
    cipher, version = _cipher(sock)
    close(sock)
    return Measurement(mib_per_s(nbytes, timer.elapsed), cipher, version)


def bulk_tcp(contexts: Contexts, nbytes: int, port: int | None = None) -> Measurement:
    if port is not None:
        return _bulk(contexts, nbytes, port)
    with ServerThread(contexts.server, bulk_receive, 1) as server:
        return _bulk(contexts, nbytes, server.port)


def ping_pong(contexts: Contexts, count: int) -> Measurement:
    with ServerThread(contexts.server, echo_pongs, 1) as server:
        sock = connect(server.port, contexts.client)
        sendall = sock.sendall
        size = len(PONG)
        with Timer() as timer:
            for _ in range(count):
                sendall(PING)
                if recv_exactly(sock, size) != PONG:
                    raise BenchmarkError("ping-pong client received a corrupted response")
        cipher, version = _cipher(sock)
        close(sock)
    return Measurement(count / timer.elapsed, cipher, version)


def handshakes(contexts: Contexts, count: int, *, resume: bool) -> Measurement:
    def once(port: int, session: ssl.SSLSession | None) -> ssl.SSLSocket:
        sock = connect(port, contexts.client, session)
        if recv_exactly(sock, 1) != b"x":
            raise BenchmarkError("handshake server did not send its byte")
        return sock

    with ServerThread(contexts.server, send_byte_and_wait, count + 1) as server:
        sock = once(server.port, None)
        session = sock.session
        cipher, version = _cipher(sock)
        close(sock)
        with Timer() as timer:
            for _ in range(count):
                sock = once(server.port, session if resume else None)
                if resume:
                    if not sock.session_reused:
                        raise BenchmarkError("the session was not resumed")
                    session = sock.session
                close(sock)
    return Measurement(count / timer.elapsed, cipher, version)


def receive_bulk_connections(contexts: Contexts, connections: int) -> None:
    """The receiver process: print the port, then receive that many bulk transfers."""
    ServerThread(contexts.server, bulk_receive, connections).serve_forever_in_this_thread()


# ---------------------------------------------------------------------- pump


class PumpPair:
    """A client and a server SSLObject joined by hand-moved MemoryBIOs."""

    def __init__(self, contexts: Contexts, session: ssl.SSLSession | None = None) -> None:
        self.client_in, self.client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server_in, self.server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = contexts.client.wrap_bio(
            self.client_in, self.client_out, server_hostname=HOSTNAME, session=session
        )
        self.server = contexts.server.wrap_bio(self.server_in, self.server_out, server_side=True)

    def to_server(self) -> None:
        if self.client_out.pending:
            self.server_in.write(self.client_out.read())

    def to_client(self) -> None:
        if self.server_out.pending:
            self.client_in.write(self.server_out.read())

    def handshake(self) -> None:
        """Both handshakes, then one byte from the server (which carries the tickets)."""
        client_done = server_done = False
        while not (client_done and server_done):
            if not client_done:
                try:
                    self.client.do_handshake()
                    client_done = True
                except ssl.SSLWantReadError:
                    pass
            self.to_server()
            if not server_done:
                try:
                    self.server.do_handshake()
                    server_done = True
                except ssl.SSLWantReadError:
                    pass
            self.to_client()
        self.server.write(b"x")
        self.to_client()
        if self.client.read(1) != b"x":
            raise BenchmarkError("pump: the server's byte did not arrive")


def pump_bulk(contexts: Contexts, nbytes: int) -> Measurement:
    nchunks = check_bulk_size(nbytes)
    pair = PumpPair(contexts)
    pair.handshake()
    client_write, server_read = pair.client.write, pair.server.read
    client_out_read, server_in_write = pair.client_out.read, pair.server_in.write
    verifier = Verifier()
    feed = verifier.feed
    chunks = CHUNKS
    count = len(chunks)
    want_read = ssl.SSLWantReadError
    with Timer() as timer:
        for i in range(nchunks):
            client_write(chunks[i % count])
            server_in_write(client_out_read())
            while True:
                try:
                    data = server_read(65536)
                except want_read:
                    break
                feed(data)
    if not verifier.ok or verifier.received != nbytes:
        raise BenchmarkError("pump: data lost or corrupted")
    return Measurement(mib_per_s(nbytes, timer.elapsed), *_cipher(pair.client))


def pump_ping_pong(contexts: Contexts, count: int) -> Measurement:
    pair = PumpPair(contexts)
    pair.handshake()
    client, server = pair.client, pair.server
    size = len(PING)
    with Timer() as timer:
        for _ in range(count):
            client.write(PING)
            pair.to_server()
            if server.read(size) != PING:
                raise BenchmarkError("pump: corrupted request")
            server.write(PONG)
            pair.to_client()
            if client.read(size) != PONG:
                raise BenchmarkError("pump: corrupted response")
    return Measurement(count / timer.elapsed, *_cipher(client))


def pump_handshakes(contexts: Contexts, count: int, *, resume: bool) -> Measurement:
    pair = PumpPair(contexts)
    pair.handshake()
    session = pair.client.session
    cipher, version = _cipher(pair.client)
    with Timer() as timer:
        for _ in range(count):
            pair = PumpPair(contexts, session if resume else None)
            pair.handshake()
            if resume:
                if not pair.client.session_reused:
                    raise BenchmarkError("pump: the session was not resumed")
                session = pair.client.session
    return Measurement(count / timer.elapsed, cipher, version)
