"""The transport lanes under MemoryBIOStream: who may touch the transport, when.

Several tasks may be inside one stream at once (one sending, one receiving,
aclose() from anywhere), sharing one engine and one transport. This module
holds the machinery the public methods in ``_stream.py`` are built from:

1. **Lanes.** At most one task uses each direction of the transport at a time:
   ``_sending`` guards sending (and ``wait_send_all_might_not_block``),
   ``_receiving`` guards receiving. A lane is a flag, not a lock, so the
   uncontended path costs no scheduler round trip; waiters park on
   ``_changed``, an event set whenever a lane, the handshake or the stream's
   state changes, and then look again.

2. **The outgoing BIO is the send queue.** Ciphertext is only taken out of the
   BIO by the task holding the send lane, which sends everything it finds
   before releasing the lane. So bytes reach the wire in the order OpenSSL
   produced them, whoever produced them, and a task that queued ciphertext
   while another holds the send lane may go on without waiting: the holder
   sends it. The one holder that may leave early, a cancelled
   ``wait_send_all_might_not_block``, first sends what others queued
   (bounded, shielded), like an alert.

3. **Receive counting.** A task that needs ciphertext while another task is
   already blocked receiving does not receive too: it waits, and when the
   count of completed receives has moved it retries its TLS operation with
   what the other task fed in.

4. **Breakage is per direction where TLS allows it.** A send cut short
   (cancelled, or failed) breaks the sending direction only, unless handshake
   bytes were among what was queued: then the peer can never finish the
   handshake and the whole stream is broken. TLS errors and failed receives
   break the whole stream. A fatal alert is sent before a TLS error is
   raised, best effort and bounded.

5. **Transport I/O reports whether it yielded**, so the public methods add
   the one checkpoint trio's contract requires only when nothing else was one.
   A trio.SocketStream transport is driven through its socket directly
   (``_socket_fast_path.py``); any other through its methods.

6. **A full socket never stops a receive from reading.** Output that a read
   queued (a TLS 1.2 renegotiation reply) is sent, on the socket fast path,
   as far as the socket takes it at once; the rest stays queued. A receive
   that must then wait for the transport waits for the socket to become
   readable *or* writable, sending more when it can. Waiting only to write
   would deadlock with a peer that is itself blocked writing to us (a
   full-duplex echo), and waiting only to read, with a peer waiting for the
   reply. A transport with no try-send (anything but the fast path) gets the
   same guarantee from a second task: while the receive sends the output,
   it goes on feeding the engine what arrives, up to SET_ASIDE_LIMIT bytes of
   ciphertext, and decrypts it once the send is done. That task is cancelled
   when the send is done, so this relies on the transport's receive_some()
   losing nothing when cancelled, as trio's streams promise (trio.SSLStream
   only outside its own handshake or renegotiation).
"""

from __future__ import annotations

import contextlib
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

import trio

from ._connection_info import TLSConnectionInfo
from ._engine import TLSEngine, TLSTruncationError
from ._errors import describe_tls_error
from ._socket_fast_path import SocketFastPath, fast_path_for
from ._statistics import ConnectionEnd

__all__ = ["TransportLanes"]

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

#: How much ciphertext one transport receive asks for.
TRANSPORT_RECEIVE_SIZE: Final = 262144
#: The most ciphertext handed to one transport send.
SEND_WINDOW: Final = 262144
#: Seconds a fatal alert, stranded output or an aclose() close_notify may take
#: to be sent.
ALERT_TIMEOUT: Final = 1.0
#: How much application data a write waiting on a TLS 1.2 renegotiation may
#: set aside before it waits for receive_some() to take it.
SET_ASIDE_LIMIT: Final = 1048576

TRUNCATED: Final = (
    "TLS stream truncated (pass https_compatible=True only if the protocol on top "
    "detects truncation itself)"
)
HANDSHAKE_HALF_WRITTEN: Final = (
    "the TLS handshake was cancelled while its ciphertext was being written to the "
    "transport; an unknown part of it reached the peer, so this connection cannot "
    "continue: open a new one"
)
SEND_HALF_WRITTEN: Final = (
    "an earlier send on this stream was cancelled while writing ciphertext to the "
    "transport; an unknown part of it reached the peer, so nothing more can be sent "
    "(receiving still works)"
)


