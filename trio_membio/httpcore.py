"""An httpcore network backend whose TLS is done by :class:`MemoryBIOStream`.

Needs the ``httpx`` extra: ``pip install 'trio-membio[httpx]'``. Plug
:class:`MemoryBIOBackend` into an ``httpcore.AsyncConnectionPool`` (or
``AsyncHTTPProxy``) with ``network_backend=MemoryBIOBackend()``; docs/httpx.md
shows how to get it under an ``httpx.AsyncClient``.

Theory of operation
===================

httpcore keeps HTTP apart from I/O. Its connection pool asks a *network
backend* for byte streams and talks HTTP over them; this module is such a
backend for trio.

1. **Streams.** :meth:`MemoryBIOBackend.connect_tcp` and
   :meth:`~MemoryBIOBackend.connect_unix_socket` open a
   :class:`trio.SocketStream` and wrap it in a :class:`MemoryBIONetworkStream`,
   whose ``read`` and ``write`` are one ``receive_some`` / ``send_all`` each.

2. **TLS.** :meth:`MemoryBIONetworkStream.start_tls` wraps whatever the
   network stream holds in a new :class:`MemoryBIOStream`, runs the handshake
   and returns a new network stream around it (httpcore drops the old one).
   So a second ``start_tls``, which httpcore makes for an ``https://`` URL
   through an ``https://`` proxy after its CONNECT, gives TLS inside TLS:
   ``MemoryBIOStream(MemoryBIOStream(SocketStream))``. TLS streams are made
   with ``https_compatible=True`` like every HTTPS client's: HTTP frames its
   own messages, and servers often close without close_notify.

3. **Timeouts and errors.** Each operation runs under
   ``trio.fail_after(timeout)`` and turns trio's exceptions into httpcore's,
   as httpcore's own trio backend does (httpx turns those into its own):

   ==============================================  ==============  ============
   trio raises                                     connect, TLS    read / write
   ==============================================  ==============  ============
   TooSlowError (our deadline)                     ConnectTimeout  ReadTimeout /
                                                                   WriteTimeout
   BrokenResourceError, ClosedResourceError,       ConnectError    ReadError /
   OSError                                                         WriteError
   ==============================================  ==============  ============

   The message is kept: a certificate that fails verification reads
   "TLS handshake failed: certificate verify failed: ...".

4. **is_readable.** Before reusing an idle HTTP/1.1 connection, httpcore asks
   ``get_extra_info("is_readable")``: on an idle connection anything to read
   means the server closed it (or sent junk), so the pool opens a new one
   instead. Asking the socket alone is not enough, because a TLS layer may
   already hold what the socket delivered: ciphertext not yet decrypted,
   plaintext OpenSSL decrypted but did not return (``ssl_object.pending()``),
   or a close_notify it has read. So every TLS layer is asked first, then the
   socket.

5. **Cancellation.** A cancelled ``read`` loses nothing (MemoryBIOStream
   keeps partial records); a cancelled ``write`` leaves the sending direction
   broken; a cancelled ``start_tls`` or connect closes what it opened. httpcore
   closes a connection whose request was cancelled, so none of this leaks
   into the pool.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import Iterable, Iterator
from typing import Any

import trio

try:
    import httpcore
except ImportError as _httpcore_missing:  # pragma: no cover - tested with httpcore hidden
    raise ImportError(
        "trio_membio.httpcore needs httpcore; install it with: pip install 'trio-membio[httpx]'",
        name=__name__,
    ) from _httpcore_missing

from ._stream import MemoryBIOStream
from ._trace import TraceCallback

__all__ = ["MemoryBIOBackend", "MemoryBIONetworkStream"]


@contextlib.contextmanager
def _mapped(
    timeout: float | None,
    on_timeout: type[httpcore.TimeoutException],
    on_error: type[httpcore.NetworkError],
    doing: str,
) -> Iterator[None]:
    """Run the body under ``timeout`` seconds and map trio's errors to httpcore's."""
    seconds = math.inf if timeout is None else max(timeout, 0.0)
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError as exc:
        raise on_timeout(f"timed out after {timeout} seconds while {doing}") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise on_error(str(exc) or f"{type(exc).__name__} while {doing}") from exc


class MemoryBIONetworkStream(httpcore.AsyncNetworkStream):
    """An httpcore network stream over a trio stream, with MemoryBIOStream TLS.

    :class:`MemoryBIOBackend` makes these; you rarely build one yourself.

    Args:
        stream: The trio stream to carry HTTP: usually a
            :class:`trio.SocketStream`, or :class:`MemoryBIOStream` layers
            over one. Other streams work, without "socket" and the address
            extras.
        trace: Passed to every :class:`MemoryBIOStream` that
            :meth:`start_tls` makes.
    """

    def __init__(self, stream: trio.abc.Stream, *, trace: TraceCallback | None = None) -> None:
        self._stream = stream
        self._trace = trace

    @property
    def stream(self) -> trio.abc.Stream:
        """The trio stream this network stream reads and writes."""
        return self._stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Receive up to ``max_bytes`` bytes; ``b""`` means the peer closed.

        On cancellation nothing is lost: bytes not yet returned stay buffered
        and the stream stays usable.

        Raises:
            httpcore.ReadTimeout: nothing arrived within ``timeout`` seconds.
            httpcore.ReadError: the connection or its TLS failed, or the stream
                was closed.
        """
        with _mapped(timeout, httpcore.ReadTimeout, httpcore.ReadError, "receiving"):
            data = await self._stream.receive_some(max_bytes)
        return data if isinstance(data, bytes) else bytes(data)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send all of ``buffer``.

        On cancellation (or timeout) an unknown part may have been sent, so
        do not send on this stream again: close it.

        Raises:
            httpcore.WriteTimeout: ``buffer`` could not be sent within
                ``timeout`` seconds.
            httpcore.WriteError: the connection or its TLS failed, or the
                stream was closed.
        """
        if not buffer:
            return
        with _mapped(timeout, httpcore.WriteTimeout, httpcore.WriteError, "sending"):
            await self._stream.send_all(buffer)

    async def aclose(self) -> None:
        """Close the stream and everything under it, without waiting for the peer.

        No close_notify is sent (HTTPS style). On cancellation the stream is
        still closed, and Cancelled is raised. Raises nothing else.
        """
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> MemoryBIONetworkStream:
        """Run a TLS client handshake over this stream and return the TLS stream.

        This stream may already be TLS (HTTPS through an HTTPS proxy): the
        result is then TLS inside TLS. Use only the returned stream afterwards.

        On cancellation, timeout or failure this stream is closed.

        Raises:
            httpcore.ConnectTimeout: the handshake took longer than ``timeout``.
            httpcore.ConnectError: the handshake failed (the message says why,
                for instance "certificate verify failed: ..."), or the
                connection failed or was closed.
        """
        try:
            tls = MemoryBIOStream(
                self._stream,
                ssl_context,
                server_hostname=server_hostname,
                https_compatible=True,
                trace=self._trace,
            )
        except BaseException:
            await trio.aclose_forcefully(self._stream)
            raise
        try:
            with _mapped(timeout, httpcore.ConnectTimeout, httpcore.ConnectError, "handshaking"):
                await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return MemoryBIONetworkStream(tls, trace=self._trace)

    # The return type is Any because httpcore's AsyncNetworkStream declares it
    # so: each key has its own type (ssl.SSLObject, a socket, an address, bool).
    def get_extra_info(self, info: str) -> Any:
        """Connection details httpcore and httpx users ask for, or None.

        Keys: ``"ssl_object"`` (the outermost TLS layer's
        :class:`ssl.SSLObject`), ``"socket"`` (the trio socket under every
        layer), ``"client_addr"`` and ``"server_addr"`` (its local and peer
        addresses), ``"is_readable"`` (whether a read would return at once:
        buffered TLS data or close_notify in any layer, or a readable socket).
        """
        if info == "ssl_object":
            stream = self._stream
            return stream.ssl_object if isinstance(stream, MemoryBIOStream) else None
        if info == "socket":
            return self._socket()
        if info in ("client_addr", "server_addr"):
            sock = self._socket()
            if sock is None:
                return None
            try:
                return sock.getsockname() if info == "client_addr" else sock.getpeername()
            except OSError:
                return None
        if info == "is_readable":
            return self._is_readable()
        return None

    def _innermost(self) -> trio.abc.Stream:
        stream = self._stream
        while isinstance(stream, MemoryBIOStream):
            stream = stream.transport_stream
        return stream

    def _socket(self) -> trio.socket.SocketType | None:
        stream = self._innermost()
        return stream.socket if isinstance(stream, trio.SocketStream) else None

    def _is_readable(self) -> bool:
        stream = self._stream
        while isinstance(stream, MemoryBIOStream):
            if stream.has_buffered_input():
                return True
            stream = stream.transport_stream
        if isinstance(stream, trio.SocketStream):
            sock = stream.socket
            # A closed socket will never carry a request again.
            return sock.fileno() < 0 or sock.is_readable()
        return False


def _set_socket_options(
    stream: trio.SocketStream, options: Iterable[httpcore.SOCKET_OPTION] | None
) -> None:
    """Set ``options`` on a new connection's socket; if one fails, close the socket."""
    try:
        for option in options or ():
            if len(option) == 4:
                level, name, _, length = option
                stream.socket.setsockopt(level, name, None, length)
            else:
                level, name, value = option
                stream.socket.setsockopt(level, name, value)
    except BaseException:
        stream.socket.close()
        raise


