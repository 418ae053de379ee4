"""Fault-injecting transport wrappers for tests.

Each wrapper forwards to the stream it wraps (:class:`ForwardingStream`) and
overrides only the calls it changes. Wrappers that declare ``send_eof`` are
:class:`trio.abc.HalfCloseableStream`; the others are plain streams on
purpose, so that the stream under test sees a transport without half-close.
"""

from __future__ import annotations

from typing import NoReturn

import trio


class ForwardingStream(trio.abc.Stream):
    """Forwards every call to ``inner``; ``closed`` says whether aclose() was called."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


class HalfCloseableForwardingStream(ForwardingStream, trio.abc.HalfCloseableStream):
    """A :class:`ForwardingStream` that forwards ``send_eof`` too."""

    async def send_eof(self) -> None:
        assert isinstance(self.inner, trio.abc.HalfCloseableStream)
        await self.inner.send_eof()


class RecordingStream(HalfCloseableForwardingStream):
    """Wraps a stream; records each operation, can cancel or corrupt on cue.

    ``cancel_at`` = n cancels ``cancel_scope`` just before the n-th operation
    (0-based) reaches the inner stream, so that operation's checkpoint raises
    Cancelled. ``corrupt_at`` = k flips byte k of everything sent through it.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.operations: list[str] = []
        self.cancel_at: int | None = None
        self.cancel_scope: trio.CancelScope | None = None
        self.corrupt_at: int | None = None
        self.bytes_sent = 0
        self.largest_send = 0

    def _operation(self, name: str) -> None:
        if self.cancel_at == len(self.operations) and self.cancel_scope is not None:
            self.cancel_scope.cancel()
        self.operations.append(name)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._operation("send")
        data = bytes(data)
        self.largest_send = max(self.largest_send, len(data))
        if (
            self.corrupt_at is not None
            and self.bytes_sent <= self.corrupt_at < self.bytes_sent + len(data)
        ):
            index = self.corrupt_at - self.bytes_sent
            data = data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]
        self.bytes_sent += len(data)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        self._operation("wait")
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self._operation("receive")
        return await self.inner.receive_some(max_bytes)


class HalfWritingStream(ForwardingStream):
    """A transport whose send_all delivers half of the data and then hangs."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.half_written = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        half = len(data) // 2
        await self.inner.send_all(data[:half])
        self.half_written = True
        await trio.sleep_forever()


class ResettingStream(ForwardingStream):
    """A transport whose sends and/or receives fail like a reset connection
    once ``reset_sends`` / ``reset_receives`` is set."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.reset_sends = False
        self.reset_receives = False

    @staticmethod
    async def _reset() -> NoReturn:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("connection reset") from ConnectionResetError(104)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.reset_sends:
            await self._reset()
        await self.inner.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.reset_receives:
            await self._reset()
        return await self.inner.receive_some(max_bytes)


class DroppingReceiveStream(HalfCloseableForwardingStream):
    """A transport whose receive_some() loses its data when it is cancelled.

    It takes bytes from the wrapped stream and only then reaches a checkpoint
    (as trio's own test transport PyOpenSSLEchoStream does, and as trio's
    stream contract allows): a receive cancelled there has consumed bytes that
    nobody will ever see. ``dropped`` counts them.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.dropped = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.dropped += len(data)
            raise
        return data


class ControlledTransport(HalfCloseableForwardingStream):
    """Wraps a stream; the test decides when its sends and waits proceed.

    ``wait_gate`` holds wait_send_all_might_not_block(), ``send_gate`` holds
    send_all() before it delivers anything, and send_all() number
    ``half_write_at`` (counting from 1) delivers half of its data, then hangs.
    """

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        super().__init__(inner)
        self.wait_gate = opened()
        self.send_gate = opened()
        self.half_write_at: int | None = None
        self.sends = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends += 1
        await self.send_gate.wait()
        if self.sends == self.half_write_at:
            await self.inner.send_all(data[: len(data) // 2])
            await trio.sleep_forever()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.wait_gate.wait()
        await self.inner.wait_send_all_might_not_block()


def opened() -> trio.Event:
    event = trio.Event()
    event.set()
    return event