class TransportLanes(TLSConnectionInfo):
    """Lane state and transport I/O for one TLS stream (see the module doc)."""

    def __init__(
        self, transport_stream: trio.abc.Stream, engine: TLSEngine, *, https_compatible: bool
    ) -> None:
        super().__init__(engine, https_compatible=https_compatible)
        self._transport_base: trio.abc.Stream = transport_stream
        fast_path = fast_path_for(transport_stream)
        self._transport_send: Callable[[bytes], Awaitable[bool]]
        # With the socket fast path, sends and receives are tried without
        # waiting first (the common case: no coroutine at all).
        self._fast_path = fast_path
        self._try_send: Callable[[bytes | memoryview], int] | None = None
        if fast_path is not None:
            self._transport_send = fast_path.send_all
            self._try_send = fast_path.try_send
        else:
            self._transport_send = self._send_through_transport
        self._closed = False
        # (message, cause) when the whole stream is unusable.
        self._broken: tuple[str, BaseException | None] | None = None
        # (message, cause) when only the sending direction is unusable.
        self._send_broken: tuple[str, BaseException | None] | None = None
        # send_eof() or unwrap() queued our close_notify.
        self._eof_sent = False
        # Handshake ciphertext is waiting in the outgoing BIO (rule 4).
        self._handshake_output_queued = False
        self._sending = False
        self._receiving = False
        self._receive_count = 0
        self._changed: trio.Event | None = None

    async def _receive_ciphertext(self) -> bool:
        """Feed the engine one transport receive (ours or another task's).

        Returns whether this task yielded to the scheduler.
        """
        if self._receiving and await self._wait_for_other_receiver():
            return True
        self._receiving = True
        try:
            data: bytes | bytearray | None
            try:
                fast_path = self._fast_path
                if fast_path is None:
                    data = await self._transport_base.receive_some(TRANSPORT_RECEIVE_SIZE)
                    yielded = True
                else:
                    data = fast_path.try_receive(TRANSPORT_RECEIVE_SIZE)
                    yielded = data is None
                    while data is None:
                        if self._output_waits_for_room():
                            # A read queued output that the socket had no room
                            # for (a TLS 1.2 renegotiation reply). Waiting only
                            # to write could deadlock with a peer that is
                            # itself blocked writing to us, and waiting only to
                            # read, with a peer that waits for that output.
                            await self._wait_to_read_or_write(fast_path)
                            self._send_output_now()
                            if self._broken is not None:
                                break  # raised below, as the stream's own error
                        else:
                            await trio.lowlevel.wait_readable(fast_path.socket)
                        data = fast_path.try_receive(TRANSPORT_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._raise_transport_error(exc, sending=False)
            if data is None:
                self._raise_broken()
            if data:
                self._ciphertext_received += len(data)
                self._engine.receive_data(data)
            else:
                self._engine.receive_eof()
            self._receive_count += 1
        finally:
            self._receiving = False
            if self._changed is not None:
                self._notify_change()
        return yielded

    async def _wait_for_other_receiver(self) -> bool:
        """Wait while another task receives; True if it fed the engine meanwhile."""
        count = self._receive_count
        while self._receiving:
            await self._wait_for_change()
            if self._receive_count != count:
                return True
            self._check_usable()
        return False

    async def _send_through_transport(self, data: bytes) -> bool:
        await self._transport_base.send_all(data)
        return True

    async def _wait_for_renegotiation(self) -> None:
        """Let the peer's renegotiation reply in, while a write waits for it.

        Application data that arrives first is set aside in the engine for
        receive_some() (engine rule 7). Past a limit, wait for the receiving
        task to take it rather than read more: memory stays bounded even if
        the peer floods us meanwhile.
        """
        if self._engine.buffered_plaintext >= SET_ASIDE_LIMIT:
            await self._wait_for_change()
        else:
            await self._receive_ciphertext()

    async def _checkpoint_between_chunks(self) -> None:
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            # Part of the caller's data went out: the same as a half-written send.
            self._end(ConnectionEnd.CANCELLED)
            self._send_broken = (SEND_HALF_WRITTEN, None)
            raise

    async def _acquire_send_lane(self, *, closing: bool = False) -> bool:
        """Take the send lane, waiting for it; return whether this yielded.

        ``closing``: for our own close_notify, which may go out after
        send_eof() or unwrap() has stopped ordinary sending.
        """
        yielded = False
        while self._sending:
            await self._wait_for_change()
            self._check_sending_direction() if closing else self._check_can_send()
            yielded = True
        self._sending = True
        return yielded

    def _release_send_lane(self) -> None:
        self._sending = False
        if self._changed is not None:
            self._notify_change()

    async def _send_queued(self, *, closing: bool = False) -> bool:
        """Send the engine's queued ciphertext, waiting for the send lane.

        Returns whether this task yielded to the scheduler.
        """
        self._check_sending_direction() if closing else self._check_can_send()
        yielded = await self._acquire_send_lane(closing=closing)
        try:
            sent_yielded = await self._send_queued_holding_lane()
        finally:
            self._release_send_lane()
        return yielded or sent_yielded

    def _output_waits_for_room(self) -> bool:
        """Whether queued output (not ours to hold back) waits for a free send lane."""
        return bool(
            self._engine.output_bio.pending
            and not self._sending
            and self._send_broken is None
            and not self._eof_sent
            and not self._closed
        )

    def _send_queued_now(self) -> bool:
        """Fast path: send what the socket takes of the queue now; True if all of it.

        The unsent rest goes back to the front of the queue, in order, to be
        sent by whoever sends next. The caller holds the send lane, or it is
        free (nothing here waits). Transport errors propagate.
        """
        engine = self._engine
        output_bio = engine.output_bio
        try_send = self._try_send
        assert try_send is not None  # the fast path
        while output_bio.pending:
            chunk = engine.data_to_send(SEND_WINDOW)
            sent = try_send(chunk)
            self._ciphertext_sent += sent
            if sent < len(chunk):
                engine.return_unsent(memoryview(chunk)[sent:])
                return False
        # A final handshake flight left by a cancelled driver is out too.
        self._handshake_output_queued = False
        return True

    def _send_output_now(self) -> None:
        """Send what the socket takes of output a read queued (lanes rule 6).

        Called with the send lane free. A failed send breaks the sending
        direction only (rule 4); receiving goes on.
        """
        if not self._output_waits_for_room():
            return
        try:
            self._send_queued_now()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # Recorded, not raised: the caller hands out plaintext it already
            # holds first, and reports the failure after. (A stream closed
            # meanwhile raises ClosedResourceError.)
            with contextlib.suppress(trio.BrokenResourceError):
                self._raise_transport_error(exc, sending=True)

    async def _wait_to_read_or_write(self, fast_path: SocketFastPath) -> None:
        """Wait until the socket is readable or writable, holding the send lane.

        Holding the lane keeps any other task from waiting to write on the
        socket meanwhile (trio allows one writer-waiter per socket).
        """
        self._sending = True
        try:
            async with trio.open_nursery() as nursery:

                async def wait(waiter: Callable[[trio.socket.SocketType], Awaitable[None]]) -> None:
                    await waiter(fast_path.socket)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wait, trio.lowlevel.wait_readable)
                nursery.start_soon(wait, trio.lowlevel.wait_writable)
            return
        except BaseExceptionGroup as group:
            # Raise what one wait would have (ClosedResourceError if the
            # socket was closed, else Cancelled), below: outside this handler,
            # so that it is not chained to the group that holds it.
            leaf = _first_leaf(group)
            del group
        finally:
            self._release_send_lane()
        raise leaf

    async def _send_output_of_receive(self) -> bool:
        """Send what a read queued, reading on meanwhile; the send lane must be free.

        Used where the transport has no try-send (not the socket fast path).
        While the send waits for the peer, a second task goes on feeding the
        engine what arrives (rule 6), up to SET_ASIDE_LIMIT bytes of
        ciphertext: a peer that writes to us before it reads would otherwise
        wait for us while we wait for it. The caller decrypts it afterwards.

        A send that fails breaks only the sending direction: receiving goes
        on, dropping output that can never be sent (rule 4). Returns whether
        this task yielded (False after a failure: it may have failed before
        yielding).
        """
        self._sending = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_while_sending)
                yielded = await self._send_queued_holding_lane()
                nursery.cancel_scope.cancel()
            return yielded
        except BaseException as exc:
            # What a lone send or receive would have raised; raised below,
            # outside this handler, so that its own cause stays and it is not
            # chained to the group that holds it.
            failure = _first_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
            del exc
        finally:
            self._release_send_lane()
        if isinstance(failure, trio.BrokenResourceError):
            if self._broken is None or self._engine.buffered_plaintext:
                # Sending failed (rule 4), or receiving failed with plaintext
                # in hand: the caller hands that out first, the failure after.
                return False
            # Receiving failed (perhaps sending too, at the same moment): the
            # stream's own failure, as every later call reports it.
            self._raise_broken()
        raise failure

    async def _receive_while_sending(self) -> None:
        """Feed the engine transport receives until cancelled (or the limit, or the end)."""
        engine = self._engine
        while not engine.transport_ended and engine.buffered_ciphertext < SET_ASIDE_LIMIT:
            await self._receive_ciphertext()
        await trio.sleep_forever()

    async def _send_stranded_output(self) -> None:
        """Before a lane holder leaves on an exception, send what others queued.

        Shielded and bounded like an alert: it runs even while the holder is
        being cancelled, and a deadline stops it from waiting on the peer.
        """
        if not self._engine.bytes_to_send or self._send_broken is not None or self._closed:
            return
        with (
            trio.CancelScope(shield=True, deadline=trio.current_time() + ALERT_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self._send_queued_holding_lane()

    async def _send_queued_holding_lane(self) -> bool:
        """Send everything queued; return whether this task yielded.

        A send cut short leaves an unknown part of the ciphertext on the wire:
        if handshake bytes were among it the whole stream is broken (the peer
        can never finish the handshake), otherwise the sending direction.
        """
        engine = self._engine
        output_bio = engine.output_bio
        yielded = False
        try:
            while output_bio.pending:
                chunk = engine.data_to_send(SEND_WINDOW)
                yielded = await self._transport_send(chunk) or yielded
                self._ciphertext_sent += len(chunk)
        except trio.Cancelled:
            if self._fast_path is not None:
                # The socket says how much of the chunk went out; other
                # transports cannot, so that part goes uncounted there.
                self._ciphertext_sent += len(chunk) - self._fast_path.unsent
            self._end(ConnectionEnd.CANCELLED)
            if self._handshake_output_queued:
                if self._broken is None:
                    self._broken = (HANDSHAKE_HALF_WRITTEN, None)
            else:
                self._send_broken = (SEND_HALF_WRITTEN, None)
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._raise_transport_error(exc, sending=True)
        self._handshake_output_queued = False
        return yielded

    def _raise_broken(self) -> NoReturn:
        """Raise what _check_usable() raises; only after closing or breaking the stream."""
        self._check_usable()
        raise AssertionError("the stream is neither closed nor broken")

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this MemoryBIOStream was closed")
        broken = self._broken
        if broken is not None:
            raise trio.BrokenResourceError(broken[0]) from broken[1]

    def _check_can_send(self) -> None:
        self._check_usable()
        if self._eof_sent:
            raise trio.ClosedResourceError(
                "send_eof() or unwrap() was called: this stream can no longer send"
            )
        broken = self._send_broken
        if broken is not None:
            raise trio.BrokenResourceError(broken[0]) from broken[1]

    def _check_sending_direction(self) -> None:
        self._check_usable()
        broken = self._send_broken
        if broken is not None:
            raise trio.BrokenResourceError(broken[0]) from broken[1]

    async def _wait_for_change(self) -> None:
        event = self._changed
        if event is None:
            event = self._changed = trio.Event()
        await event.wait()
        if self._closed:
            raise trio.ClosedResourceError("this MemoryBIOStream was closed while this task waited")

    def _notify_change(self) -> None:
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    def _raise_transport_error(self, exc: BaseException, *, sending: bool) -> NoReturn:
        """Record a transport failure and raise it as BrokenResourceError.

        A failed receive breaks the stream; a failed send breaks the sending
        direction only, unless handshake bytes were in flight.
        """
        if self._closed:
            raise trio.ClosedResourceError("this MemoryBIOStream was closed") from None
        self._end(ConnectionEnd.TRANSPORT_FAILED)
        message = f"the transport failed while {'sending' if sending else 'receiving'}: {exc!r}"
        if sending and not self._handshake_output_queued:
            if self._send_broken is None:
                self._send_broken = (message, exc)
        elif self._broken is None:
            self._broken = (message, exc)
        raise trio.BrokenResourceError(message) from exc

    async def _fail(self, exc: ssl.SSLError, what: str, *, lane_held: bool = False) -> NoReturn:
        """Record a TLS failure, send the fatal alert (best effort), raise."""
        message = f"{what}: {describe_tls_error(exc)}"
        self._end(
            ConnectionEnd.TRUNCATED if isinstance(exc, TLSTruncationError) else ConnectionEnd.ALERT
        )
        if self._broken is None:
            self._broken = (message, exc)
        engine = self._engine
        if (
            engine.bytes_to_send
            and not self._closed
            and self._send_broken is None
            and (lane_held or not self._sending)
        ):
            # The alert tells the peer why, instead of leaving it hanging.
            # Bounded and shielded: it is sent even if we are being cancelled.
            self._sending = True
            try:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + ALERT_TIMEOUT):
                    alert = engine.data_to_send()
                    await self._transport_send(alert)
                    self._ciphertext_sent += len(alert)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                if not lane_held:
                    self._release_send_lane()
        raise trio.BrokenResourceError(message) from exc


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in ``group`` that is not Cancelled, else the first Cancelled."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return leaves[0]
