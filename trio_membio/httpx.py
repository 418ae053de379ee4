"""An httpx transport whose TLS is done by :class:`~trio_membio.MemoryBIOStream`.

Needs the ``httpx`` extra: ``pip install 'trio-membio[httpx]'``. Use it as
``httpx.AsyncClient(transport=MemoryBIOHTTPTransport(...))``; it takes the
options of ``httpx.AsyncHTTPTransport``.

Theory of operation
===================

httpx's ``AsyncHTTPTransport`` is a thin layer over an httpcore connection
pool, and it has no parameter for the pool's network backend (encode/httpx
discussion 3180). This transport is the same thin layer, written against
public API only, over a pool whose backend is
:class:`trio_membio.httpcore.MemoryBIOBackend`:

1. **Options.** Each ``AsyncHTTPTransport`` option means the same here:
   ``verify``, ``cert`` and ``trust_env`` make the client context with
   ``httpx.create_ssl_context`` (so httpx's defaults, certifi, the
   ``SSL_CERT_FILE``/``SSL_CERT_DIR`` variables and its deprecation warnings
   apply unchanged); ``proxy`` picks the pool class as httpx does (none:
   ``AsyncConnectionPool``; http/https: ``AsyncHTTPProxy``; socks5/socks5h:
   ``AsyncSOCKSProxy``); the rest go to the pool. One difference: httpcore
   does not apply ``uds``, ``local_address`` or ``retries`` to a connection
   through a proxy (nor ``socket_options`` through SOCKS), and httpx drops
   them without a word; here they raise ValueError, so that a setting the
   user relies on is never silently not in force.

2. **Requests.** An ``httpx.Request`` becomes an ``httpcore.Request`` (URL
   parts, raw headers, the body stream, the extensions, which carry the
   client's timeouts), and the httpcore response becomes an
   ``httpx.Response`` whose body stream reads the httpcore one.

3. **Errors.** httpx turns each httpcore exception into the httpx exception
   of the same name, keeping the message and chaining the original as
   ``__cause__``; where several entries of its table match, the most derived
   httpx class wins. ``_httpx_errors`` does exactly that, at the same
   three places (sending the request, reading the body, leaving the
   ``async with``). tests/test_httpx_transport.py compares it with httpx's
   own for every httpcore exception, on whichever httpx is installed.

No private httpx name is used here; what this module assumes of httpx (the
option names, their defaults, the error table) is pinned by those tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TypedDict, TypeVar

try:
    import httpcore
    import httpx
except ImportError as _httpx_missing:  # pragma: no cover - run in a subprocess by a test
    raise ImportError(
        "trio_membio.httpx needs httpx; install it with: pip install 'trio-membio[httpx]'",
        name=__name__,
    ) from _httpx_missing

from ._trace import TraceCallback
from .httpcore import MemoryBIOBackend

__all__ = ["DEFAULT_LIMITS", "MemoryBIOHTTPTransport"]

#: The connection limits ``httpx.AsyncHTTPTransport`` uses by default.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

_Transport = TypeVar("_Transport", bound="MemoryBIOHTTPTransport")

# httpcore's exceptions and the httpx ones they become, in httpx's order:
# the order decides between two entries whose httpx classes are unrelated.
_HTTPX_ERRORS: dict[type[Exception], type[httpx.HTTPError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """Raise httpcore's exceptions from the body as httpx's (see the module docs)."""
    try:
        yield
    except Exception as exc:
        matches = [target for source, target in _HTTPX_ERRORS.items() if isinstance(exc, source)]
        if not matches:
            raise
        chosen = matches[0]
        for candidate in matches[1:]:
            if issubclass(candidate, chosen):
                chosen = candidate
        raise chosen(str(exc)) from exc


class _ResponseBody(httpx.AsyncByteStream):
    """An httpcore response body as an httpx one, with httpx's exceptions."""

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._body:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._body, "aclose", None)
        if close is not None:
            await close()


