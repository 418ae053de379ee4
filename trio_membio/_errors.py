"""Exceptions that are new concepts; stream semantics reuse trio's."""

from __future__ import annotations

import re
import ssl

import trio

__all__ = [
    "HalfCloseNotSupportedError",
    "NeedHandshakeError",
    "UnreadDataError",
    "clean_openssl_text",
    "describe_tls_error",
    "encode_hostname",
]

# Reused so that code written against trio.SSLStream catches the same class.
NeedHandshakeError = trio.NeedHandshakeError


class HalfCloseNotSupportedError(RuntimeError):
    """No longer raised: kept so that code which catches it still imports.

    ``send_eof()`` used to raise it on TLS 1.2. It now sends close_notify on
    every TLS version (see :meth:`MemoryBIOStream.send_eof
    <trio_membio.MemoryBIOStream.send_eof>` for what a strict TLS 1.2 peer
    may do with it), so generic code written against
    :class:`trio.abc.HalfCloseableStream` works whatever the peer chose.
    """


class UnreadDataError(RuntimeError):
    """unwrap() found application data from the peer that was never received.

    Raised once the peer's close_notify has come, or while it has not yet but
    1 MiB of data is waiting (unwrap() stops reading ahead there, so a peer
    that keeps sending cannot fill memory). The data is kept: receive it with
    ``receive_some()`` until that returns ``b""``, then call ``unwrap()``
    again.
    """


def describe_tls_error(exc: ssl.SSLError) -> str:
    """A one-line description of an ssl error for a BrokenResourceError message."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    reason = getattr(exc, "reason", None)
    if exc.args and isinstance(exc.args[-1], str):
        text: str = exc.args[-1]
    else:
        text = str(exc)
    if reason and reason not in text:
        return f"{reason}: {text}"
    return text


# "[SSL: WRONG_VERSION_NUMBER] ", "[X509: NO_CERTIFICATE_OR_CRL_FOUND] ", "[SSL] "
# and " (_ssl.c:1006)": where in OpenSSL and CPython an error was raised.
_OPENSSL_DECORATION = re.compile(r"\[[A-Z0-9_]+(?:: [A-Z0-9_]+)?\] |\s*\(_ssl\.c:\d+\)")


def clean_openssl_text(text: str) -> str:
    """``text`` without OpenSSL's library/reason codes and CPython's source location.

    ``"TLS handshake failed: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown
    ca (_ssl.c:1006)"`` becomes ``"TLS handshake failed: tlsv1 alert unknown
    ca"``. The decoration helps whoever reads OpenSSL's source, not the user
    of a log or a command line; exception messages keep it.
    """
    return _OPENSSL_DECORATION.sub("", text)


def encode_hostname(hostname: str) -> str:
    """``hostname`` as sent in SNI and checked against certificates: IDNA 2008.

    The same encoding trio uses for every host name it resolves or sends
    (UTS 46 mapping, so capitals are lowered): Python's ssl module would use
    IDNA 2003 and send ``fass.de`` for ``faß.de``, a different host
    (bpo-17305). ASCII names (IP addresses included) pass unchanged.

    Raises:
        ValueError: the name is not a valid internationalised host name.
    """
    try:
        hostname.encode("ascii")
    except UnicodeEncodeError:
        pass
    else:
        return hostname
    import idna  # only for non-ASCII names: most programs never need it loaded

    try:
        return idna.encode(hostname, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"server_hostname {hostname!r} is not a valid host name: {exc}") from exc
