"""A failed handshake: both ends learn why, from one TLS alert.

The server's certificate comes from a throwaway authority that the client does
not trust (the client uses :func:`trio_membio.default_client_context`, which
trusts the system's authorities only). The client's handshake fails with
``trio.BrokenResourceError`` chained from ``ssl.SSLCertVerificationError``;
before raising, it sends OpenSSL's fatal alert, so the server's handshake fails
too, with the alert's name, instead of waiting for a Finished message that
will never come.

Run it with ``python docs/examples/handshake_failure.py``; it needs trustme
(``pip install 'trio-membio[demo]'``).
"""

from __future__ import annotations

import ssl

import trio
import trustme

from trio_membio import (
    default_client_context,
    open_tls_over_tcp_listeners,
    open_tls_over_tcp_stream,
)


async def main() -> None:
    """Serve one connection with an untrusted certificate; watch both ends fail."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_context)
    (listener,) = await open_tls_over_tcp_listeners(0, server_context, host="127.0.0.1")
    tcp_listener = listener.transport_listener
    assert isinstance(tcp_listener, trio.SocketListener)  # what the TCP helper opens
    port = tcp_listener.socket.getsockname()[1]

    async def server() -> None:
        async with await listener.accept() as stream:
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                print(f"server: {exc}")

    async with trio.open_nursery() as nursery, listener:
        nursery.start_soon(server)
        client = await open_tls_over_tcp_stream(
            "127.0.0.1", port, ssl_context=default_client_context()
        )
        async with client:
            try:
                await client.do_handshake()
            except trio.BrokenResourceError as exc:
                print(f"client: {exc}")
                print(f"client: caused by {type(exc.__cause__).__name__}")
                if not isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                    raise
            else:
                raise AssertionError("the client trusted a certificate it should not have")


if __name__ == "__main__":
    trio.run(main)
