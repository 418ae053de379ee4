"""Typed information about a TLS connection, for MemoryBIOStream.

What the handshake decided (version, cipher, ALPN, the peer's certificate,
the session) is read straight from the ``ssl.SSLObject``, as typed methods
and properties rather than ``__getattr__`` forwarding, so type checkers and
readers see exactly what exists. Anything that only means something after the
handshake raises :exc:`NeedHandshakeError` before it, as trio.SSLStream does.
The stream owns one :class:`ConnectionInfo` and forwards its public accessors
to it; the counters behind ``statistics()`` are kept by the stream's
:class:`~trio_membio._transport.Transport`, whose I/O they count.
"""

from __future__ import annotations

import ssl
import warnings
from typing import Literal, overload

from ._errors import NeedHandshakeError
from ._statistics import TLSStatistics
from ._transport import Transport

__all__ = ["ConnectionInfo", "PeerCertificate"]

#: The decoded form of a certificate, as :meth:`ssl.SSLSocket.getpeercert` returns it.
PeerCertificate = dict[
    str, str | tuple[tuple[tuple[str, str], ...], ...] | tuple[tuple[str, str], ...]
]


class ConnectionInfo:
    """What one TLS connection negotiated, and its statistics."""

    __slots__ = ("_io", "https_compatible")

    def __init__(self, io: Transport, *, https_compatible: bool) -> None:
        self._io = io
        #: Whether a missing close_notify is accepted (see MemoryBIOStream).
        self.https_compatible = https_compatible

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The :class:`ssl.SSLObject` doing the TLS work (for inspection)."""
        return self._io.engine.ssl_object

    @property
    def server_side(self) -> bool:
        """Whether this end is the TLS server."""
        return self._io.engine.ssl_object.server_side

    @property
    def server_hostname(self) -> str | None:
        """The host name given for SNI and certificate checking, if any."""
        return self._io.engine.ssl_object.server_hostname

    @property
    def context(self) -> ssl.SSLContext:
        """The :class:`ssl.SSLContext` in use."""
        return self._io.engine.ssl_object.context

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self._io.engine.ssl_object.context = context

    @property
    def session(self) -> ssl.SSLSession | None:
        """The TLS session, to pass as ``session=`` to a later connection.

        On TLS 1.3 the server sends the resumable session after the handshake,
        so read it after the client has received some data. Setting it is
        allowed before the handshake only.
        """
        return self._io.engine.ssl_object.session

    @session.setter
    def session(self, session: ssl.SSLSession | None) -> None:
        self._io.engine.ssl_object.session = session

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session."""
        self.require_handshake("session_reused")
        return self._io.engine.ssl_object.session_reused

    def cipher(self) -> tuple[str, str, int] | None:
        """The negotiated cipher as (name, protocol, secret bits)."""
        self.require_handshake("cipher()")
        return self._io.engine.ssl_object.cipher()

    def version(self) -> str | None:
        """The negotiated protocol version, such as ``"TLSv1.3"``."""
        self.require_handshake("version()")
        return self._io.engine.ssl_object.version()

    def selected_alpn_protocol(self) -> str | None:
        """The ALPN protocol both sides agreed on, or None."""
        self.require_handshake("selected_alpn_protocol()")
        return self._io.engine.ssl_object.selected_alpn_protocol()

    @overload
    def getpeercert(self, binary_form: Literal[False] = False) -> PeerCertificate | None: ...

    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...

    @overload
    def getpeercert(self, binary_form: bool) -> PeerCertificate | bytes | None: ...

    def getpeercert(self, binary_form: bool = False) -> PeerCertificate | bytes | None:
        """The peer's certificate, as :meth:`ssl.SSLSocket.getpeercert` gives it.

        A dict of its decoded fields (only when it was verified), or with
        ``binary_form=True`` its DER bytes; None if the peer sent none.
        """
        self.require_handshake("getpeercert()")
        return self._io.engine.ssl_object.getpeercert(binary_form)

    def shared_ciphers(self) -> list[tuple[str, str, int]] | None:
        """The ciphers both ends offered (server side), as :meth:`ssl.SSLSocket.shared_ciphers`."""
        self.require_handshake("shared_ciphers()")
        return self._io.engine.ssl_object.shared_ciphers()

    def compression(self) -> str | None:
        """The compression algorithm in use, or None (always None with OpenSSL 1.1+)."""
        self.require_handshake("compression()")
        return self._io.engine.ssl_object.compression()

    def selected_npn_protocol(self) -> str | None:
        """The NPN protocol chosen, or None; NPN is deprecated: use ALPN."""
        self.require_handshake("selected_npn_protocol()")
        with warnings.catch_warnings():
            # Python deprecates the call itself; the stream only forwards it.
            warnings.simplefilter("ignore", DeprecationWarning)
            return self._io.engine.ssl_object.selected_npn_protocol()

    def requested_server_name(self) -> str | None:
        """The SNI host name the client asked for (server side), or None."""
        return self._io.engine.requested_server_name

    def get_channel_binding(self, cb_type: str = "tls-unique") -> bytes | None:
        """Channel binding data for ``cb_type`` (RFC 5929), or None."""
        self.require_handshake("get_channel_binding()")
        return self._io.engine.ssl_object.get_channel_binding(cb_type)

    def statistics(self) -> TLSStatistics:
        """Byte counts each way, handshake time, resumption and how it ended."""
        counters = self._io
        engine = counters.engine
        started, finished = counters.handshake_started, counters.handshake_finished
        return TLSStatistics(
            plaintext_sent=counters.plaintext_sent,
            plaintext_received=counters.plaintext_received,
            ciphertext_sent=counters.ciphertext_sent,
            ciphertext_received=counters.ciphertext_received,
            handshake_duration=None if started is None or finished is None else finished - started,
            session_reused=(
                engine.ssl_object.session_reused if engine.handshake_complete else None
            ),
            ended=counters.ended,
        )

    def require_handshake(self, name: str) -> None:
        if not self._io.engine.handshake_complete:
            raise NeedHandshakeError(f"call do_handshake() before {name}")