class MemoryBIOBackend(httpcore.AsyncNetworkBackend):
    """An httpcore async network backend for trio, with MemoryBIOStream for TLS.

    Args:
        trace: Passed to every :class:`MemoryBIOStream` made (see there).
    """

    def __init__(self, *, trace: TraceCallback | None = None) -> None:
        self._trace = trace

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> MemoryBIONetworkStream:
        """Open a TCP connection (happy eyeballs, as :func:`trio.open_tcp_stream`).

        On cancellation or failure nothing stays open.

        Raises:
            httpcore.ConnectTimeout: not connected within ``timeout`` seconds.
            httpcore.ConnectError: resolving, connecting or a socket option
                failed.
        """
        with _mapped(timeout, httpcore.ConnectTimeout, httpcore.ConnectError, "connecting"):
            stream = await trio.open_tcp_stream(host, port, local_address=local_address)
            _set_socket_options(stream, socket_options)
        return MemoryBIONetworkStream(stream, trace=self._trace)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> MemoryBIONetworkStream:
        """Connect to a Unix domain socket.

        On cancellation or failure nothing stays open.

        Raises:
            httpcore.ConnectTimeout: not connected within ``timeout`` seconds.
            httpcore.ConnectError: connecting or a socket option failed.
        """
        with _mapped(timeout, httpcore.ConnectTimeout, httpcore.ConnectError, "connecting"):
            stream = await trio.open_unix_socket(path)
            _set_socket_options(stream, socket_options)
        return MemoryBIONetworkStream(stream, trace=self._trace)

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` (httpcore's retry back-off). Cancellable; raises nothing."""
        await trio.sleep(seconds)
