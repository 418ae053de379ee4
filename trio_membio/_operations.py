"""The loops behind MemoryBIOStream's operations.

MemoryBIOStream's public methods check the stream's state, decide who drives
the handshake and change the lifecycle; these functions do the TLS work of
one call, on the stream's :class:`~trio_membio._transport.Transport` (its
engine, lanes and funnel), and report whether they yielded:

- :func:`drive_handshake` runs the handshake to its end (one driver at a
  time: the stream sees to that).

- :func:`handle_read_output` is the rare part of receive_some() (whose loop
  is inline there, on the hottest path): a read that also queued TLS output
  (a renegotiation or post-handshake reply) hands its plaintext out first,
  and the output goes to a socket without waiting (the rest with the next
  call that waits for the peer) or, on other transports, from the stream's
  own task (transport rule 5).
- :func:`send_chunked` sends what send_all()'s express lane (one chunk,
  encrypted and sent at once, inline in send_all()) did not finish, a window
  at a time, so memory does not grow with the payload; its rules are
  numbered there.
- :func:`shut_down_both_ways` is unwrap()'s exchange of close_notify alerts.
- :func:`authenticate_client` is a server's TLS 1.3 post-handshake request
  for the client's certificate.
"""

from __future__ import annotations

import ssl
from typing import Final

import trio
from trio.lowlevel import cancel_shielded_checkpoint

from ._engine import TLSTruncationError
from ._errors import UnreadDataError
from ._state import EOF_SENT, Stop, StopKind
from ._transport import SEND_HALF_WRITTEN, SET_ASIDE_LIMIT, TRUNCATED, Transport

__all__ = [
    "PLAINTEXT_CHUNK",
    "YIELD_EVERY",
    "authenticate_client",
    "drive_handshake",
    "handle_read_output",
    "send_chunked",
    "shut_down_both_ways",
]

#: send_all() encrypts at most this much plaintext before sending it, so the
#: ciphertext held in memory stays under SEND_WINDOW whatever the payload size.
PLAINTEXT_CHUNK: Final = 65536
#: When the socket takes every chunk at once, send_all() still yields to
#: other tasks (and lets cancellation in) after this much plaintext.
YIELD_EVERY: Final = 262144


def handle_read_output(io: Transport, data: bytes | None) -> None:
    """A read queued TLS output: send it, or give up on it (the rare part of receive_some()).

    It is handshake messages of a renegotiation or a post-handshake reply,
    which the peer waits for, so cutting them short breaks everything. Sent
    by the send lane's holder if there is one (it sends everything queued),
    else owed (transport rule 5): tried on the socket at once, or sent by the
    stream's own task. Raises the stream's failure if that leaves nothing to
    return (``data``, the read's result, is handed out first).
    """
    send_stop = io.send_stop
    if send_stop is not None:
        io.engine.data_to_send()  # it can never be sent
        if send_stop.kind is StopKind.BROKEN:
            # The peer would wait for it forever, and we for the peer.
            io.stop(
                Stop(
                    StopKind.BROKEN,
                    "the peer started a TLS exchange (a renegotiation or a "
                    "post-handshake message) that needs an answer, and this "
                    f"stream can no longer send: {send_stop.message}",
                    send_stop.cause,
                )
            )
            if not data:
                io.raise_closed_or_broken()
    else:
        io.handshake_output_queued = True
        if io.fast_path is not None:
            io.send_owed_now()
            if io.receive_stop is not None and not data:
                io.raise_closed_or_broken()
        else:
            io.send_owed_in_background()


async def send_chunked(io: Transport, data: bytes | bytearray | memoryview, written: int) -> None:
    """Send ``data[written:]`` a window at a time (rule 3).

    The loop's rules:

    1. Encrypt at most PLAINTEXT_CHUNK, send it, then encrypt the next.
    2. A write that needs the peer first (a TLS 1.2 renegotiation) sends
       what is queued, lets go of the send lane and receives until the
       renegotiation has moved, then retries with the same bytes.
    3. Once any of ``data`` is encrypted, a cancellation (while waiting
       for a renegotiation, or between chunks) stops sending: part of the
       data may be on the wire, and a retry would duplicate it.
    """
    engine = io.engine
    view = memoryview(data)
    if view.itemsize != 1 or not view.c_contiguous:
        view = view.cast("B")
    view = view[written:]
    yielded = await io.acquire_send_lane()
    lane_held = True
    sent_since_yield = 0
    try:
        while view:
            chunk = view if len(view) <= PLAINTEXT_CHUNK else view[:PLAINTEXT_CHUNK]
            try:
                consumed = engine.write(chunk)
            except ssl.SSLError as exc:
                await io.fail(exc, "TLS error while sending", lane_held=True)
            if consumed is None:
                # A renegotiation's handshake messages are queued (rule 2).
                io.handshake_output_queued = True
                await io.send_queued_holding_lane()
                io.release_send_lane()
                lane_held = False
                try:
                    await _wait_for_renegotiation(io)
                    await io.acquire_send_lane()
                except BaseException:
                    # None of this chunk was consumed, so the next send may
                    # carry other bytes; but if earlier ones were, the
                    # caller cannot tell what went out (rule 3).
                    engine.abandon_write()
                    if written:
                        io.break_after(None, SEND_HALF_WRITTEN, whole=False)
                    raise
                lane_held = True
                yielded = True
                continue
            view = view[consumed:]
            written += consumed
            io.plaintext_sent += consumed
            if await io.send_queued_holding_lane():
                yielded = True
                sent_since_yield = 0
            else:
                sent_since_yield += consumed
                if view and sent_since_yield >= YIELD_EVERY:
                    # The socket took everything at once: let other tasks
                    # run and cancellation in, as SocketStream does.
                    sent_since_yield = 0
                    await _checkpoint_between_chunks(io)
                    yielded = True
    finally:
        if lane_held:
            io.release_send_lane()
    if not yielded:
        await cancel_shielded_checkpoint()


