"""``python -m trio_membio connect HOST:PORT``: a TLS client, like ``openssl s_client``.

Theory of operation
===================

1. The TCP connection and the handshake each run under ``--timeout``. Every
   way they can fail (refused, unresolvable, untrusted or expired
   certificate, wrong name, no common version or ALPN protocol, timeout)
   becomes a one-line :class:`CLIError` that says what to try next.
2. The handshake summary (version, cipher, ALPN, certificates, resumption)
   and every other note go to stderr. Standard output carries only the bytes
   the server sent, so ``connect ... > file`` captures exactly those.
3. Two tasks copy: stdin to the connection, the connection to stdout. The
   server decides when we are done: its close_notify (receive_some() returns
   ``b""``) ends the command and cancels the stdin task. At the end of stdin,
   TLS 1.3 sends ``send_eof()`` (our close_notify) and keeps reading the
   reply. TLS 1.2 has no half-close: a close_notify would end both directions
   and could cut the reply short, so the command says so and keeps reading
   until the server closes (Ctrl-C to stop sooner).
4. The real stdin and stdout are read and written in worker threads, not with
   ``trio.lowlevel.FdStream``: FdStream switches the open file description to
   non-blocking mode, and on a terminal that description is shared with
   stderr and with the shell, whose writes would then fail with
   BlockingIOError. A stdin read is abandoned on cancellation; its thread
   stays blocked in read() until the process exits, right afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import ssl
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from .._stream import MemoryBIOStream
from ._common import (
    PROGRAM,
    CLIError,
    Console,
    Tracer,
    add_tls_options,
    apply_keylog,
    check_tls_options,
    describe_os_error,
    describe_tls_failure,
    load_cafile,
    load_cert_chain,
    pin_version,
    seconds,
    show_address,
)

if TYPE_CHECKING:
    from ._common import Commands

__all__ = ["add_parser", "check", "run"]

Stream = MemoryBIOStream[trio.SocketStream]
_READ_SIZE: Final = 65536
_SHORT_NAMES: Final = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "emailAddress",
}


def host_port(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6ADDRESS]:PORT``; argparse reports a bad one."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (for example localhost:4433 or [::1]:4433)"
        )
    return host, int(port)


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    """Add the ``connect`` command and its options to ``commands``."""
    parser = commands.add_parser(
        "connect",
        help="connect to a TLS server, like openssl s_client",
        description="Connect, print the handshake summary on stderr, then copy stdin to "
        "the connection and the connection to stdout.",
    )
    parser.add_argument(
        "address", type=host_port, metavar="HOST:PORT", help="the server ([v6 address]:port)"
    )
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--cafile", metavar="FILE", help="trust these CAs instead of the system's")
    trust.add_argument(
        "--insecure", action="store_true", help="do not verify the certificate (testing only)"
    )
    parser.add_argument("--servername", metavar="NAME", help="name for SNI and the check")
    parser.add_argument("--cert", metavar="FILE", help="a client certificate chain (PEM)")
    parser.add_argument("--key", metavar="FILE", help="the private key of --cert (PEM)")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="limit for the TCP connection and the handshake (10)",
    )
    add_tls_options(parser)
    return parser


def check(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Cross-check connect's options; a usage error exits with status 2."""
    check_tls_options(arguments, parser)


