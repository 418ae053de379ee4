"""The floor: TLS on trio with no stream layer at all, to show what a TLS stream could reach.

:class:`FloorConn` is the least a TLS stream on trio has to do for these
workloads: an ``ssl.SSLObject`` over two memory BIOs, the socket's descriptor
read and written directly (``os.read``/``os.write``, waiting with
``trio.lowlevel.wait_readable``/``wait_writable``) or the transport's own
``send_all``/``receive_some`` over memory_stream_pair, and one checkpoint per
call (cancellation checked first, one schedule point) as trio's contract
asks. It keeps none of a real stream's promises: no conflict detection, no
cancellation safety, no error translation or truncation policy, no handshake
or renegotiation bookkeeping. It is not for use; it is the benchmark's oracle.

Its ratio to trio.SSLStream is about the highest any TLS stream of this
design (256 KiB transport reads, a read tried before waiting, TLS 1.3 session
tickets sent with the first data) can show in the same run: same sockets, same
``open_tcp_stream``, same OpenSSL work, same scheduler. It is measured with
the same noise as the others, so a target above its median was out of reach
in that run, not necessarily in every run.
"""

from __future__ import annotations

import contextlib
import os
import ssl

import trio
from bench_common import HOSTNAME
from bench_trio import Conn, Handshaking, TLSImpl

__all__ = ["FloorConn", "FloorImpl"]

RECEIVE_SIZE = 262144


class FloorConn:
    """send_all / receive_some / aclose over an SSLObject, with nothing else."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self.transport = transport
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else HOSTNAME,
            session=session,
        )
        self.socket = transport.socket if isinstance(transport, trio.SocketStream) else None
        # A TLS 1.3 server's session tickets, until the first send.
        self.held = b""

    # ------------------------------------------------------------ transport

    async def _flush(self) -> bool:
        """Send what the SSLObject queued; return whether this yielded."""
        if not self.outgoing.pending:
            return False
        data = self.outgoing.read()
        if self.held:
            data = self.held + data
            self.held = b""
        sock = self.socket
        if sock is None:
            await self.transport.send_all(data)
            return True
        sent = os.write(sock.fileno(), data)
        if sent == len(data):
            return False
        view = memoryview(data)[sent:]
        while view:
            await trio.lowlevel.wait_writable(sock)
            view = view[os.write(sock.fileno(), view) :]
        return True

    async def _fill(self) -> bool:
        """Feed one transport receive into the incoming BIO; return whether this yielded."""
        sock = self.socket
        yielded = True
        if sock is None:
            data = await self.transport.receive_some(RECEIVE_SIZE)
        else:
            try:
                data = os.read(sock.fileno(), RECEIVE_SIZE)
                yielded = False
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                data = os.read(sock.fileno(), RECEIVE_SIZE)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return yielded

    # --------------------------------------------------------------- stream

    async def do_handshake(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        yielded = False
        while True:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                yielded = await self._flush() or yielded
                yielded = await self._fill() or yielded
            else:
                break
        if self.ssl_object.server_side and self.ssl_object.version() == "TLSv1.3":
            # The session tickets go out with the first data, in one write,
            # as trio.SSLStream and MemoryBIOStream send them.
            self.held = self.outgoing.read()
        else:
            yielded = await self._flush() or yielded
        if not yielded:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.ssl_object.write(data)
        if not await self._flush():
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        ssl_object = self.ssl_object
        yielded = False
        if not self.incoming.pending and not ssl_object.pending():
            # Nothing to decrypt: go to the transport without an SSLWantReadError.
            yielded = await self._fill()
        while True:
            try:
                data = ssl_object.read(max_bytes)
            except ssl.SSLWantReadError:
                yielded = await self._fill() or yielded
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            break
        if self.outgoing.pending:  # TLS 1.3 post-handshake messages
            yielded = await self._flush() or yielded
        parts = [data]
        received = len(data)
        while data and received < max_bytes and self.incoming.pending:
            try:
                more = ssl_object.read(max_bytes - received)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not more:  # close_notify: what follows it stays unread
                break
            parts.append(more)
            received += len(more)
        if not yielded:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        with contextlib.suppress(ssl.SSLError):
            self.ssl_object.unwrap()  # queues close_notify (behind any held tickets)
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._flush()
        await self.transport.aclose()


class FloorImpl(TLSImpl):
    """The trio floor: the plain trio transports with a :class:`FloorConn` on top."""

    def wrap(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        session: ssl.SSLSession | None = None,
    ) -> Handshaking:
        return FloorConn(transport, context, server_side=server_side, session=session)

    def cipher(self, conn: Conn) -> tuple[str | None, str | None]:
        assert isinstance(conn, FloorConn)
        cipher = conn.ssl_object.cipher()
        return (cipher[0] if cipher else None), conn.ssl_object.version()

    def session(self, conn: Conn) -> tuple[ssl.SSLSession | None, bool]:
        assert isinstance(conn, FloorConn)
        return conn.ssl_object.session, conn.ssl_object.session_reused
