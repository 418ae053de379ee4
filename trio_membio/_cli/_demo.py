"""``python -m trio_membio demo``: a TLS server and client over loopback TCP in one nursery.

It shows the whole life of a connection (handshake, data both ways at once, a
TLS 1.3 half-close, close) and prints what a person wants to see about it on
standard output. With ``--trace``, both streams also print every transfer
between transport, BIOs, SSLObject and application on stderr, each line
labelled ``client`` or ``server``.
"""

from __future__ import annotations

import argparse
import ssl
import time
from typing import TYPE_CHECKING, TextIO

import trio

from .._stream import MemoryBIOStream, PeerCertificate
from .._trace import TraceCallback
from ._common import Console, Tracer, add_trace_option, throwaway_authority

if TYPE_CHECKING:
    from ._common import Commands

__all__ = ["add_parser", "check", "run", "run_demo"]

_PAYLOAD_SIZE = 1024 * 1024
_ALPN = "demo/1"


def _throwaway_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    authority, leaf = throwaway_authority(
        "localhost",
        "127.0.0.1",
        missing=SystemExit(
            "the demo needs trustme for its throwaway certificate authority: "
            "pip install 'trio-membio[demo]'"
        ),
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_context)
    server_context.set_alpn_protocols([_ALPN])
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    client_context.set_alpn_protocols([_ALPN])
    return server_context, client_context


def _describe(certificate: PeerCertificate | None) -> tuple[str, str, str]:
    """Subject, names and expiry of a decoded certificate, for printing."""
    if not certificate:
        return "(no certificate)", "", ""
    subject: list[str] = []
    for rdn in certificate.get("subject", ()):
        subject.extend(f"{pair[0]}={pair[1]}" for pair in rdn if isinstance(pair, tuple))
    names = [
        f"{pair[0]}:{pair[1]}"
        for pair in certificate.get("subjectAltName", ())
        if isinstance(pair, tuple)
    ]
    return ", ".join(subject), ", ".join(names), str(certificate.get("notAfter", ""))


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    """Add the ``demo`` command and its options to ``commands``."""
    parser = commands.add_parser(
        "demo",
        help="run a TLS server and client over loopback TCP and show the connection",
        description="Run a TLS server and client over loopback TCP in one process: "
        "handshake, 1 MiB echoed while it is sent, a TLS 1.3 half-close, close.",
    )
    add_trace_option(parser)
    return parser


def check(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The demo's options need no cross-checks."""


async def run(
    arguments: argparse.Namespace,
    console: Console,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the demo on the console; return 0."""
    await run_demo(console.out, trace_to=console.err if arguments.trace else None)
    return 0


def _tracers(err: TextIO | None) -> tuple[TraceCallback | None, TraceCallback | None]:
    """The client's and the server's trace callbacks, on one clock (None, None: no trace)."""
    if err is None:
        return None, None
    start = time.monotonic()
    return Tracer(err, lambda: "client: ", start), Tracer(err, lambda: "server: ", start)


async def _echo_server(
    listener: trio.SocketListener,
    context: ssl.SSLContext,
    out: TextIO,
    trace: TraceCallback | None,
) -> None:
    transport = await listener.accept()
    stream = MemoryBIOStream(transport, context, server_side=True, trace=trace)
    received = 0
    async with stream:
        while data := await stream.receive_some():
            received += len(data)
            await stream.send_all(data)
        # The client half-closed; we can still answer.
        await stream.send_all(f"server: got {received} bytes, bye".encode())
    print(f"server  closed after echoing {received:,} bytes", file=out)


async def run_demo(out: TextIO, *, trace_to: TextIO | None = None) -> None:
    """Run the demo, printing to ``out``, and the trace of both streams to ``trace_to``."""
    server_context, client_context = _throwaway_contexts()
    client_trace, server_trace = _tracers(trace_to)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    host, port = listener.socket.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_echo_server, listener, server_context, out, server_trace)
        transport = await trio.open_tcp_stream(host, port)
        client = MemoryBIOStream(
            transport,
            client_context,
            server_hostname="localhost",
            trace=client_trace,
        )
        await client.do_handshake()
        cipher = client.cipher()
        subject, names, expiry = _describe(client.getpeercert())
        print(f"connected to {host}:{port} over TCP", file=out)
        print(f"  protocol  {client.version()}", file=out)
        print(f"  cipher    {cipher[0] if cipher else None}", file=out)
        print(f"  ALPN      {client.selected_alpn_protocol()}", file=out)
        print(f"  server    {subject}", file=out)
        print(f"            names {names}; valid until {expiry}", file=out)
        print(f"  resumed   {client.session_reused}", file=out)

        payload = bytes(range(256)) * (_PAYLOAD_SIZE // 256)
        echoed = bytearray()

        async def send_then_half_close() -> None:
            await client.send_all(payload)
            await client.send_eof()

        async with trio.open_nursery() as conversation:
            # One task sends while this one receives: TLS under both.
            conversation.start_soon(send_then_half_close)
            while data := await client.receive_some():
                echoed += data
        reply = bytes(echoed[len(payload) :])
        if echoed[: len(payload)] != payload:
            raise RuntimeError("the echo differs from what was sent")
        print(f"client  sent {len(payload):,} bytes, then send_eof()", file=out)
        print(
            f"client  received {len(echoed):,} bytes: the echo, then {reply.decode()!r}", file=out
        )
        await client.aclose()
        print("client  closed", file=out)
    listener.socket.close()
