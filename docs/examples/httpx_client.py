"""httpx over MemoryBIOStream, against a tiny local HTTPS server.

The client is an ``httpx.AsyncClient`` over
:class:`trio_membio.httpx.MemoryBIOHTTPTransport`, so its TLS is done by
``MemoryBIOStream`` (docs/httpx.md has the transport's options). The server
answers every request with a fixed response, over
:func:`trio_membio.serve_tls_over_tcp`. Needs the ``httpx`` and ``demo``
extras: ``pip install 'trio-membio[httpx,demo]'``.

Run it with ``python docs/examples/httpx_client.py``.
"""

from __future__ import annotations

import ssl
from functools import partial

import httpx
import trio
import trustme

from trio_membio import MemoryBIOListener, MemoryBIOStream, serve_tls_over_tcp
from trio_membio.httpx import MemoryBIOHTTPTransport

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 22\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"hello from MemoryBIO!\n"
)


async def answer(stream: MemoryBIOStream[trio.SocketStream]) -> None:
    """Read one request head, send the fixed response; closing sends close_notify."""
    request = b""
    while b"\r\n\r\n" not in request:
        data = await stream.receive_some()
        if not data:
            return
        request += data
    print(f"server: {request.splitlines()[0].decode()}")
    await stream.send_all(RESPONSE)


def memorybio_client(context: ssl.SSLContext) -> httpx.AsyncClient:
    """An httpx client whose TLS is MemoryBIOStream (see docs/httpx.md)."""
    return httpx.AsyncClient(transport=MemoryBIOHTTPTransport(verify=context))


async def main() -> None:
    """Serve on a free port and fetch one page with httpx."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async with trio.open_nursery() as nursery:
        listeners: list[MemoryBIOListener[trio.SocketStream]] = await nursery.start(
            partial(serve_tls_over_tcp, answer, 0, server_context, host="127.0.0.1")
        )
        tcp_listener = listeners[0].transport_listener
        assert isinstance(tcp_listener, trio.SocketListener)  # what the TCP helper opens
        port = tcp_listener.socket.getsockname()[1]

        async with memorybio_client(client_context) as client:
            response = await client.get(f"https://127.0.0.1:{port}/")
            network_stream = response.extensions["network_stream"]
            tls = network_stream.get_extra_info("ssl_object")
            print(f"client: {response.status_code} {response.text!r}")
            print(f"client: over {type(network_stream).__name__}, {tls.version()}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
