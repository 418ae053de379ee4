"""What a MemoryBIOStream did: byte counts, handshake time and how it ended."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ConnectionEnd", "TLSStatistics"]


class ConnectionEnd(enum.Enum):
    """How a connection ended; the first cause seen wins.

    A cause that breaks only the sending direction (CANCELLED, or
    TRANSPORT_FAILED on a send) counts too, though receiving may go on: it is
    what ended the connection as a two-way channel.
    """

    #: The peer sent close_notify: a clean end of its data.
    CLOSE_NOTIFY = "close_notify received"
    #: The transport ended without close_notify.
    TRUNCATED = "truncated"
    #: A TLS error: an alert we sent (bad certificate, bad record) or received.
    ALERT = "TLS alert"
    #: A send was cancelled after part of its data went out (while writing
    #: ciphertext, or between two chunks of a large send_all()).
    CANCELLED = "cancelled mid-write"
    #: The transport raised an error.
    TRANSPORT_FAILED = "transport failed"
    #: aclose() was called before any of the above.
    CLOSED_LOCALLY = "closed locally"
    #: unwrap() finished the two-way TLS shutdown.
    UNWRAPPED = "unwrapped"


@dataclass(frozen=True)
class TLSStatistics:
    """A snapshot of one stream's activity, from :meth:`MemoryBIOStream.statistics`."""

    #: Application bytes passed to send_all() and encrypted.
    plaintext_sent: int
    #: Application bytes returned by receive_some().
    plaintext_received: int
    #: TLS bytes written to the transport. After a send cancelled half-way,
    #: the part that went out is counted on a trio.SocketStream transport;
    #: other transports cannot say how much of it did, so it is not.
    ciphertext_sent: int
    #: TLS bytes read from the transport.
    ciphertext_received: int
    #: Seconds (trio clock) from the first handshake step to its end; None
    #: until the handshake has finished.
    handshake_duration: float | None
    #: Whether the handshake resumed a session; None before the handshake.
    session_reused: bool | None
    #: The first of the :class:`ConnectionEnd` causes seen (even one that
    #: stops only one direction); None before any of them.
    ended: ConnectionEnd | None
