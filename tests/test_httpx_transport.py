"""httpx over trio_membio.httpx.MemoryBIOHTTPTransport, end to end, and its contract with httpx.

The first part runs real requests against the servers of httpx_servers.py;
the second pins what the transport assumes of the installed httpx: its
options and their defaults are httpx.AsyncHTTPTransport's, and its errors
are the ones httpx's own transport would raise.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import socket
import ssl
import sys
from pathlib import Path

import httpcore
import httpx
import pytest
import trio
import trio.testing
import trustme

from trio_membio import MemoryBIOListener, TraceEvent
from trio_membio.httpcore import MemoryBIOBackend, MemoryBIONetworkStream
from trio_membio.httpx import DEFAULT_LIMITS, MemoryBIOHTTPTransport

from .helpers import HOSTNAME, ca, server_context
from .httpx_servers import (
    BIG,
    BIG_SHA256,
    HTTPX_VERSION,
    HTTP2Server,
    HTTPSServer,
    TLSServerStream,
    make_client,
    make_transport,
    warning_logged,
)

# ------------------------------------------------------------- end to end


async def test_keep_alive_reuses_one_tls_connection(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    transport = make_transport(socket_options=options)
    async with make_client(transport, base_url=f"https://127.0.0.1:{server.port}") as client:
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
    transport = make_transport(http1=False, http2=True)
    async with make_client(transport, base_url=f"https://127.0.0.1:{server.port}") as client:
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
    async with make_client(base_url=f"https://127.0.0.1:{server.port}") as client:
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
        async with make_client(make_transport(verify=distrusting)) as client:
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
    async with make_client() as client:
        response = await client.get(f"https://127.0.0.1:{server.port}/hello")
    assert response.status_code == 200
    assert server.connections == 1  # handlers only run after a good handshake


async def test_cancelled_download_leaves_the_pool_usable(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    transport = make_transport()
    pool = transport.pool
    async with make_client(transport, base_url=f"https://127.0.0.1:{server.port}") as client:
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
    async with make_client(base_url=f"https://127.0.0.1:{server.port}") as client:
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
    transport = make_transport()
    pool = transport.pool
    async with make_client(transport, base_url=f"https://127.0.0.1:{server.port}") as client:
        first = await client.get("/half-close")
        assert first.text == "ok"
        # The pool asked is_readable when the response was closed, and closed
        # the connection then, while the server still held TCP open.
        assert len(pool.connections) == 0
        assert first.extensions["network_stream"].get_extra_info("socket").fileno() == -1

        second = await client.get("/hello")
    assert second.text == "hello from connection 2"
    assert server.requests == [(1, "/half-close"), (2, "/hello")]


async def test_read_timeout(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    server = await HTTPSServer().start(nursery)
    async with make_client(timeout=5.0) as client:
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
        async with make_client(timeout=3.0) as client:
            start = trio.current_time()
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(f"https://127.0.0.1:{port}/")
            assert 3.0 <= trio.current_time() - start < 4.0


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
    async with make_client(make_transport(uds=path)) as client:
        response = await client.get(f"https://{HOSTNAME}/hello")
        assert response.text == "hello from connection 1"
        assert response.extensions["network_stream"].get_extra_info("server_addr") == path


# ------------------------------------------------------------ each option


async def test_verify_false_accepts_any_certificate(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    url = f"https://127.0.0.1:{server.port}/hello"
    async with make_client(make_transport(verify=True, trust_env=False)) as client:
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            await client.get(url)
    async with make_client(make_transport(verify=False)) as client:
        response = await client.get(url)
    assert response.text == "hello from connection 1"  # the first failed its handshake


def _write_ca(tmp_path: Path) -> str:
    path = tmp_path / "test-ca.pem"
    ca().cert_pem.write_to_path(str(path))
    return str(path)


async def test_trust_env_reads_ssl_cert_file(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await HTTPSServer().start(nursery)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", _write_ca(tmp_path))
    url = f"https://127.0.0.1:{server.port}/hello"
    async with make_client(make_transport(verify=True)) as client:  # trust_env=True
        assert (await client.get(url)).status_code == 200
    async with make_client(make_transport(verify=True, trust_env=False)) as client:
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            await client.get(url)


def _deprecated_in_httpx_0_28() -> contextlib.AbstractContextManager[object]:
    """httpx 0.28 deprecated ``cert=`` and ``verify=<str>`` (they still work)."""
    if HTTPX_VERSION >= (0, 28):
        return pytest.warns(DeprecationWarning, match="deprecated")
    return contextlib.nullcontext()


async def test_cert_presents_a_client_certificate(nursery: trio.Nursery, tmp_path: Path) -> None:
    context = server_context()
    ca().configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    server = await HTTPSServer().start(nursery, context)
    client_cert = ca().issue_cert("client.example.org", common_name="httpx test client")
    pem = tmp_path / "client.pem"
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(pem))

    # With verify=<str>, httpx 0.28 ignores cert: give the CA as a context.
    with _deprecated_in_httpx_0_28():
        transport = make_transport(cert=str(pem))
    async with make_client(transport) as client:
        response = await client.get(f"https://127.0.0.1:{server.port}/client-cert")
    assert response.text == "httpx test client"

    async with make_client() as client:  # no certificate: the server refuses
        with pytest.raises((httpx.ConnectError, httpx.ReadError), match="certificate required"):
            await client.get(f"https://127.0.0.1:{server.port}/client-cert")


async def test_limits_without_keep_alive_open_a_connection_per_request(
    nursery: trio.Nursery,
) -> None:
    server = await HTTPSServer().start(nursery)
    transport = make_transport(limits=httpx.Limits(max_keepalive_connections=0))
    async with make_client(transport, base_url=f"https://127.0.0.1:{server.port}") as client:
        texts = [(await client.get("/hello")).text for _ in range(3)]
    assert texts == [f"hello from connection {number}" for number in (1, 2, 3)]


async def test_max_connections_one_serialises_concurrent_requests(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    transport = make_transport(limits=httpx.Limits(max_connections=1))
    base_url = f"https://127.0.0.1:{server.port}"
    async with make_client(transport, base_url=base_url) as client, trio.open_nursery() as requests:
        for _ in range(4):
            requests.start_soon(client.get, "/hello")
    assert server.connections == 1
    assert server.requests == [(1, "/hello")] * 4


async def test_retries_back_off_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed again: connecting is refused
    elapsed = {}
    for retries in (0, 3):
        async with make_client(make_transport(retries=retries)) as client:
            start = trio.current_time()
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{port}/")
            elapsed[retries] = trio.current_time() - start
    # httpcore's back-off before each retry: 0 s, 0.5 s, 1 s.
    assert elapsed == {0: 0.0, 3: pytest.approx(1.5)}


@pytest.mark.skipif(sys.platform != "linux", reason="needs all of 127/8 on loopback (Linux)")
async def test_local_address_is_the_source_address(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    async with make_client(make_transport(local_address="127.0.0.2")) as client:
        response = await client.get(f"https://127.0.0.1:{server.port}/hello")
        address = response.extensions["network_stream"].get_extra_info("client_addr")
    assert address[0] == "127.0.0.2"
    assert server.peers == [address]


async def test_trace_reaches_every_tls_stream(nursery: trio.Nursery) -> None:
    server = await HTTPSServer().start(nursery)
    events: list[TraceEvent] = []
    async with make_client(make_transport(trace=events.append)) as client:
        await client.get(f"https://127.0.0.1:{server.port}/hello")
    assert events
    assert all(isinstance(event, TraceEvent) for event in events)


async def test_a_truncated_body_is_an_httpx_error_chained_from_httpcore(
    nursery: trio.Nursery,
) -> None:
    server = await HTTPSServer().start(nursery)
    async with make_client() as client:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await client.get(f"https://127.0.0.1:{server.port}/truncated")
    assert isinstance(info.value.__cause__, httpcore.RemoteProtocolError)
    assert str(info.value) == str(info.value.__cause__)
    assert server.requests == [(1, "/truncated")]


async def test_a_synchronous_body_is_refused() -> None:
    request = httpx.Request("POST", "https://127.0.0.1:1/", content=iter([b"sync"]))
    async with make_transport() as transport:
        with pytest.raises(TypeError, match=r"httpx\.AsyncClient"):
            await transport.handle_async_request(request)


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # makes `import httpx` fail
    monkeypatch.delitem(sys.modules, "trio_membio.httpx")
    with pytest.raises(ImportError, match=r"pip install 'trio-membio\[httpx\]'"):
        importlib.import_module("trio_membio.httpx")


# ------------------------------------------------- the contract with httpx


def test_options_are_httpx_options_with_httpx_defaults() -> None:
    theirs = inspect.signature(httpx.AsyncHTTPTransport.__init__).parameters
    ours = inspect.signature(MemoryBIOHTTPTransport.__init__).parameters
    assert set(ours) - set(theirs) == {"trace"}
    assert set(theirs) - set(ours) == set()
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default, name
    assert theirs["limits"].default == DEFAULT_LIMITS
    if HTTPX_VERSION >= (0, 28):  # 0.27 had trust_env after limits
        assert list(ours)[: len(theirs)] == list(theirs)
    assert ours["trace"].kind is inspect.Parameter.KEYWORD_ONLY


def _httpcore_exceptions() -> list[type[Exception]]:
    found = {
        value
        for value in vars(httpcore).values()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    return sorted(found, key=lambda cls: cls.__name__)


def _mapped_httpcore_exceptions() -> list[type[Exception]]:
    # ConnectionNotAvailable is how httpcore's pool tells itself to retry on
    # another connection; it is caught there, and httpx maps it to nothing.
    unmapped = {httpcore.ConnectionNotAvailable}
    return [cls for cls in _httpcore_exceptions() if cls not in unmapped]


class _ReadAndProxyError(httpcore.ReadError, httpcore.ProxyError):
    """Two unrelated httpx targets: httpx's table order decides."""


