"""A TLS echo server and a client in one nursery, over loopback TCP.

The server is :func:`trio_membio.serve_tls_over_tcp`, which runs every
handshake under a deadline before it calls the handler; the client is
:func:`trio_membio.open_tls_over_tcp_stream`. A throwaway certificate
authority from trustme stands in for a real one (``pip install
'trio-membio[demo]'``).

Run it with ``python docs/examples/tcp_echo.py``.
"""

from __future__ import annotations

import ssl
from functools import partial

import trio
import trustme

from trio_membio import (
    MemoryBIOListener,
    MemoryBIOStream,
    open_tls_over_tcp_stream,
    serve_tls_over_tcp,
)


def make_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context trusting it."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    # The same checks as ssl.create_default_context(): certificate and host name.
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


async def echo(stream: MemoryBIOStream[trio.SocketStream]) -> None:
    """The handler: the handshake is done; echo until the client closes."""
    while data := await stream.receive_some():
        await stream.send_all(data)


async def main() -> None:
    """Serve on a free port, connect, exchange three messages, shut down."""
    server_context, client_context = make_contexts()
    async with trio.open_nursery() as nursery:
        # start() returns once the server listens; port 0 picks a free port.
        listeners: list[MemoryBIOListener[trio.SocketStream]] = await nursery.start(
            partial(serve_tls_over_tcp, echo, 0, server_context, host="127.0.0.1")
        )
        tcp_listener = listeners[0].transport_listener
        assert isinstance(tcp_listener, trio.SocketListener)  # what the TCP helper opens
        port = tcp_listener.socket.getsockname()[1]

        client = await open_tls_over_tcp_stream("127.0.0.1", port, ssl_context=client_context)
        async with client:
            await client.do_handshake()  # optional: the first send would do it
            print(f"connected with {client.version()}, cipher {client.cipher()}")
            for message in (b"hello", b"over", b"TLS"):
                await client.send_all(message)
                reply = await client.receive_some()
                print(f"sent {message!r}, got back {reply!r}")
        # The client sent close_notify and closed; the handler saw b"" and
        # returned. serve_tls_over_tcp runs until cancelled:
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
