"""Connected MemoryBIOStream pairs over trio's in-memory transports.

Theory of operation
===================

Construction is synchronous, like :func:`trio.testing.memory_stream_pair`:
the pair functions build two :class:`~trio_membio.MemoryBIOStream` objects,
each over a :class:`~trio_membio.testing.FaultyStream` wrapping one end of a
trio in-memory stream pair, and return them *without* handshaking. The
handshake then happens by itself on the first send or receive, or explicitly
and concurrently with ``await handshake(client, server)``. Keeping the two
apart lets a test cancel, corrupt or fragment the handshake itself, and lets
the pair be built outside a trio run (in a fixture or a hypothesis strategy).

Certificates come from a throwaway certificate authority made once per
process and host name; the contexts are new on every call, so a test may
change them. The client context verifies the certificate chain and the host
name, trusting only that authority (it does not load the system store, which
is slow). The keys are Ed25519 and the certificates have fixed serial numbers
and dates, so every handshake has the same size and layout, run after run: a
fault at a handshake offset hits the same byte when a failing example is
replayed. (ECDSA signatures, as trustme makes them, vary in length by a byte
or two, and shift every later offset.)

trio.testing (the in-memory transports) is imported only when a pair is
built, because it imports pytest whenever pytest is installed; this package
never needs pytest itself.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from types import ModuleType
from typing import Literal, NamedTuple

import trio

from .._engine import TLSEngine
from .._stream import MemoryBIOStream
from ._faults import FaultyStream
from ._plan import FaultPlan

__all__ = [
    "DEFAULT_HOSTNAME",
    "TLSStreamPair",
    "TLSVersion",
    "handshake",
    "lockstep_tls_stream_pair",
    "memory_tls_stream_pair",
    "throwaway_contexts",
    "tls_engine_pair",
]

#: "1.2" or "1.3" pins that TLS version; None lets the contexts negotiate.
TLSVersion = Literal["1.2", "1.3"]

#: The host name the throwaway certificate is issued for.
DEFAULT_HOSTNAME = "tls.example.org"

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_INSTALL_HINT = "pip install 'trio-membio[test]'"


class TLSStreamPair(NamedTuple):
    """A connected (client, server) pair; unpacks like a tuple.

    Each stream's ``transport_stream`` is the :class:`FaultyStream` of its
    end: ``pair.client.transport_stream.install(plan)`` changes its faults.
    """

    client: MemoryBIOStream[FaultyStream]
    server: MemoryBIOStream[FaultyStream]


def _trio_testing() -> ModuleType:
    """trio.testing, imported when first needed: it imports pytest when that is installed."""
    import trio.testing

    return trio.testing


class _Authority(NamedTuple):
    """A throwaway CA's certificate and one leaf's certificate and key, in PEM."""

    ca_pem: str
    leaf_pem: bytes  # the certificate, then its private key


@functools.cache
def _authority(hostname: str) -> _Authority:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError(
            "trio_membio.testing needs cryptography for its throwaway certificates: "
            f"{_INSTALL_HINT} (or pass client_context= and server_context=)"
        ) from None
    ca_key = ed25519.Ed25519PrivateKey.generate()
    leaf_key = ed25519.Ed25519PrivateKey.generate()
    # Each authority's own name and key identifiers, so that a context trusting
    # several of them picks the right issuer (OpenSSL looks issuers up by name).
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"trio_membio throwaway CA for {hostname}")]
    )
    ca_key_id = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    # Fixed dates and serial numbers: certificates of the same size every time.
    start = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    end = datetime.datetime(2999, 12, 31, tzinfo=datetime.timezone.utc)
    ca_usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(ca_key_id, critical=False)
        .sign(ca_key, None)
    )
    name: x509.GeneralName
    try:
        name = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        # As ssl sends it: an internationalised name in its ASCII form.
        name = x509.DNSName(hostname.encode("idna").decode("ascii"))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(2)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([name]), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
            critical=False,
        )
        .sign(ca_key, None)
    )
    pem = serialization.Encoding.PEM
    key = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return _Authority(ca.public_bytes(pem).decode("ascii"), leaf.public_bytes(pem) + key)


def _load_leaf(context: ssl.SSLContext, leaf_pem: bytes) -> None:
    """load_cert_chain() reads only files: through a private temporary one."""
    descriptor, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(leaf_pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


def throwaway_contexts(
    *,
    tls_version: TLSVersion | None = None,
    alpn_protocols: Sequence[str] | None = None,
    hostname: str = DEFAULT_HOSTNAME,
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A (client, server) pair of contexts that trust each other and nothing else.

    Args:
        tls_version: Pin "1.2" or "1.3" on both; None negotiates (TLS 1.3).
        alpn_protocols: Set on both contexts, if given.
        hostname: The name the server's certificate is issued for.

    Raises:
        ImportError: cryptography is not installed (``pip install 'trio-membio[test]'``).
        ValueError: ``tls_version`` is not "1.2", "1.3" or None.
    """
    if tls_version is not None and tls_version not in _VERSIONS:
        raise ValueError(f"tls_version must be '1.2', '1.3' or None, not {tls_version!r}")
    authority = _authority(hostname)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and host name
    client.load_verify_locations(cadata=authority.ca_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_leaf(server, authority.leaf_pem)
    for context in (client, server):
        if tls_version is not None:
            context.minimum_version = context.maximum_version = _VERSIONS[tls_version]
        if alpn_protocols is not None:
            context.set_alpn_protocols(list(alpn_protocols))
    return client, server


def _contexts(
    tls_version: TLSVersion | None,
    alpn_protocols: Sequence[str] | None,
    client_context: ssl.SSLContext | None,
    server_context: ssl.SSLContext | None,
    server_hostname: str,
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    if client_context is not None and server_context is not None:
        if tls_version is not None or alpn_protocols is not None:
            raise ValueError(
                "tls_version and alpn_protocols configure the throwaway contexts; "
                "with both client_context and server_context given, set them on those"
            )
        return client_context, server_context
    made_client, made_server = throwaway_contexts(
        tls_version=tls_version, alpn_protocols=alpn_protocols, hostname=server_hostname
    )
    return client_context or made_client, server_context or made_server


def _pair(
    transports: tuple[trio.abc.Stream, trio.abc.Stream],
    *,
    tls_version: TLSVersion | None,
    alpn_protocols: Sequence[str] | None,
    https_compatible: bool,
    client_context: ssl.SSLContext | None,
    server_context: ssl.SSLContext | None,
    server_hostname: str,
    client_faults: FaultPlan | None,
    server_faults: FaultPlan | None,
) -> TLSStreamPair:
    client_ctx, server_ctx = _contexts(
        tls_version, alpn_protocols, client_context, server_context, server_hostname
    )
    client_transport, server_transport = transports
    client = MemoryBIOStream(
        FaultyStream(client_transport, client_faults),
        client_ctx,
        server_hostname=server_hostname,
        https_compatible=https_compatible,
    )
    server = MemoryBIOStream(
        FaultyStream(server_transport, server_faults),
        server_ctx,
        server_side=True,
        https_compatible=https_compatible,
    )
    return TLSStreamPair(client, server)


def memory_tls_stream_pair(
    *,
    tls_version: TLSVersion | None = None,
    alpn_protocols: Sequence[str] | None = None,
    https_compatible: bool = False,
    client_context: ssl.SSLContext | None = None,
    server_context: ssl.SSLContext | None = None,
    server_hostname: str = DEFAULT_HOSTNAME,
    client_faults: FaultPlan | None = None,
    server_faults: FaultPlan | None = None,
) -> TLSStreamPair:
    """A (client, server) TLS pair over :func:`trio.testing.memory_stream_pair`.

    The transports buffer without limit, so send_all() never waits for the
    peer to receive. Nothing is sent until the handshake starts: call
    :func:`handshake` or just use the streams.

    Args:
        tls_version: "1.2" or "1.3" pins the version of the throwaway contexts.
        alpn_protocols: ALPN protocols for the throwaway contexts.
        https_compatible: Passed to both streams (see
            :class:`~trio_membio.MemoryBIOStream`).
        client_context: Used instead of a throwaway client context.
        server_context: Used instead of a throwaway server context (its
            certificate must then be valid for ``server_hostname`` and trusted
            by the client context).
        server_hostname: The name the client checks (and the throwaway
            certificate is issued for).
        client_faults: The plan of the client's :class:`FaultyStream`: "sent"
            is client to server, "received" is server to client.
        server_faults: The plan of the server's :class:`FaultyStream`.

    Raises:
        ImportError: cryptography is missing and a throwaway context is needed.
        ValueError: ``tls_version`` or ``alpn_protocols`` given together with
            both contexts (they only configure throwaway contexts).
    """
    return _pair(
        _trio_testing().memory_stream_pair(),
        tls_version=tls_version,
        alpn_protocols=alpn_protocols,
        https_compatible=https_compatible,
        client_context=client_context,
        server_context=server_context,
        server_hostname=server_hostname,
        client_faults=client_faults,
        server_faults=server_faults,
    )


def lockstep_tls_stream_pair(
    *,
    tls_version: TLSVersion | None = None,
    alpn_protocols: Sequence[str] | None = None,
    https_compatible: bool = False,
    client_context: ssl.SSLContext | None = None,
    server_context: ssl.SSLContext | None = None,
    server_hostname: str = DEFAULT_HOSTNAME,
    client_faults: FaultPlan | None = None,
    server_faults: FaultPlan | None = None,
) -> TLSStreamPair:
    """A (client, server) TLS pair over :func:`trio.testing.lockstep_stream_pair`.

    The transports have no buffer: each send_all() waits until the peer has
    received all of it, which flushes out deadlocks (a task that only sends
    while the peer also only sends). Arguments and exceptions as for
    :func:`memory_tls_stream_pair`.
    """
    return _pair(
        _trio_testing().lockstep_stream_pair(),
        tls_version=tls_version,
        alpn_protocols=alpn_protocols,
        https_compatible=https_compatible,
        client_context=client_context,
        server_context=server_context,
        server_hostname=server_hostname,
        client_faults=client_faults,
        server_faults=server_faults,
    )


async def handshake(
    client: MemoryBIOStream[trio.abc.Stream], server: MemoryBIOStream[trio.abc.Stream]
) -> None:
    """Run both ends' handshakes concurrently and return when both have finished.

    If one end fails, the other end's handshake is cancelled (it could not
    finish anyway) and the failure is raised.

    On cancellation both handshakes are cancelled, with the outcome
    :meth:`MemoryBIOStream.do_handshake` documents: cancelled while waiting
    for the peer, a stream can handshake again; cancelled while writing, it is
    broken.

    Raises:
        trio.BrokenResourceError: a handshake failed (the first failure; its
            ``__cause__`` is the ssl error).
        trio.ClosedResourceError: a stream was closed.
        Exception: what a transport raised, such as a FaultPlan's injected
            ``error`` (the first failure, also not in a group).
    """
    failures: list[Exception] = []

    async with trio.open_nursery() as nursery:

        async def run(stream: MemoryBIOStream[trio.abc.Stream]) -> None:
            try:
                await stream.do_handshake()
            except Exception as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()

        nursery.start_soon(run, client)
        nursery.start_soon(run, server)
    if failures:
        raise failures[0]


def tls_engine_pair(
    *,
    tls_version: TLSVersion | None = None,
    client_context: ssl.SSLContext | None = None,
    server_context: ssl.SSLContext | None = None,
    server_hostname: str = DEFAULT_HOSTNAME,
) -> tuple[TLSEngine, TLSEngine]:
    """A (client, server) pair of sans-I/O :class:`~trio_membio.TLSEngine` objects.

    Nothing is exchanged: move ``data_to_send()`` of one into
    ``receive_data()`` of the other yourself. Arguments as for
    :func:`memory_tls_stream_pair`.

    Raises:
        ImportError: cryptography is missing and a throwaway context is needed.
    """
    client_ctx, server_ctx = _contexts(
        tls_version, None, client_context, server_context, server_hostname
    )
    return (
        TLSEngine(client_ctx, server_hostname=server_hostname),
        TLSEngine(server_ctx, server_side=True),
    )