def _httpcore_url(url: httpx.URL) -> httpcore.URL:
    return httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )


class MemoryBIOHTTPTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncHTTPTransport`` with :class:`~trio_membio.MemoryBIOStream` for TLS.

    Pass it to ``httpx.AsyncClient(transport=...)``. The options are those of
    ``httpx.AsyncHTTPTransport`` and mean the same, except as noted under
    ``proxy``; errors are httpx's (``httpx.ConnectError``,
    ``httpx.ReadTimeout``, ...), each chained from the httpcore exception it
    replaces. Needs trio.

    Args:
        verify: How to check the server's certificate. True: the system's
            CAs as httpx chooses them (certifi, or ``SSL_CERT_FILE`` /
            ``SSL_CERT_DIR`` when ``trust_env`` is true). An
            :class:`ssl.SSLContext`: used as it is, the way to trust your own
            CA or set TLS versions. False: **no check at all**, so anyone on
            the path can read and change the traffic; for tests only. A str
            (a CA file or directory) works but newer httpx deprecates it.
        cert: A client certificate: a PEM file with the key, ``(certfile,
            keyfile)`` or ``(certfile, keyfile, password)``. Newer httpx
            deprecates it: load the chain into ``verify``'s context.
        trust_env: Whether ``verify=True`` reads ``SSL_CERT_FILE`` and
            ``SSL_CERT_DIR``. Proxies from the environment are the client's
            business: ``httpx.AsyncClient`` ignores them when given a
            transport.
        http1: Offer HTTP/1.1.
        http2: Offer HTTP/2 (by ALPN); needs ``pip install 'httpx[http2]'``.
        limits: Connection pool limits (``httpx.Limits``).
        proxy: A proxy URL, ``httpx.URL`` or ``httpx.Proxy``: ``http://``,
            ``https://`` (TLS to the proxy, and to an ``https://`` origin TLS
            inside it, both MemoryBIOStream), ``socks5://`` or
            ``socks5h://`` (needs ``pip install 'httpx[socks]'``). httpcore
            cannot apply ``uds``, ``local_address`` or ``retries`` through
            a proxy, nor ``socket_options`` through SOCKS: give them with a
            proxy and this raises ValueError (httpx ignores them silently).
        uds: Connect over this Unix domain socket instead of TCP.
        local_address: The local IP address to connect from.
        retries: How many times to retry a failed connection attempt (TCP
            connect only, not the TLS handshake), with httpcore's back-off.
        socket_options: ``setsockopt`` arguments applied to each new socket.
        trace: Passed to every :class:`~trio_membio.MemoryBIOStream` made
            (see :class:`~trio_membio.TraceEvent`).

    Raises:
        ValueError: an option that httpcore would ignore through ``proxy``
            (see there).
        ImportError: a SOCKS proxy without the socksio package.
    """

    def __init__(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: str | tuple[str, str] | tuple[str, str, str] | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
        proxy: str | httpx.URL | httpx.Proxy | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
        *,
        trace: TraceCallback | None = None,
    ) -> None:
        ssl_context = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        backend = MemoryBIOBackend(trace=trace)
        if isinstance(proxy, (str, httpx.URL)):
            proxy = httpx.Proxy(url=proxy)
        if proxy is not None:
            ignored: dict[str, object] = {
                "uds": uds,
                "local_address": local_address,
                "retries": retries or None,
            }
            if proxy.url.scheme in ("socks5", "socks5h"):
                ignored["socket_options"] = socket_options
            _refuse_ignored_options(proxy, ignored)
        options = _PoolOptions(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1,
            http2=http2,
            network_backend=backend,
        )
        self._pool: httpcore.AsyncConnectionPool
        if proxy is None:
            self._pool = httpcore.AsyncConnectionPool(
                **options,
                uds=uds,
                local_address=local_address,
                retries=retries,
                socket_options=socket_options,
            )
        elif proxy.url.scheme in ("http", "https"):
            self._pool = httpcore.AsyncHTTPProxy(
                **options,
                proxy_url=_httpcore_url(proxy.url),
                proxy_auth=proxy.raw_auth,
                proxy_headers=proxy.headers.raw,
                proxy_ssl_context=proxy.ssl_context,
                socket_options=socket_options,
            )
        elif proxy.url.scheme in ("socks5", "socks5h"):
            self._pool = _socks_pool(proxy, options)
        else:  # pragma: no cover - httpx.Proxy refuses other schemes itself
            raise ValueError(
                f"proxy {proxy.url!r}: the scheme must be http, https, socks5 or socks5h"
            )

    @property
    def pool(self) -> httpcore.AsyncConnectionPool:
        """The httpcore pool behind the transport, for inspection (``pool.connections``).

        An ``httpcore.AsyncHTTPProxy`` or ``AsyncSOCKSProxy`` (both are
        ``AsyncConnectionPool`` subclasses) when a proxy was given.
        """
        return self._pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` over a pooled connection and return the response.

        The body is read later, through the response; on cancellation httpcore
        closes the connection the request was using, and nothing else.

        Raises:
            httpx.ConnectError, httpx.ConnectTimeout: connecting or the TLS
                handshake failed (a certificate that fails verification says
                "certificate verify failed: ...") or took too long.
            httpx.ReadError, httpx.WriteError, httpx.ReadTimeout,
                httpx.WriteTimeout, httpx.PoolTimeout: as their names say.
            httpx.RemoteProtocolError, httpx.LocalProtocolError,
                httpx.ProxyError, httpx.UnsupportedProtocol: as with
                ``httpx.AsyncHTTPTransport``.
            TypeError: the request has no async body (a sync ``httpx.Client``).
        """
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError(
                f"{type(self).__name__} is for httpx.AsyncClient; this request's body "
                "is synchronous (an httpx.Client?)"
            )
        core_request = httpcore.Request(
            method=request.method,
            url=_httpcore_url(request.url),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            core_response = await self._pool.handle_async_request(core_request)
        body = core_response.stream
        if not isinstance(body, AsyncIterable):  # pragma: no cover - an async pool's are async
            raise TypeError(f"httpcore returned a synchronous body: {body!r}")
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseBody(body),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection, without waiting for the servers.

        On cancellation the connections are still closed and Cancelled is raised.
        """
        await self._pool.aclose()

    async def __aenter__(self: _Transport) -> _Transport:
        await self._pool.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        with _httpx_errors():
            await self._pool.__aexit__(exc_type, exc_value, traceback)


def _refuse_ignored_options(proxy: httpx.Proxy, options: Mapping[str, object]) -> None:
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)}: httpcore does not apply {'it' if len(given) == 1 else 'them'} "
            f"to connections through a {proxy.url.scheme} proxy; drop "
            f"{'it' if len(given) == 1 else 'them'}, or connect without the proxy"
        )


class _PoolOptions(TypedDict):
    """What every kind of httpcore pool the transport makes is given alike."""

    ssl_context: ssl.SSLContext
    max_connections: int | None
    max_keepalive_connections: int | None
    keepalive_expiry: float | None
    http1: bool
    http2: bool
    network_backend: MemoryBIOBackend


def _socks_pool(proxy: httpx.Proxy, options: _PoolOptions) -> httpcore.AsyncConnectionPool:
    # httpcore imports socksio only when it first connects: say it now.
    if importlib.util.find_spec("socksio") is None:
        raise ImportError(
            f"proxy {str(proxy.url)!r} is a SOCKS proxy, which needs the socksio "
            "package: pip install 'httpx[socks]'",
            name="socksio",
        )
    return httpcore.AsyncSOCKSProxy(
        **options, proxy_url=_httpcore_url(proxy.url), proxy_auth=proxy.raw_auth
    )
