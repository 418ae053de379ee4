"""httpx and httpcore over trio_membio.httpcore.MemoryBIOBackend, end to end.

The server is HTTP/1.1 (h11) over trio_membio's own TLS on 127.0.0.1; the
client is an httpx.AsyncClient whose connection pool uses MemoryBIOBackend.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import random
import socket
import ssl
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h11
import httpcore
import httpx
import pytest
import trio
import trio.testing
import trio_websocket
import trustme

from trio_membio import MemoryBIOListener, MemoryBIOStream, serve_tls_over_tcp
from trio_membio.httpcore import MemoryBIOBackend, MemoryBIONetworkStream

from .helpers import HOSTNAME, client_context, server_context

BIG = random.Random(20240501).randbytes(5 * 1024 * 1024)
BIG_SHA256 = hashlib.sha256(BIG).hexdigest()
CHUNK = 256 * 1024

TLSServerStream = MemoryBIOStream[trio.abc.Stream]


# ---------------------------------------------------------------- the client


def make_client(
    pool: httpcore.AsyncConnectionPool, *, timeout: float = 30.0, base_url: str = ""
) -> httpx.AsyncClient:
    """An httpx client whose connections come from ``pool``.

    httpx 0.28 has no public parameter to choose httpcore's network backend
    (encode/httpx discussion #3180, pull request #3749), so the transport's
    pool, built in AsyncHTTPTransport.__init__, is replaced by one made with
    ``network_backend=MemoryBIOBackend()``. ``_pool`` is private: the assert
    makes an httpx that renames it fail here, loudly.
    """
    transport = httpx.AsyncHTTPTransport()
    assert isinstance(transport._pool, httpcore.AsyncConnectionPool)
    transport._pool = pool
    # trust_env=False: no proxy from the environment between us and 127.0.0.1.
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, base_url=base_url, trust_env=False
    )


def make_pool(
    context: ssl.SSLContext | None = None, **kwargs: object
) -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(
        ssl_context=context or client_context(),
        network_backend=MemoryBIOBackend(),
        **kwargs,  # type: ignore[arg-type]  # forwarded pool options
    )


# ---------------------------------------------------------------- the server


class Corked(trio.abc.Stream):
    """A transport that holds what is sent while ``held`` is not None."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.held: bytearray | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.held is None:
            await self.inner.send_all(data)
        else:
            self.held += data
            await trio.lowlevel.checkpoint()

    async def flush(self) -> None:
        held, self.held = self.held, None
        if held:
            await self.inner.send_all(held)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def next_event(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(bytes(await stream.receive_some()))


async def send(conn: h11.Connection, stream: trio.abc.Stream, *events: h11.Event) -> None:
    await stream.send_all(b"".join(conn.send(event) or b"" for event in events))


def response(length: int, *extra: tuple[str, str]) -> h11.Response:
    return h11.Response(status_code=200, headers=[("Content-Length", str(length)), *extra])


class HTTPSServer:
    """HTTP/1.1 over MemoryBIOStream. Routes:

    - ``/hello``: says which connection (numbered from 1) answered;
    - ``/big``: :data:`BIG`;
    - ``/close``: answers "keep-alive", then closes the connection;
    - ``/half-close``: answers, then sends close_notify but keeps TCP open,
      both in one write (the corked server only);
    - ``/silent``: never answers.
    """

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.requests: list[tuple[int, str]] = []
        self.broken = 0
        self.closed = trio.Event()

    async def start(self, nursery: trio.Nursery) -> HTTPSServer:
        listeners = await nursery.start(
            partial(
                serve_tls_over_tcp,
                self.handle,
                0,
                server_context(),
                host="127.0.0.1",
                https_compatible=True,
            )
        )
        self.port = _port(listeners[0])
        return self

    async def start_corked(self, nursery: trio.Nursery) -> HTTPSServer:
        """Serve with a Corked stream under each MemoryBIOStream."""

        async def handle_tcp(tcp: trio.SocketStream) -> None:
            tls = MemoryBIOStream(Corked(tcp), server_context(), server_side=True)
            async with tls:
                await self.handle(tls)

        listeners = await nursery.start(partial(trio.serve_tcp, handle_tcp, 0, host="127.0.0.1"))
        listener = listeners[0]
        assert isinstance(listener, trio.SocketListener)
        self.port = listener.socket.getsockname()[1]
        return self

    async def handle(self, stream: TLSServerStream) -> None:
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await next_event(conn, stream)
                if not isinstance(request, h11.Request):
                    return  # the client closed the connection
                while not isinstance(await next_event(conn, stream), h11.EndOfMessage):
                    pass
                target = request.target.decode()
                self.requests.append((number, target))
                if not await self.respond(conn, stream, target, number):
                    return
                conn.start_next_cycle()
        except trio.BrokenResourceError:
            self.broken += 1  # the client went away in the middle

    async def respond(
        self, conn: h11.Connection, stream: TLSServerStream, target: str, number: int
    ) -> bool:
        """Answer one request; return whether the connection stays open."""
        if target == "/hello":
            body = f"hello from connection {number}".encode()
            await send(conn, stream, response(len(body)), h11.Data(data=body), h11.EndOfMessage())
        elif target == "/big":
            await send(conn, stream, response(len(BIG)))
            for start in range(0, len(BIG), CHUNK):
                await send(conn, stream, h11.Data(data=BIG[start : start + CHUNK]))
            await send(conn, stream, h11.EndOfMessage())
        elif target == "/close":
            headers = ("Connection", "keep-alive")
            await send(conn, stream, response(2, headers), h11.Data(data=b"ok"), h11.EndOfMessage())
            await stream.aclose()
            self.closed.set()
            return False
        elif target == "/half-close":
            corked = stream.transport_stream
            assert isinstance(corked, Corked)
            corked.held = bytearray()
            await send(conn, stream, response(2), h11.Data(data=b"ok"), h11.EndOfMessage())
            await stream.send_eof()  # close_notify; TCP stays open
            await corked.flush()
            while await stream.receive_some():  # until the client closes
                pass
            return False
        else:
            assert target == "/silent"
            await trio.sleep_forever()
        return True


class HTTP2Server:
    """HTTP/2 over MemoryBIOStream (ALPN "h2"), with the h2 library.

    Every path gets "stream N for PATH" back, but ``/big``, which gets
    :data:`BIG`, sent as the client's flow-control windows allow.
    """

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.paths: list[str] = []

    async def start(self, nursery: trio.Nursery) -> HTTP2Server:
        context = server_context()
        context.set_alpn_protocols(["h2"])
        listeners = await nursery.start(
            partial(serve_tls_over_tcp, self.handle, 0, context, host="127.0.0.1")
        )
        self.port = _port(listeners[0])
        return self

    async def handle(self, stream: TLSServerStream) -> None:
        assert stream.selected_alpn_protocol() == "h2"
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        unsent: dict[int, bytes] = {}  # response bodies waiting for window
        while data := await stream.receive_some():
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    stream_id, headers = event.stream_id, event.headers
                    assert stream_id is not None
                    assert headers is not None
                    path = dict(headers)[b":path"].decode()
                    self.paths.append(path)
                    body = BIG if path == "/big" else f"stream {stream_id} for {path}".encode()
                    status = [(":status", "200"), ("content-length", str(len(body)))]
                    conn.send_headers(stream_id, status)
                    unsent[stream_id] = body
                elif isinstance(event, h2.events.StreamReset):
                    assert event.stream_id is not None
                    unsent.pop(event.stream_id, None)
            for stream_id, body in list(unsent.items()):
                while body and (room := conn.local_flow_control_window(stream_id)):
                    size = min(room, conn.max_outbound_frame_size)
                    conn.send_data(stream_id, body[:size])
                    body = body[size:]
                if body:
                    unsent[stream_id] = body
                else:
                    conn.end_stream(stream_id)
                    del unsent[stream_id]
            await stream.send_all(conn.data_to_send())


def _port(listener: MemoryBIOListener[trio.SocketStream]) -> int:
    tcp_listener = listener.transport_listener
    assert isinstance(tcp_listener, trio.SocketListener)
    port: int = tcp_listener.socket.getsockname()[1]
    return port


@contextlib.contextmanager
def warning_logged(text: str) -> Iterator[trio.Event]:
    """An event set when the trio_membio logger logs a warning containing text."""
    event = trio.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING and text in record.getMessage():
                event.set()

    handler = Handler()
    logger = logging.getLogger("trio_membio")
    logger.addHandler(handler)
    try:
        yield event
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------- tests


async def test_keep_alive_reuses_one_tls_connection(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    pool = make_pool(socket_options=options)
    async with make_client(pool, base_url=f"https://127.0.0.1:{server.port}") as client:
        responses = [await client.get("/hello") for _ in range(3)]
        network_stream = responses[-1].extensions["network_stream"]

        assert [r.status_code for r in responses] == [200, 200, 200]
        assert {r.text for r in responses} == {"hello from connection 1"}
        assert {r.http_version for r in responses} == {"HTTP/1.1"}
        assert server.connections == 1
        assert server.requests == [(1, "/hello")] * 3

        assert isinstance(network_stream, MemoryBIONetworkStream)
        ssl_object = network_stream.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        assert ssl_object.version() == "TLSv1.3"
        sock = network_stream.get_extra_info("socket")
        assert isinstance(sock, trio.socket.SocketType)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        assert network_stream.get_extra_info("client_addr") == sock.getsockname()
        assert network_stream.get_extra_info("server_addr") == ("127.0.0.1", server.port)
        assert network_stream.get_extra_info("is_readable") is False
        assert network_stream.get_extra_info("no such key") is None


async def test_http2_multiplexes_requests_over_one_tls_connection(nursery: trio.Nursery) -> None:
    """ALPN negotiates h2 through the backend, and streams share one connection."""
    server = await HTTP2Server().start(nursery)
    pool = make_pool(http1=False, http2=True)
    async with make_client(pool, base_url=f"https://127.0.0.1:{server.port}") as client:
        first = await client.get("/first")  # opens the connection
        responses: dict[str, httpx.Response] = {}

        async def get(path: str) -> None:
            responses[path] = await client.get(path)

        with trio.fail_after(30):
            async with trio.open_nursery() as requests:
                for path in ("/a", "/b", "/big", "/c"):
                    requests.start_soon(get, path)
        ssl_object = first.extensions["network_stream"].get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "h2"
    assert first.http_version == "HTTP/2"
    assert {response.http_version for response in responses.values()} == {"HTTP/2"}
    assert server.connections == 1
    assert sorted(server.paths) == ["/a", "/b", "/big", "/c", "/first"]
    texts = {path: responses[path].text for path in ("/a", "/b", "/c")}
    stream_ids = {text.split()[1] for text in texts.values()}
    assert len(stream_ids) == 3  # three streams, multiplexed
    assert all(text.endswith(f" for {path}") for path, text in texts.items())
    assert hashlib.sha256(responses["/big"].content).hexdigest() == BIG_SHA256


async def test_multi_megabyte_response(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    async with make_client(make_pool(), base_url=f"https://127.0.0.1:{server.port}") as client:
        response = await client.get("/big")
    assert response.status_code == 200
    assert len(response.content) == len(BIG)
    assert hashlib.sha256(response.content).hexdigest() == BIG_SHA256


async def test_untrusted_certificate_is_a_connect_error(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    other_ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    distrusting = ssl.create_default_context()
    other_ca.configure_trust(distrusting)

    with warning_logged("TLS handshake with 127.0.0.1") as logged:
        async with make_client(make_pool(distrusting)) as client:
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await client.get(f"https://127.0.0.1:{server.port}/hello")
        with trio.fail_after(5):
            await logged.wait()  # the server logged the failed handshake and went on

    # The network stream itself: start_tls closes what it was given.
    stream = await MemoryBIOBackend().connect_tcp("127.0.0.1", server.port)
    with pytest.raises(httpcore.ConnectError, match="certificate verify failed") as info:
        await stream.start_tls(distrusting, "127.0.0.1", timeout=5)
    assert isinstance(info.value.__cause__, trio.BrokenResourceError)
    tcp = stream.stream
    assert isinstance(tcp, trio.SocketStream)
    assert tcp.socket.fileno() == -1

    # The server is still serving.
    async with make_client(make_pool()) as client:
        response = await client.get(f"https://127.0.0.1:{server.port}/hello")
    assert response.status_code == 200
    assert server.connections == 1  # handlers only run after a good handshake


async def test_cancelled_download_leaves_the_pool_usable(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    pool = make_pool()
    async with make_client(pool, base_url=f"https://127.0.0.1:{server.port}") as client:
        received = 0
        with trio.CancelScope() as scope:
            async with client.stream("GET", "/big") as streaming:
                async for chunk in streaming.aiter_raw():
                    received += len(chunk)
                    scope.cancel()
        assert scope.cancelled_caught
        assert 0 < received < len(BIG)

        response = await client.get("/hello")
        assert response.status_code == 200
        assert response.text.startswith("hello from connection ")
        big = await client.get("/big")
        assert hashlib.sha256(big.content).hexdigest() == BIG_SHA256
        assert len(pool.connections) == 1
    assert [target for _, target in server.requests] == ["/big", "/hello", "/big"]
    # The half-read connection was closed, not reused.
    assert server.requests[0][0] != server.requests[1][0]


async def test_connection_closed_by_the_server_is_not_reused(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    async with make_client(make_pool(), base_url=f"https://127.0.0.1:{server.port}") as client:
        first = await client.get("/close")
        assert first.text == "ok"
        assert first.headers["connection"] == "keep-alive"
        with trio.fail_after(5):
            await server.closed.wait()
        assert first.extensions["network_stream"].get_extra_info("is_readable") is True

        second = await client.get("/hello")
    assert second.text == "hello from connection 2"
    assert server.requests == [(1, "/close"), (2, "/hello")]


async def test_close_notify_seen_only_by_tls_marks_the_connection_dead(
    nursery: trio.Nursery,
) -> None:
    # The response and the server's close_notify arrive in one write and are
    # decrypted together, and TCP stays open: the socket has nothing to read,
    # only the TLS layer knows the connection is over.
    server = await HTTPSServer().start_corked(nursery)
    pool = make_pool()
    async with make_client(pool, base_url=f"https://127.0.0.1:{server.port}") as client:
        first = await client.get("/half-close")
        assert first.text == "ok"
        # The pool asked is_readable when the response was closed, and closed
        # the connection then, while the server still held TCP open.
        assert len(pool.connections) == 0
        assert first.extensions["network_stream"].get_extra_info("socket").fileno() == -1

        second = await client.get("/hello")
    assert second.text == "hello from connection 2"
    assert server.requests == [(1, "/half-close"), (2, "/hello")]


async def _connected_pair(
    corked: bool = False,
) -> tuple[MemoryBIONetworkStream, MemoryBIOStream[trio.abc.Stream], trio.SocketStream]:
    """A handshaken (client network stream, server TLS stream, client socket)."""
    client_sock, server_sock = trio.socket.socketpair()
    client_tcp, server_tcp = trio.SocketStream(client_sock), trio.SocketStream(server_sock)
    server_transport: trio.abc.Stream = Corked(server_tcp) if corked else server_tcp
    server = MemoryBIOStream(server_transport, server_context(), server_side=True)
    plain = MemoryBIONetworkStream(client_tcp)
    result: list[MemoryBIONetworkStream] = []

    async def client_handshake() -> None:
        result.append(await plain.start_tls(client_context(), HOSTNAME, timeout=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_handshake)
        nursery.start_soon(server.do_handshake)
    return result[0], server, client_tcp


async def test_is_readable_sees_plaintext_and_ciphertext_buffered_in_tls() -> None:
    client, server, client_tcp = await _connected_pair(corked=True)
    async with client_tcp, server:
        assert client.get_extra_info("is_readable") is False

        # Decrypted plaintext that read() did not return yet.
        await server.send_all(b"hello world")
        assert await client.read(1, timeout=5) == b"h"
        assert client_tcp.socket.is_readable() is False
        assert client.get_extra_info("is_readable") is True
        assert await client.read(100, timeout=5) == b"ello world"
        assert client.get_extra_info("is_readable") is False

        # Whole records still in the incoming BIO: read() stopped at max_bytes
        # after the first of two records that arrived in one TCP segment.
        corked = server.transport_stream
        assert isinstance(corked, Corked)
        corked.held = bytearray()
        await server.send_all(b"first")
        await server.send_all(b"second")
        await corked.flush()
        assert await client.read(5, timeout=5) == b"first"
        assert client_tcp.socket.is_readable() is False
        assert isinstance(client.stream, MemoryBIOStream)
        assert client.stream.ssl_object.pending() == 0
        assert client.get_extra_info("is_readable") is True
        assert await client.read(100, timeout=5) == b"second"
        assert client.get_extra_info("is_readable") is False

        # A close_notify that was read along with the data.
        corked.held = bytearray()
        await server.send_all(b"last")
        await server.send_eof()
        await corked.flush()
        assert await client.read(100, timeout=5) == b"last"
        assert client_tcp.socket.is_readable() is False
        assert client.get_extra_info("is_readable") is True
        assert await client.read(100, timeout=5) == b""

        await client.aclose()
        assert client.get_extra_info("is_readable") is True  # closed: never reuse


async def test_tls_in_tls_through_an_https_proxy(nursery: trio.Nursery) -> None:
    origin = await HTTPSServer().start(nursery)
    tunnels: list[bytes] = []

    async def proxy(stream: TLSServerStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request = await next_event(conn, stream)
        assert isinstance(request, h11.Request)
        assert request.method == b"CONNECT"
        assert await next_event(conn, stream) == h11.EndOfMessage()
        tunnels.append(request.target)
        port = int(request.target.rpartition(b":")[2])
        async with await trio.open_tcp_stream("127.0.0.1", port) as upstream:
            await send(conn, stream, h11.Response(status_code=200, headers=[]))
            data, _ = conn.trailing_data
            if data:
                await upstream.send_all(data)
            async with trio.open_nursery() as pumps:

                async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        while data := await source.receive_some():
                            await sink.send_all(data)
                    pumps.cancel_scope.cancel()

                pumps.start_soon(pump, stream, upstream)
                pumps.start_soon(pump, upstream, stream)

    listeners = await nursery.start(
        partial(serve_tls_over_tcp, proxy, 0, server_context(), host="127.0.0.1")
    )
    proxy_port = _port(listeners[0])
    context = client_context()
    pool = httpcore.AsyncHTTPProxy(
        proxy_url=f"https://127.0.0.1:{proxy_port}",
        proxy_ssl_context=context,
        ssl_context=context,
        network_backend=MemoryBIOBackend(),
    )
    url = f"https://{HOSTNAME}:{origin.port}/hello"
    async with make_client(pool) as client:
        first = await client.get(url)
        second = await client.get(url)
        network_stream = second.extensions["network_stream"]

        assert first.text == second.text == "hello from connection 1"
        assert tunnels == [f"{HOSTNAME}:{origin.port}".encode()]  # one tunnel, reused
        assert isinstance(network_stream, MemoryBIONetworkStream)
        inner = network_stream.stream
        assert isinstance(inner, MemoryBIOStream)
        outer = inner.transport_stream
        assert isinstance(outer, MemoryBIOStream)
        assert isinstance(outer.transport_stream, trio.SocketStream)
        assert inner.server_hostname == HOSTNAME
        assert outer.server_hostname == "127.0.0.1"
        assert network_stream.get_extra_info("ssl_object") is inner.ssl_object
        assert network_stream.get_extra_info("server_addr") == ("127.0.0.1", proxy_port)
        assert network_stream.get_extra_info("is_readable") is False
        # Every ciphertext byte of the inner TLS was plaintext of the outer one.
        inner_stats, outer_stats = inner.statistics(), outer.statistics()
        assert inner_stats.plaintext_received > 0
        assert outer_stats.plaintext_received >= inner_stats.ciphertext_received > 0
        assert outer_stats.plaintext_sent >= inner_stats.ciphertext_sent > 0


async def test_read_timeout(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    server = await HTTPSServer().start(nursery)
    async with make_client(make_pool(), timeout=5.0) as client:
        start = trio.current_time()
        with pytest.raises(httpx.ReadTimeout, match=r"timed out after 5\.0 seconds"):
            await client.get(f"https://127.0.0.1:{server.port}/silent")
        assert 5.0 <= trio.current_time() - start < 6.0
    assert server.requests == [(1, "/silent")]


async def test_handshake_timeout_is_a_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A TCP server that accepts (in the kernel's backlog) and never speaks TLS.
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        async with make_client(make_pool(), timeout=3.0) as client:
            start = trio.current_time()
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(f"https://127.0.0.1:{port}/")
            assert 3.0 <= trio.current_time() - start < 4.0


async def test_stream_errors_and_timeouts_without_a_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mine, theirs = trio.testing.lockstep_stream_pair()
    stream = MemoryBIONetworkStream(mine)
    async with theirs:
        with pytest.raises(httpcore.WriteTimeout):
            await stream.write(b"nobody reads this", timeout=2)
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(10, timeout=2)
        await stream.write(b"")  # nothing to send: returns at once
        for key in ("ssl_object", "socket", "client_addr", "server_addr"):
            assert stream.get_extra_info(key) is None
        assert stream.get_extra_info("is_readable") is False
        await stream.aclose()
        with pytest.raises(httpcore.ReadError):
            await stream.read(10)
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"x")


async def test_connect_errors() -> None:
    backend = MemoryBIOBackend()
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("127.0.0.1", port)  # nobody listens: refused

    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(httpcore.ConnectError):
            await backend.connect_tcp("127.0.0.1", port, socket_options=[(-1, -1, 1)])
        # The (level, option, None, length) form passes a NULL value to
        # setsockopt, which SO_LINGER refuses: also a ConnectError.
        linger = (socket.SOL_SOCKET, socket.SO_LINGER, None, 8)
        with pytest.raises(httpcore.ConnectError):
            await backend.connect_tcp("127.0.0.1", port, socket_options=[linger])
    await backend.sleep(0)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix domain sockets")
async def test_https_over_a_unix_socket(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = HTTPSServer()
    path = str(tmp_path / "https.sock")
    sock = trio.socket.socket(socket.AF_UNIX)
    await sock.bind(path)
    sock.listen()
    listener = MemoryBIOListener(trio.SocketListener(sock), server_context(), https_compatible=True)

    async def handshake_then_handle(stream: TLSServerStream) -> None:
        await stream.do_handshake()
        await server.handle(stream)

    await nursery.start(trio.serve_listeners, handshake_then_handle, [listener])
    async with make_client(make_pool(uds=path)) as client:
        response = await client.get(f"https://{HOSTNAME}/hello")
        assert response.text == "hello from connection 1"
        assert response.extensions["network_stream"].get_extra_info("server_addr") == path


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpcore", None)  # makes `import httpcore` fail
    monkeypatch.delitem(sys.modules, "trio_membio.httpcore")
    with pytest.raises(ImportError, match=r"pip install 'trio-membio\[httpx\]'"):
        importlib.import_module("trio_membio.httpcore")


async def test_trio_websocket_over_memorybio(nursery: trio.Nursery) -> None:
    """trio-websocket's public wrap_*_stream functions take any trio stream."""
    from trio_membio import open_tls_over_tcp_stream

    async def echo(stream: TLSServerStream) -> None:
        async with trio.open_nursery() as tasks:
            request = await trio_websocket.wrap_server_stream(tasks, stream)
            websocket = await request.accept()
            await websocket.send_message((await websocket.get_message()).upper())
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                await websocket.get_message()

    listeners = await nursery.start(
        partial(serve_tls_over_tcp, echo, 0, server_context(), host="127.0.0.1")
    )
    stream = await open_tls_over_tcp_stream(
        "127.0.0.1", _port(listeners[0]), ssl_context=client_context()
    )
    async with trio.open_nursery() as tasks:
        # Annotated as taking trio's SocketStream or SSLStream; it uses only the
        # Stream interface (docs/httpx.md says so).
        websocket = await trio_websocket.wrap_client_stream(
            tasks,
            stream,  # type: ignore[arg-type]
            "127.0.0.1",
            "/echo",
        )
        await websocket.send_message("over two memory BIOs")
        assert await websocket.get_message() == "OVER TWO MEMORY BIOS"
        await websocket.aclose()
