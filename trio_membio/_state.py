"""Every state a MemoryBIOStream can be in, as data.

A stream is described by three things, and nothing else:

- its **lifecycle** (:class:`Lifecycle`): before the handshake, while a task
  drives it, open, or closed;
- for each **direction**, sending and receiving, either ``None`` (usable) or a
  :class:`Stop` saying why it can no longer be used (the stream was closed,
  our close_notify is queued, or it broke, with the cause);
- the **counters** behind ``statistics()``, which never decide anything
  (kept by the :class:`~trio_membio._transport.Transport`, whose I/O they
  count).

The stops change only in :meth:`Transport.stop
<trio_membio._transport.Transport.stop>`, whose precedence rules are the
whole story of how an outcome (a transport failure, a TLS error, a
cancellation half-way through a write, aclose()) becomes a state. The
lifecycle changes only in ``MemoryBIOStream._enter()``.
"""

from __future__ import annotations

import enum
from typing import NoReturn

import trio

__all__ = ["Lifecycle", "Stop", "StopKind"]


class Lifecycle(enum.Enum):
    """Where a stream is in its life, as far as the handshake and closing go."""

    #: The handshake has not finished, and no task is driving it.
    HANDSHAKE_PENDING = "handshake pending"
    #: A task is driving the handshake; others wait for its outcome.
    HANDSHAKING = "handshaking"
    #: The handshake finished (its final flight is on the wire, or queued
    #: behind another task's send, which sends it first).
    OPEN = "open"
    #: aclose() ended the stream.
    CLOSED = "closed"
    #: unwrap() ended the TLS layer and handed the transport back.
    UNWRAPPED = "unwrapped"


class StopKind(enum.IntEnum):
    """Why a direction stopped; a higher kind replaces a lower one, never the reverse."""

    #: send_eof() or unwrap() queued our close_notify: no more data may be sent.
    EOF_SENT = 1
    #: Something failed; the direction is unusable.
    BROKEN = 2
    #: aclose() or unwrap(): everything raises ClosedResourceError.
    CLOSED = 3


class Stop:
    """Why one direction of a stream can no longer be used (immutable)."""

    __slots__ = ("cause", "kind", "message")

    kind: StopKind
    message: str
    cause: BaseException | None

    def __init__(self, kind: StopKind, message: str, cause: BaseException | None = None) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "cause", cause)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Stop is immutable")

    def __repr__(self) -> str:
        return f"Stop({self.kind.name}, {self.message!r}, cause={self.cause!r})"

    def raise_error(self) -> NoReturn:
        """Raise what a call on the stopped direction raises."""
        if self.kind is StopKind.BROKEN:
            raise trio.BrokenResourceError(self.message) from self.cause
        raise trio.ClosedResourceError(self.message)


CLOSED: Stop = Stop(StopKind.CLOSED, "this MemoryBIOStream was closed")
EOF_SENT: Stop = Stop(
    StopKind.EOF_SENT, "send_eof() or unwrap() was called: this stream can no longer send"
)
