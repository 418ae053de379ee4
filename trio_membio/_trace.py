"""Make the memory-BIO data flow visible: every transfer, with its size.

Ciphertext flows transport -> incoming BIO -> SSLObject -> application, and
plaintext application -> SSLObject -> outgoing BIO -> transport. A trace
callback receives one :class:`TraceEvent` per hop. Tracing costs nothing when
off: the stream then uses the plain engine, and :class:`TracingEngine` (a
subclass that measures the BIOs around each engine call) only when a callback
is given.
"""

from __future__ import annotations

import enum
import logging
import ssl
from collections.abc import Callable
from typing import NamedTuple

from ._engine import TLSEngine

__all__ = ["Stage", "TraceCallback", "TraceEvent", "TracingEngine", "log_trace_event"]

trace_logger = logging.getLogger("trio_membio.trace")


class Stage(enum.Enum):
    """A place bytes pass through."""

    TRANSPORT = "transport"
    INCOMING_BIO = "incoming BIO"
    SSL_OBJECT = "SSLObject"
    OUTGOING_BIO = "outgoing BIO"
    APPLICATION = "application"


class TraceEvent(NamedTuple):
    """``size`` bytes moved from ``source`` to ``target`` during ``operation``.

    ``operation`` is one of ``"receive"``, ``"send"``, ``"handshake"``,
    ``"read"``, ``"write"``, ``"close_notify"``, ``"unwrap"``, ``"eof"``,
    ``"unsent"``, ``"unread"``. An ``"eof"`` event has size 0: the transport
    ended. An ``"unsent"`` event (transport -> outgoing BIO) takes back part of
    the ``"send"`` before it: a socket that took only part of the ciphertext,
    whose rest waits in the outgoing BIO to be sent again. (A send cancelled or
    timed out part-way is not taken back: its ``"send"`` counts the whole
    chunk, while :meth:`MemoryBIOStream.statistics` counts, on a socket, only
    what the socket took.) An ``"unread"`` event (application -> SSLObject)
    takes back a ``"read"``: plaintext that could not be returned yet (the same
    receive had TLS output to send first), kept to be read again.
    """

    source: Stage
    target: Stage
    size: int
    operation: str

    def __str__(self) -> str:
        if self.operation == "eof":
            return f"{self.source.value} -> {self.target.value}: end of stream"
        return f"{self.source.value} -> {self.target.value}: {self.size} bytes ({self.operation})"


TraceCallback = Callable[[TraceEvent], None]


def log_trace_event(event: TraceEvent) -> None:
    """A trace callback that logs to the ``trio_membio.trace`` logger at DEBUG."""
    trace_logger.debug("%s", event)


class TracingEngine(TLSEngine):
    """A TLSEngine that reports every transfer through a callback."""

    __slots__ = ("_trace",)

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        trace: TraceCallback,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        super().__init__(
            ssl_context, server_side=server_side, server_hostname=server_hostname, session=session
        )
        self._trace = trace

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        super().receive_data(data)
        self._trace(TraceEvent(Stage.TRANSPORT, Stage.INCOMING_BIO, len(data), "receive"))

    def receive_eof(self) -> None:
        super().receive_eof()
        self._trace(TraceEvent(Stage.TRANSPORT, Stage.INCOMING_BIO, 0, "eof"))

    def data_to_send(self, max_bytes: int = -1) -> bytes:
        data = super().data_to_send(max_bytes)
        if data:
            self._trace(TraceEvent(Stage.OUTGOING_BIO, Stage.TRANSPORT, len(data), "send"))
        return data

    def return_unsent(self, ciphertext: bytes | memoryview) -> None:
        super().return_unsent(ciphertext)
        self._trace(TraceEvent(Stage.TRANSPORT, Stage.OUTGOING_BIO, len(ciphertext), "unsent"))

    def put_back(self, plaintext: bytes) -> None:
        super().put_back(plaintext)
        if plaintext:
            self._trace(TraceEvent(Stage.APPLICATION, Stage.SSL_OBJECT, len(plaintext), "unread"))

    def do_handshake(self) -> bool:
        before = self._buffers()
        try:
            return super().do_handshake()
        finally:
            self._report_buffers("handshake", before)

    def read(self, max_bytes: int) -> bytes | None:
        before = self._buffers()
        data = None
        try:
            data = super().read(max_bytes)
            return data
        finally:
            self._report_buffers("read", before)
            if data:
                self._trace(TraceEvent(Stage.SSL_OBJECT, Stage.APPLICATION, len(data), "read"))

    def write(self, data: bytes | bytearray | memoryview) -> int | None:
        before = self._buffers()
        written = None
        try:
            written = super().write(data)
            return written
        finally:
            if written:
                self._trace(TraceEvent(Stage.APPLICATION, Stage.SSL_OBJECT, written, "write"))
            self._report_buffers("write", before)

    def send_close_notify(self) -> None:
        before = self._buffers()
        try:
            super().send_close_notify()
        finally:
            self._report_buffers("close_notify", before)

    def unwrap(self) -> bool:
        before = self._buffers()
        try:
            return super().unwrap()
        finally:
            self._report_buffers("unwrap", before)

    def _buffers(self) -> tuple[int, int]:
        return self.buffered_ciphertext, self.bytes_to_send

    def _report_buffers(self, operation: str, before: tuple[int, int]) -> None:
        consumed = before[0] - self.buffered_ciphertext
        if consumed > 0:
            self._trace(TraceEvent(Stage.INCOMING_BIO, Stage.SSL_OBJECT, consumed, operation))
        produced = self.bytes_to_send - before[1]
        if produced > 0:
            self._trace(TraceEvent(Stage.SSL_OBJECT, Stage.OUTGOING_BIO, produced, operation))
