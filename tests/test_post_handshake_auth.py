"""TLS 1.3 post-handshake client authentication (issue 15, trio issue #741).

``MemoryBIOStream.request_client_certificate()`` asks a connected client for
its certificate and returns it once verified; a MemoryBIOStream client
answers on its own. Tested between two MemoryBIOStreams (memory and TCP),
against Python's blocking ssl client and against ``openssl s_client
-enable_pha``.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_membio import MemoryBIOStream

from .cli_harness import read_all, read_until, require_tool, started_process
from .helpers import HOSTNAME, ca, client_context, handshake_both, server_context, tls_pair
from .peers import client_cert

Stream = MemoryBIOStream[trio.abc.Stream]


def pha_server_context(verify_mode: ssl.VerifyMode = ssl.CERT_REQUIRED) -> ssl.SSLContext:
    context = server_context("1.3")
    ca().configure_trust(context)
    context.post_handshake_auth = True
    context.verify_mode = verify_mode
    return context


def pha_client_context(*, with_certificate: bool = True, offer: bool = True) -> ssl.SSLContext:
    context = client_context("1.3")
    if with_certificate:
        client_cert().configure_cert(context)
    context.post_handshake_auth = offer
    return context


def pair(
    server_ctx: ssl.SSLContext | None = None, client_ctx: ssl.SSLContext | None = None
) -> tuple[Stream, Stream]:
    return tls_pair(
        client_ctx=client_ctx or pha_client_context(),
        server_ctx=server_ctx or pha_server_context(),
    )


def subject_name(certificate: Mapping[str, object]) -> str:
    subject = certificate.get("subjectAltName")
    assert isinstance(subject, tuple)
    return ",".join(value for _, value in subject)


async def test_server_gets_the_client_certificate_while_data_flows() -> None:
    client, server = pair()
    await handshake_both(client, server)
    assert server.getpeercert() is None  # none asked for in the handshake
    got: list[bytes] = []

    async def client_side() -> None:
        await client.send_all(b"early data")  # sent before the request arrives
        got.append(bytes(await client.receive_some()))  # answers the request meanwhile

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        certificate = await server.request_client_certificate()
        assert "client.example.org" in subject_name(certificate)
        assert await server.receive_some() == b"early data"  # kept, not lost
        await server.send_all(b"welcome")
    assert got == [b"welcome"]
    assert server.getpeercert() == certificate
    await client.aclose()
    await server.aclose()


async def test_a_client_without_a_certificate_is_refused_with_an_alert() -> None:
    client, server = pair(client_ctx=pha_client_context(with_certificate=False))
    await handshake_both(client, server)
    async with trio.open_nursery() as nursery:

        async def client_side() -> None:
            with pytest.raises(trio.BrokenResourceError, match=r"(?i)alert"):
                await client.receive_some()  # the server's alert, not a hang

        nursery.start_soon(client_side)
        with pytest.raises(
            trio.BrokenResourceError, match="did not return a certificate"
        ) as caught:
            await server.request_client_certificate()
        assert isinstance(caught.value.__cause__, ssl.SSLError)
    await client.aclose()
    await server.aclose()


async def test_a_client_that_does_not_offer_it_gets_a_clear_error_and_the_stream_goes_on() -> None:
    client, server = pair(client_ctx=pha_client_context(offer=False))
    await handshake_both(client, server)
    with pytest.raises(RuntimeError, match=r"did not offer TLS 1\.3 post-handshake"):
        await server.request_client_certificate()
    await client.send_all(b"still fine")
    assert await server.receive_some() == b"still fine"
    await client.aclose()
    await server.aclose()


async def test_wrong_side_version_or_context_are_clear_errors() -> None:
    client, _ = pair()
    with pytest.raises(RuntimeError, match="only a server"):
        await client.request_client_certificate()
    _, optional = pair(server_ctx=pha_server_context(ssl.CERT_OPTIONAL))
    with pytest.raises(ValueError, match="CERT_REQUIRED"):
        await optional.request_client_certificate()
    tls12_server = server_context("1.2")
    ca().configure_trust(tls12_server)
    tls12_server.verify_mode = ssl.CERT_REQUIRED
    tls12_client = client_context("1.2")
    client_cert().configure_cert(tls12_client)  # TLS 1.2 asks in the handshake
    client12, server12 = tls_pair(client_ctx=tls12_client, server_ctx=tls12_server)
    await handshake_both(client12, server12)
    with pytest.raises(RuntimeError, match=r"needs TLS 1\.3; this connection negotiated TLSv1\.2"):
        await server12.request_client_certificate()
    await client12.send_all(b"unaffected")
    assert await server12.receive_some() == b"unaffected"
    await client12.aclose()
    await server12.aclose()


async def test_a_cancelled_request_can_be_awaited_again(autojump_clock: trio.abc.Clock) -> None:
    client, server = pair()
    await handshake_both(client, server)
    with trio.move_on_after(1) as scope:
        await server.request_client_certificate()  # the client is not reading yet
    assert scope.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.receive_some)
        certificate = await server.request_client_certificate()  # the same request
        assert "client.example.org" in subject_name(certificate)
        await server.send_all(b"done")
    await client.aclose()
    await server.aclose()


async def test_python_ssl_client_answers_over_tcp() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    replies: list[bytes] = []

    def blocking_client() -> None:
        context = pha_client_context()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            context.wrap_socket(raw, server_hostname=HOSTNAME) as tls,
        ):
            tls.sendall(b"hello")
            replies.append(tls.recv(100))  # answers the certificate request on the way

    async with listeners[0], trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, blocking_client)
        with trio.fail_after(10):
            server = MemoryBIOStream(
                await listeners[0].accept(), pha_server_context(), server_side=True
            )
            assert await server.receive_some() == b"hello"
            certificate = await server.request_client_certificate()
            await server.send_all(b"hello, " + subject_name(certificate).encode())
            await server.aclose()
    assert replies == [b"hello, client.example.org"]


async def test_openssl_s_client_enable_pha_answers(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    pem = tmp_path / "client.pem"
    client_cert().private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_pem = tmp_path / "ca.pem"
    ca().cert_pem.write_to_path(str(ca_pem))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    command = [
        openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOSTNAME,
        "-tls1_3", "-enable_pha", "-cert", str(pem), "-key", str(pem),
        "-CAfile", str(ca_pem), "-verify_return_error", "-quiet", "-no_ign_eof",
    ]  # fmt: skip
    async with listeners[0], started_process(command) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        with trio.fail_after(20):
            server = MemoryBIOStream(
                await listeners[0].accept(), pha_server_context(), server_side=True
            )
            await process.stdin.send_all(b"ping\n")
            assert await server.receive_some() == b"ping\n"  # s_client reads the socket now
            certificate = await server.request_client_certificate()
            await server.send_all(f"hello {subject_name(certificate)}\n".encode())
            out = bytearray()
            await read_until(process.stdout, b"hello client.example.org\n", out)
            await process.stdin.aclose()  # s_client sends close_notify and exits
            assert await server.receive_some() == b""
            await server.aclose()
            await read_all(process.stdout)
            assert await process.wait() == 0