async def _wait_for_renegotiation(io: Transport) -> None:
    """Let the peer's renegotiation reply in, while a write waits for it.

    Application data that arrives first is set aside in the engine for
    receive_some() (engine rule 7). Past a limit, wait for the receiving
    task to take it rather than read more: memory stays bounded even if
    the peer floods us meanwhile.
    """
    if io.engine.buffered_plaintext >= SET_ASIDE_LIMIT:
        await io.wait_for_change()
    else:
        await io.receive_ciphertext()


async def _checkpoint_between_chunks(io: Transport) -> None:
    try:
        await trio.lowlevel.checkpoint()
    except trio.Cancelled:
        # Part of the caller's data went out: the same as a half-written send.
        io.break_after(None, SEND_HALF_WRITTEN, whole=False)
        raise


async def drive_handshake(io: Transport) -> bool:
    """Run the handshake until it has finished and its final flight is sent."""
    engine = io.engine
    counters = io
    yielded = False
    if counters.handshake_started is None:
        counters.handshake_started = trio.current_time()
    offload = io.handshake_offload
    while True:
        try:
            if offload is None:
                finished = engine.do_handshake()
            else:
                finished = await offload.do_handshake(engine)
        except ssl.SSLError as exc:
            await io.fail(exc, "TLS handshake failed")
        if engine.bytes_to_send:
            # Until these bytes are out, a send cut short breaks the whole
            # stream, whoever is sending (transport rule 1).
            io.handshake_output_queued = True
            yielded = await io.send_queued() or yielded
        if finished:
            counters.handshake_finished = trio.current_time()
            return yielded
        yielded = await io.receive_ciphertext() or yielded


async def shut_down_both_ways(io: Transport, yielded: bool) -> tuple[bool, bool]:
    """Send close_notify and wait for the peer's: (whether it came, whether we yielded).

    Stops early, without the peer's close_notify, once SET_ASIDE_LIMIT bytes
    of the peer's data wait unreceived: a peer that goes on sending data
    instead cannot fill memory.
    """
    engine = io.engine
    while True:
        # After send_eof() our close_notify is out; after a broken send
        # nobody knows whether it is, so a two-way shutdown is off.
        io.check_sending(closing=True)
        try:
            finished = engine.unwrap()
        except TLSTruncationError as exc:
            await io.fail(exc, TRUNCATED)
        except ssl.SSLError as exc:
            await io.fail(exc, "TLS error during unwrap()")
        io.stop(EOF_SENT, receiving=False)  # our close_notify is queued
        if engine.bytes_to_send:
            yielded = await io.send_queued(closing=True) or yielded
        if finished or engine.buffered_plaintext >= SET_ASIDE_LIMIT:
            return finished, yielded
        yielded = await io.receive_ciphertext() or yielded


async def authenticate_client(io: Transport) -> bool:
    """Request the client's certificate and wait for its verified answer; whether we yielded.

    Application data the client sends meanwhile is kept for receive_some(),
    up to SET_ASIDE_LIMIT bytes: past that, raise rather than buffer more.
    """
    engine = io.engine
    try:
        engine.request_client_certificate()
    except ssl.SSLError as exc:
        if engine.failure is None:  # OpenSSL refused; the connection is unaffected
            raise RuntimeError(
                "the client did not offer TLS 1.3 post-handshake authentication (its "
                "context needs post_handshake_auth = True): "
                f"{exc.reason or exc}"
            ) from exc
        await io.fail(exc, "TLS post-handshake authentication failed")
    yielded = False
    while True:
        if engine.bytes_to_send:
            io.handshake_output_queued = True  # the CertificateRequest
            yielded = await io.send_queued() or yielded
        try:
            if engine.client_certificate_received():
                return yielded
        except TLSTruncationError as exc:
            await io.fail(exc, TRUNCATED)
        except ssl.SSLError as exc:
            await io.fail(exc, "TLS post-handshake authentication failed")
        if engine.buffered_plaintext >= SET_ASIDE_LIMIT:
            raise UnreadDataError(
                f"the client sent {engine.buffered_plaintext} bytes of data before answering "
                "the certificate request: receive it with receive_some(), then call "
                "request_client_certificate() again (the request stays open)"
            )
        yielded = await io.receive_ciphertext() or yielded