class _ProxyAndReadError(httpcore.ProxyError, httpcore.ReadError):
    pass


class _TimeoutSubclass(httpcore.ReadTimeout):
    pass


def _raised(mapper: contextlib.AbstractContextManager[None], exc: Exception) -> BaseException:
    try:
        with mapper:
            raise exc
    except BaseException as raised:  # what the mapper let through or raised
        return raised
    raise AssertionError("the mapper swallowed the exception")  # pragma: no cover - a bug


@pytest.mark.parametrize(
    "error_class",
    [
        *_httpcore_exceptions(),
        _ReadAndProxyError,
        _ProxyAndReadError,
        _TimeoutSubclass,
        ValueError,
        trio.BrokenResourceError,
    ],
    ids=lambda cls: cls.__name__,
)
def test_errors_are_mapped_exactly_as_httpx_maps_them(error_class: type[Exception]) -> None:
    # The reference is httpx's own private mapper, imported here only: if a
    # future httpx moves it, this test fails and says where to look.
    from httpx._transports.default import map_httpcore_exceptions

    from trio_membio.httpx import _httpx_errors

    error = error_class(f"a {error_class.__name__} happened")
    ours = _raised(_httpx_errors(), error)
    theirs = _raised(map_httpcore_exceptions(), error)
    assert type(ours) is type(theirs)
    assert str(ours) == str(theirs)
    assert ours.__cause__ is theirs.__cause__
    if isinstance(error, tuple(_mapped_httpcore_exceptions())):
        assert isinstance(ours, httpx.HTTPError)
        assert ours.__cause__ is error
    else:
        assert ours is error  # not httpcore's: passes through unchanged


def test_every_httpcore_exception_has_an_httpx_counterpart() -> None:
    from trio_membio.httpx import _HTTPX_ERRORS

    assert set(_HTTPX_ERRORS) == set(_mapped_httpcore_exceptions())
    for source, target in _HTTPX_ERRORS.items():
        assert target.__name__ == source.__name__
