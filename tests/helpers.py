"""Shared test helpers: certificates, contexts, reading a stream, and driving racing tasks.

trio_membio.testing comes first: its pairs and its handshake are what tests
use over trio's memory and lockstep transports. What is here, it does not
offer: a trustme CA (PEM files, client certificates), contexts from it,
pairs over transports a test builds itself, and helpers for racing tasks.
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Literal

import pytest
import trio
import trio.testing
import trustme

from trio_membio import MemoryBIOStream
from trio_membio.testing import DEFAULT_HOSTNAME, handshake
from trio_membio.testing import TLSVersion as TLSVersion

# The name the test CA's server certificate and the kit's pairs are issued for.
HOSTNAME = DEFAULT_HOSTNAME

Operation = Callable[[], Awaitable[object]]
# MemoryBIOStream's public async methods, by name, for tests that call each in turn.
StreamOperation = Literal[
    "do_handshake",
    "send_all",
    "receive_some",
    "wait_send_all_might_not_block",
    "send_eof",
    "unwrap",
    "aclose",
]
HANG = 10.0  # seconds (virtual, under the autojump clock) after which a wait is a hang
# An application_data record that cannot decrypt, as an attacker could inject.
FORGED_RECORD = b"\x17\x03\x03\x00\x30" + bytes(48)

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@cache
def ca() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.ECDSA)


@cache
def server_cert() -> trustme.LeafCert:
    return ca().issue_cert(HOSTNAME, "127.0.0.1", "localhost", key_type=trustme.KeyType.ECDSA)


def server_context(version: TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert().configure_cert(context)
    if version is not None:
        context.minimum_version = context.maximum_version = _VERSIONS[version]
    return context


def client_context(version: TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca().configure_trust(context)
    if version is not None:
        context.minimum_version = context.maximum_version = _VERSIONS[version]
    return context


StreamPair = tuple[MemoryBIOStream[trio.abc.Stream], MemoryBIOStream[trio.abc.Stream]]


def tls_pair(
    transport_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] = (
        trio.testing.memory_stream_pair
    ),
    *,
    version: TLSVersion | None = None,
    https_compatible: bool = False,
    client_ctx: ssl.SSLContext | None = None,
    server_ctx: ssl.SSLContext | None = None,
) -> StreamPair:
    """A (client, server) pair over the given transports, with the test CA's contexts.

    Over trio's memory or lockstep transports, use the kit's
    memory_tls_stream_pair / lockstep_tls_stream_pair instead; this is for
    what they cannot take: transports a test controls or breaks, sockets,
    and the trustme CA that client certificates and PEM files need.
    No handshake yet.
    """
    client_transport, server_transport = transport_pair()
    client = MemoryBIOStream(
        client_transport,
        client_ctx or client_context(version),
        server_hostname=HOSTNAME,
        https_compatible=https_compatible,
    )
    server = MemoryBIOStream(
        server_transport,
        server_ctx or server_context(version),
        server_side=True,
        https_compatible=https_compatible,
    )
    return client, server


# The kit's handshake under its old name here, for the modules that still use it.
handshake_both = handshake


async def handshaken_pair(**kwargs: object) -> StreamPair:
    """:func:`tls_pair`, handshaken with the kit's :func:`~trio_membio.testing.handshake`."""
    client, server = tls_pair(**kwargs)  # type: ignore[arg-type]  # forwarded keywords
    await handshake(client, server)
    return client, server


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """Receive until ``size`` bytes have arrived; fail on an end of stream before that."""
    received = bytearray()
    while len(received) < size:
        data = await stream.receive_some()
        assert data, f"EOF after {len(received)} of {size} bytes"
        received += data
    return bytes(received)


async def quietly(operation: Operation) -> None:
    """Run a peer's operation that may see our end break."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await operation()


async def cancellable(scope: trio.CancelScope, operation: Operation) -> None:
    with scope:
        await operation()


async def receive_forever(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
    while True:
        into.append(bytes(await stream.receive_some()))


async def expect_broken(operation: Operation, match: str) -> None:
    """The operation raises BrokenResourceError at once, rather than hanging."""
    with trio.fail_after(HANG), pytest.raises(trio.BrokenResourceError, match=match):
        await operation()


async def aclose_all(*streams: trio.abc.AsyncResource) -> None:
    for stream in streams:
        await stream.aclose()


def untrusting_client_context() -> ssl.SSLContext:
    """A client context that does not trust the test CA."""
    return ssl.create_default_context(cadata=_other_ca_pem())


def _other_ca_pem() -> str:
    return trustme.CA().cert_pem.bytes().decode()


def run_checked(
    command: list[str | Path], *, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output if it exits with an error."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result
