"""Bytes read before the TLS stream existed: STARTTLS and protocol sniffing (issue 15).

A server that reads a ``STARTTLS`` command, or peeks at the first bytes to
tell TLS from plaintext on one port, often already holds the start of the
client's ClientHello. ``MemoryBIOStream(..., initial_data=...)`` hands those
bytes to TLS before the transport is read again (trio issue #195).
"""

from __future__ import annotations

import contextlib
import functools
import socket

import trio
import trio.testing

from trio_membio import MemoryBIOListener, MemoryBIOStream

from .helpers import HOSTNAME, client_context, server_context

TLS_HANDSHAKE_RECORD = 0x16


async def test_starttls_with_the_client_hello_in_the_same_read() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    seen: list[bytes] = []

    async def smtp_client() -> None:
        await client_transport.send_all(b"STARTTLS\r\n")
        tls = MemoryBIOStream(client_transport, client_context(), server_hostname=HOSTNAME)
        await tls.send_all(b"EHLO client.example.org\r\n")  # starts the handshake
        seen.append(bytes(await tls.receive_some()))
        await tls.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(smtp_client)
        await trio.testing.wait_all_tasks_blocked()  # the command and the ClientHello wait
        first_read = await server_transport.receive_some()
        command, _, rest = bytes(first_read).partition(b"\r\n")
        assert command == b"STARTTLS"
        assert rest[0] == TLS_HANDSHAKE_RECORD  # the ClientHello came in the same read
        tls = MemoryBIOStream(
            server_transport, server_context(), server_side=True, initial_data=rest
        )
        assert await tls.receive_some() == b"EHLO client.example.org\r\n"
        await tls.send_all(b"250 ok\r\n")
        assert await tls.receive_some() == b""
        assert tls.statistics().ciphertext_received >= len(rest)
        await tls.aclose()
    assert seen == [b"250 ok\r\n"]


async def serve_both_on_one_port(listener: trio.SocketListener, connections: int) -> None:
    """A server that tells TLS from plaintext HTTP by the first byte."""
    context = server_context()
    for _ in range(connections):
        transport = await listener.accept()
        first = await transport.receive_some()
        stream: trio.abc.Stream
        if first[:1] == bytes([TLS_HANDSHAKE_RECORD]):
            stream = MemoryBIOStream(transport, context, server_side=True, initial_data=first)
            request = await stream.receive_some()
            scheme = b"https"
        else:
            stream, request, scheme = transport, first, b"http"
        assert request.startswith(b"GET / HTTP/1.1\r\n")
        body = b"hello over " + scheme
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        await stream.aclose()


def fetch(port: int, *, tls: bool) -> bytes:
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with contextlib.ExitStack() as stack:
        sock: socket.socket = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
        if tls:
            sock = stack.enter_context(client_context().wrap_socket(sock, server_hostname=HOSTNAME))
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
        return response


async def test_one_port_serves_plaintext_and_tls_by_peeking() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0], trio.open_nursery() as nursery:
        nursery.start_soon(serve_both_on_one_port, listeners[0], 2)
        with trio.fail_after(20):
            plain = await trio.to_thread.run_sync(functools.partial(fetch, port, tls=False))
            secure = await trio.to_thread.run_sync(functools.partial(fetch, port, tls=True))
    assert plain.endswith(b"\r\n\r\nhello over http")
    assert secure.endswith(b"\r\n\r\nhello over https")


def test_initial_data_is_counted_as_received_ciphertext() -> None:
    client_transport, _ = trio.testing.memory_stream_pair()
    stream = MemoryBIOStream(
        client_transport, server_context(), server_side=True, initial_data=b"\x16\x03\x01\x00"
    )
    assert stream.statistics().ciphertext_received == 4
    assert stream.has_buffered_input()  # held for the handshake, not read from the transport


async def test_a_listener_wraps_a_connection_it_did_not_accept_with_the_bytes_read() -> None:
    # The listener side: a server with its own TCP accept loop (it peeks
    # first) wraps each TLS connection with the listener's settings.
    tcp_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = MemoryBIOListener(tcp_listeners[0], server_context(), https_compatible=True)
    port = tcp_listeners[0].socket.getsockname()[1]
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, functools.partial(fetch, port, tls=True))
        with trio.fail_after(20):
            transport = await tcp_listeners[0].accept()
            first = await transport.receive_some()
            assert first[:1] == bytes([TLS_HANDSHAKE_RECORD])
            stream = listener.wrap(transport, initial_data=first)
            assert stream.https_compatible  # the listener's settings
            request = await stream.receive_some()
            assert request.startswith(b"GET / HTTP/1.1\r\n")
            body = b"via the listener"
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(body), body)
            )
            await stream.aclose()