async def run(
    arguments: argparse.Namespace,
    console: Console,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Connect, print the summary, copy the data both ways; return 0."""
    host, port = arguments.address
    shown = show_address(host, port)
    context = _client_context(arguments)
    apply_keylog(context, arguments.keylog, console)
    tcp = await _open_tcp(host, port, shown, arguments.timeout)
    stream = MemoryBIOStream(
        tcp,
        context,
        server_hostname=arguments.servername or host,
        trace=Tracer(console.err) if arguments.trace else None,
    )
    async with stream:
        with trio.move_on_after(arguments.timeout) as scope:
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                raise CLIError(describe_tls_failure(exc, server_side=False)) from None
        if scope.cancelled_caught:
            raise CLIError(
                f"the TLS handshake with {shown} did not finish within {arguments.timeout:g} s "
                "(is it a TLS server? see --timeout)"
            )
        for line in _summary(stream, shown, arguments):
            console.note(line)
        stdin = console.stdin or _ThreadStdin()
        stdout = console.stdout or _ThreadStdout()
        async with stdin, stdout:
            await _copy(stream, stdin, stdout, console)
        statistics = stream.statistics()
        ended = statistics.ended.value if statistics.ended is not None else "open"
        console.note(
            f"closed: sent {statistics.plaintext_sent} bytes, received "
            f"{statistics.plaintext_received} bytes ({ended})"
        )
    return 0


def _client_context(arguments: argparse.Namespace) -> ssl.SSLContext:
    # Like default_client_context(), except that --cafile replaces the
    # system's CAs instead of adding to them.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    if arguments.cafile is not None:
        load_cafile(context, arguments.cafile)
    else:
        context.load_default_certs()
    if arguments.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if arguments.cert is not None:
        load_cert_chain(context, arguments.cert, arguments.key)
    if arguments.alpn:
        context.set_alpn_protocols(arguments.alpn)
    pin_version(context, arguments.tls_version)
    return context


async def _open_tcp(host: str, port: int, shown: str, timeout: float) -> trio.SocketStream:
    with trio.move_on_after(timeout):
        try:
            return await trio.open_tcp_stream(host, port)
        except socket.gaierror as exc:
            raise CLIError(
                f"cannot resolve {host!r}: {exc.strerror} (is the host name right?)"
            ) from None
        except OSError as exc:
            raise CLIError(
                f"cannot connect to {shown}: {describe_os_error(exc)} "
                "(is the server running, on that port?)"
            ) from None
    raise CLIError(
        f"no TCP connection to {shown} within {timeout:g} s (is the host reachable? see --timeout)"
    )


# ------------------------------------------------------------------- copying


async def _copy(
    stream: Stream, stdin: trio.abc.ReceiveStream, stdout: trio.abc.SendStream, console: Console
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send_input, stream, stdin, console)
        try:
            while data := await stream.receive_some():
                await stdout.send_all(data)
        except trio.BrokenResourceError as exc:
            raise CLIError(describe_tls_failure(exc, server_side=False)) from None
        # The server has finished: whatever stdin still holds has nowhere to go.
        nursery.cancel_scope.cancel()


async def _send_input(stream: Stream, stdin: trio.abc.ReceiveStream, console: Console) -> None:
    try:
        while data := await stdin.receive_some(_READ_SIZE):
            await stream.send_all(data)
        if stream.version() == "TLSv1.3":
            await stream.send_eof()
        else:
            console.note(
                f"{PROGRAM}: end of input; {stream.version()} has no half-close, so waiting "
                "for the server to close the connection (Ctrl-C to stop)"
            )
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # The receiving side sees the same failure and reports it.
        return


class _ThreadStdin(trio.abc.ReceiveStream):
    """File descriptor 0, read in a worker thread (see the module docstring)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await trio.to_thread.run_sync(
            os.read, sys.stdin.fileno(), max_bytes or _READ_SIZE, abandon_on_cancel=True
        )

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()  # fd 0 belongs to the process


class _ThreadStdout(trio.abc.SendStream):
    """File descriptor 1, written in a worker thread."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await trio.to_thread.run_sync(_write_all, sys.stdout.fileno(), bytes(data))
        except BrokenPipeError:
            raise CLIError("standard output was closed before all data was written") from None

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()  # fd 1 belongs to the process


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ------------------------------------------------------------------- summary


@dataclass(frozen=True)
class _Certificate:
    subject: str
    names: str
    not_after: str
    issuer: str


def _summary(stream: Stream, shown: str, arguments: argparse.Namespace) -> Iterator[str]:
    cipher = stream.cipher()
    statistics = stream.statistics()
    duration = statistics.handshake_duration or 0.0
    yield f"connected to {shown}, server name {stream.server_hostname}"
    yield f"  protocol   {stream.version()}"
    yield f"  cipher     {cipher[0]} ({cipher[2]} bits)" if cipher else "  cipher     none"
    yield f"  ALPN       {stream.selected_alpn_protocol() or '(none agreed)'}"
    yield f"  resumed    {'yes' if stream.session_reused else 'no'}"
    yield f"  handshake  {duration * 1000:.1f} ms"
    if arguments.cert is not None:
        yield f"  client certificate  {arguments.cert}"
    if arguments.insecure:
        trust = "NOT verified (--insecure)"
    else:
        trust = f"verified against {arguments.cafile or 'the system CAs'}"
    chain, whole = _chain(stream, verified=not arguments.insecure)
    yield f"  certificate chain, server first, {trust}:"
    for index, certificate in enumerate(chain):
        yield f"    {index} subject  {certificate.subject}"
        if certificate.names:
            yield f"      names    {certificate.names}"
        yield f"      expires  {certificate.not_after}"
        yield f"      issuer   {certificate.issuer}"
    if not whole:
        yield "    (the rest of the chain is shown from Python 3.13 on)"


def _chain(stream: Stream, *, verified: bool) -> tuple[list[_Certificate], bool]:
    """The peer's certificates, and whether that is the whole chain."""
    # SSLObject.get_verified_chain()/get_unverified_chain() are new in Python
    # 3.13 and give DER bytes (the _ssl.Certificate objects behind them stay
    # private: python/cpython#109109).
    method = getattr(
        stream.ssl_object, "get_verified_chain" if verified else "get_unverified_chain", None
    )
    if method is not None:
        return [_from_der(bytes(der)) for der in method()], True
    info = stream.getpeercert()
    if info:
        return [_from_info(info)], False
    der = stream.getpeercert(binary_form=True)
    if der is None:
        return [], True
    return [_from_der(der)], False


def _from_info(info: Mapping[str, Any]) -> _Certificate:
    """From the dict getpeercert() gives (only for a verified certificate)."""

    def name(rdns: Any) -> str:
        pairs = [pair for rdn in rdns for pair in rdn]
        return ", ".join(f"{_SHORT_NAMES.get(key, key)}={value}" for key, value in pairs)

    names = ", ".join(f"{kind}:{value}" for kind, value in info.get("subjectAltName", ()))
    return _Certificate(
        subject=name(info.get("subject", ())),
        names=names,
        not_after=_expiry(str(info.get("notAfter", ""))),
        issuer=name(info.get("issuer", ())),
    )


def _from_der(der: bytes) -> _Certificate:
    """Decode a certificate from DER, if the cryptography package is here."""
    fingerprint = hashlib.sha256(der).hexdigest()
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - trustme brings it along
        return _Certificate(
            f"(sha256 {fingerprint}; pip install cryptography to decode it)",
            "",
            "unknown",
            "unknown",
        )
    certificate = x509.load_der_x509_certificate(der)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = ""
    else:
        dns = [f"DNS:{value}" for value in san.get_values_for_type(x509.DNSName)]
        ips = [f"IP Address:{value}" for value in san.get_values_for_type(x509.IPAddress)]
        names = ", ".join(dns + ips)
    expiry = certificate.not_valid_after_utc
    # getpeercert()'s format (OpenSSL's): the day padded with a space.
    not_after = f"{expiry:%b} {expiry.day:2d} {expiry:%H:%M:%S %Y} GMT"
    return _Certificate(
        subject=", ".join(a.rfc4514_string() for a in certificate.subject),
        names=names,
        not_after=_expiry(not_after),
        issuer=", ".join(a.rfc4514_string() for a in certificate.issuer),
    )


def _expiry(not_after: str) -> str:
    try:
        days = (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400
    except ValueError:
        return not_after
    return f"{not_after} (expired)" if days < 0 else f"{not_after} (in {days:.0f} days)"
