"""The HTTP servers and clients shared by tests/test_httpx_*.py.

The servers speak HTTP/1.1 (h11) or HTTP/2 (h2) over trio_membio's own TLS on
127.0.0.1; the clients are httpx.AsyncClients over
trio_membio.httpx.MemoryBIOHTTPTransport, or httpcore pools over
trio_membio.httpcore.MemoryBIOBackend.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import ssl
from collections.abc import Iterator
from functools import partial

import h2.config
import h2.connection
import h2.events
import h11
import httpx
import trio

from trio_membio import MemoryBIOListener, MemoryBIOStream, serve_tls_over_tcp
from trio_membio.httpx import MemoryBIOHTTPTransport

from .helpers import client_context, server_context
from .transports import ForwardingStream

BIG = random.Random(20240501).randbytes(5 * 1024 * 1024)
BIG_SHA256 = hashlib.sha256(BIG).hexdigest()
CHUNK = 256 * 1024

TLSServerStream = MemoryBIOStream[trio.abc.Stream]

#: (major, minor) of the installed httpx, for what changed between versions.
HTTPX_VERSION = tuple(int(part) for part in httpx.__version__.split(".")[:2])


# ---------------------------------------------------------------- the client


def make_transport(**options: object) -> MemoryBIOHTTPTransport:
    """A transport that trusts the test CA, with ``options`` on top."""
    options.setdefault("verify", client_context())
    return MemoryBIOHTTPTransport(**options)  # type: ignore[arg-type]  # forwarded options


def make_client(
    transport: httpx.AsyncBaseTransport | None = None, *, timeout: float = 30.0, base_url: str = ""
) -> httpx.AsyncClient:
    """An httpx client over ``transport`` (default: :func:`make_transport`)."""
    # trust_env=False: nothing from the environment between us and 127.0.0.1.
    return httpx.AsyncClient(
        transport=transport or make_transport(), timeout=timeout, base_url=base_url, trust_env=False
    )


# ---------------------------------------------------------------- the server


class Corked(ForwardingStream):
    """A transport that holds what is sent while ``held`` is not None."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
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
    - ``/silent``: never answers;
    - ``/truncated``: promises 100 bytes, sends 10, closes the connection;
    - ``/client-cert``: names the client certificate's subject, or "none".

    ``peers`` lists each connection's client address (None off TCP).
    """

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.requests: list[tuple[int, str]] = []
        self.broken = 0
        self.closed = trio.Event()
        self.peers: list[object] = []

    async def start(
        self, nursery: trio.Nursery, context: ssl.SSLContext | None = None
    ) -> HTTPSServer:
        listeners = await nursery.start(
            partial(
                serve_tls_over_tcp,
                self.handle,
                0,
                context or server_context(),
                host="127.0.0.1",
                https_compatible=True,
            )
        )
        self.port = port_of(listeners[0])
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
        transport = stream.transport_stream
        self.peers.append(
            transport.socket.getpeername() if isinstance(transport, trio.SocketStream) else None
        )
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
        elif target == "/truncated":
            await send(conn, stream, response(100), h11.Data(data=b"0123456789"))
            await stream.aclose()
            return False
        elif target == "/client-cert":
            certificate = stream.getpeercert() or {}
            subject = certificate.get("subject", ())
            assert isinstance(subject, tuple)
            common_names = [name[1] for rdn in subject for name in rdn if name[0] == "commonName"]
            body = (common_names[0] if common_names else "none").encode()
            await send(conn, stream, response(len(body)), h11.Data(data=body), h11.EndOfMessage())
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
        self.port = port_of(listeners[0])
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


def port_of(listener: MemoryBIOListener[trio.SocketStream]) -> int:
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
