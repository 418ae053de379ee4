"""MemoryBIOHTTPTransport through proxies: HTTPS (TLS inside TLS), plain HTTP, SOCKS5.

The proxies are small servers of this file on 127.0.0.1: a CONNECT proxy
(h11, over TLS or plain TCP) and a SOCKS5 proxy; each pumps bytes to the
HTTPSServer of httpx_servers.py and records what it was asked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import sys
from functools import partial

import h11
import httpx
import pytest
import trio

from trio_membio import MemoryBIOStream, serve_tls_over_tcp
from trio_membio.httpcore import MemoryBIONetworkStream
from trio_membio.httpx import MemoryBIOHTTPTransport

from .helpers import HOSTNAME, client_context, server_context
from .httpx_servers import (
    HTTPX_VERSION,
    HTTPSServer,
    make_client,
    make_transport,
    next_event,
    port_of,
    send,
)


async def pump_both_ways(one: trio.abc.Stream, other: trio.abc.Stream) -> None:
    """Copy bytes both ways until either side ends or fails."""
    async with trio.open_nursery() as pumps:

        async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while data := await source.receive_some():
                    await sink.send_all(data)
            pumps.cancel_scope.cancel()

        pumps.start_soon(pump, one, other)
        pumps.start_soon(pump, other, one)


def peer_of(stream: trio.abc.Stream) -> object:
    while isinstance(stream, MemoryBIOStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return stream.socket.getpeername()


class ConnectProxy:
    """An HTTP CONNECT proxy; ``tunnels`` has each target, ``headers`` their headers."""

    def __init__(self) -> None:
        self.port = 0
        self.tunnels: list[bytes] = []
        self.headers: list[dict[bytes, bytes]] = []
        self.peers: list[object] = []

    async def start(self, nursery: trio.Nursery, *, tls: bool) -> ConnectProxy:
        if tls:
            listeners = await nursery.start(
                partial(serve_tls_over_tcp, self.handle, 0, server_context(), host="127.0.0.1")
            )
            self.port = port_of(listeners[0])
        else:
            listeners = await nursery.start(
                partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
        return self

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.peers.append(peer_of(stream))
        conn = h11.Connection(h11.SERVER)
        request = await next_event(conn, stream)
        assert isinstance(request, h11.Request)
        assert request.method == b"CONNECT"
        assert await next_event(conn, stream) == h11.EndOfMessage()
        self.tunnels.append(request.target)
        self.headers.append(dict(request.headers))
        port = int(request.target.rpartition(b":")[2])
        async with await trio.open_tcp_stream("127.0.0.1", port) as upstream:
            await send(conn, stream, h11.Response(status_code=200, headers=[]))
            data, _ = conn.trailing_data
            if data:
                await upstream.send_all(data)
            await pump_both_ways(stream, upstream)


async def test_tls_in_tls_through_an_https_proxy(nursery: trio.Nursery) -> None:
    origin = await HTTPSServer().start(nursery)
    proxy_server = await ConnectProxy().start(nursery, tls=True)
    tunnels = proxy_server.tunnels
    proxy_port = proxy_server.port
    context = client_context()
    proxy = httpx.Proxy(f"https://127.0.0.1:{proxy_port}", ssl_context=context)
    url = f"https://{HOSTNAME}:{origin.port}/hello"
    async with make_client(MemoryBIOHTTPTransport(verify=context, proxy=proxy)) as client:
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


async def test_http_proxy_gets_credentials_and_headers(nursery: trio.Nursery) -> None:
    origin = await HTTPSServer().start(nursery)
    proxy_server = await ConnectProxy().start(nursery, tls=False)
    proxy = httpx.Proxy(
        f"http://user:secret@127.0.0.1:{proxy_server.port}", headers={"X-Proxy-Test": "yes"}
    )
    async with make_client(make_transport(proxy=proxy)) as client:
        response = await client.get(f"https://127.0.0.1:{origin.port}/hello")
        network_stream = response.extensions["network_stream"]
        assert isinstance(network_stream.stream, MemoryBIOStream)
        assert isinstance(network_stream.stream.transport_stream, trio.SocketStream)
    assert response.text == "hello from connection 1"
    assert proxy_server.tunnels == [f"127.0.0.1:{origin.port}".encode()]
    (headers,) = proxy_server.headers
    assert headers[b"proxy-authorization"] == b"Basic dXNlcjpzZWNyZXQ="  # user:secret
    assert headers[b"x-proxy-test"] == b"yes"


async def test_a_refused_tunnel_is_a_proxy_error(nursery: trio.Nursery) -> None:
    async def refuse(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        assert isinstance(await next_event(conn, stream), h11.Request)
        await send(conn, stream, h11.Response(status_code=403, headers=[("Content-Length", "0")]))

    listeners = await nursery.start(partial(trio.serve_tcp, refuse, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with make_client(make_transport(proxy=f"http://127.0.0.1:{port}")) as client:
        with pytest.raises(httpx.ProxyError, match="403"):
            await client.get("https://127.0.0.1:1/")


# ------------------------------------------------------------------- SOCKS5


class Socks5Proxy:
    """A SOCKS5 proxy (RFC 1928) with user/password (RFC 1929); records the targets."""

    def __init__(self) -> None:
        self.port = 0
        self.targets: list[tuple[str, int]] = []
        self.credentials: list[tuple[bytes, bytes]] = []

    async def start(self, nursery: trio.Nursery) -> Socks5Proxy:
        listeners = await nursery.start(partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()

        async def read(size: int) -> bytes:
            while len(buffer) < size:
                data = await stream.receive_some()
                assert data, "the client closed mid-negotiation"
                buffer.extend(data)
            taken = bytes(buffer[:size])
            del buffer[:size]
            return taken

        version, count = await read(2)
        assert version == 5
        methods = await read(count)
        if 2 in methods:  # username/password
            await stream.send_all(b"\x05\x02")
            assert (await read(1)) == b"\x01"
            user = await read((await read(1))[0])
            password = await read((await read(1))[0])
            self.credentials.append((user, password))
            await stream.send_all(b"\x01\x00")
        else:
            await stream.send_all(b"\x05\x00")
        version, command, _, kind = await read(4)
        assert (version, command) == (5, 1)  # CONNECT
        if kind == 3:
            host = (await read((await read(1))[0])).decode()
        else:
            assert kind == 1
            host = socket.inet_ntoa(await read(4))
        port = int.from_bytes(await read(2), "big")
        self.targets.append((host, port))
        async with await trio.open_tcp_stream("127.0.0.1", port) as upstream:
            await stream.send_all(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
            if buffer:
                await upstream.send_all(bytes(buffer))
            await pump_both_ways(stream, upstream)


@pytest.mark.skipif(
    importlib.util.find_spec("socksio") is None, reason="needs socksio (httpx[socks])"
)
@pytest.mark.parametrize(
    "scheme",
    [
        "socks5",
        pytest.param(
            "socks5h",
            marks=pytest.mark.skipif(
                HTTPX_VERSION < (0, 28), reason="httpx.Proxy accepts socks5h from httpx 0.28"
            ),
        ),
    ],
)
async def test_tls_through_a_socks5_proxy(nursery: trio.Nursery, scheme: str) -> None:
    origin = await HTTPSServer().start(nursery)
    proxy_server = await Socks5Proxy().start(nursery)
    proxy = f"{scheme}://user:secret@127.0.0.1:{proxy_server.port}"
    async with make_client(make_transport(proxy=proxy)) as client:
        response = await client.get(f"https://{HOSTNAME}:{origin.port}/hello")
        tls = response.extensions["network_stream"].stream
        assert isinstance(tls, MemoryBIOStream)
        assert tls.server_hostname == HOSTNAME
    assert response.text == "hello from connection 1"
    assert proxy_server.targets == [(HOSTNAME, origin.port)]
    assert proxy_server.credentials == [(b"user", b"secret")]


def test_socks_without_socksio_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "socksio", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'httpx\[socks\]'"):
        MemoryBIOHTTPTransport(proxy="socks5://127.0.0.1:1080")


@pytest.mark.parametrize("scheme", ["http", "https", "socks5"])
@pytest.mark.parametrize(
    ("option", "value"),
    [("uds", "/tmp/proxy.sock"), ("local_address", "127.0.0.1"), ("retries", 2)],
)
def test_options_httpcore_ignores_through_a_proxy_are_refused(
    scheme: str, option: str, value: object
) -> None:
    # httpx.AsyncHTTPTransport accepts these and silently does without them.
    with pytest.raises(
        ValueError, match=rf"^{option}: httpcore does not apply it .* {scheme} proxy"
    ):
        MemoryBIOHTTPTransport(proxy=f"{scheme}://127.0.0.1:1080", **{option: value})  # type: ignore[arg-type]


def test_socket_options_are_refused_through_socks_only() -> None:
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    with pytest.raises(ValueError, match=r"^socket_options: .* socks5 proxy"):
        MemoryBIOHTTPTransport(proxy="socks5://127.0.0.1:1080", socket_options=options)
    MemoryBIOHTTPTransport(proxy="http://127.0.0.1:3128", socket_options=options)  # applied
    with pytest.raises(ValueError, match=r"^uds, local_address: .* them"):
        MemoryBIOHTTPTransport(proxy="http://127.0.0.1:3128", uds="/x", local_address="::")
