"""What every command of the command line shares: console, errors, TLS options, tracing.

Theory of operation
===================

This is the leaf of ``trio_membio._cli``: the command modules (``_demo``,
``_serve``, ``_connect``, ``_http_server``) import it, and it imports none of
them, so the package's imports only point down (a test walks them).

Errors are shown so that the user can act on them:

- Usage errors print one line and raise ``SystemExit(2)``, as argparse does
  (:class:`UsageParser`).
- Failures the user can cause at run time (refused, untrusted, missing file)
  are raised as :class:`CLIError` anywhere in a command and printed as one
  line, ``trio_membio: error: ...``; the exit status is 1.
- Anything else is a bug and keeps its traceback.

OpenSSL's messages reach the user without their "[SSL: CODE]" and
"(_ssl.c:1234)" decoration, through :func:`trio_membio._errors.clean_openssl_text`,
the one function that library and command line share for it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, TextIO, TypeAlias

import trio

from .._engine import TLSTruncationError
from .._errors import clean_openssl_text
from .._trace import TraceEvent

if TYPE_CHECKING:
    import trustme

__all__ = [
    "PROGRAM",
    "CLIError",
    "Console",
    "Tracer",
    "UsageParser",
    "add_tls_options",
    "apply_keylog",
    "check_tls_options",
    "describe_os_error",
    "describe_tls_failure",
    "leaves",
    "load_cafile",
    "load_cert_chain",
    "pin_version",
    "port_number",
    "seconds",
    "show_address",
    "throwaway_authority",
    "tls_hint",
]

PROGRAM = "trio_membio"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _print_line(text: str, file: TextIO) -> bool:
    """Print and flush a line; False if the reader has gone (a broken pipe)."""
    try:
        print(text, file=file, flush=True)
    except BrokenPipeError:
        # What is still buffered would fail again at exit: point the
        # descriptor at /dev/null so that the final flush succeeds.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, file.fileno())
            os.close(devnull)
        return False
    return True


class CLIError(Exception):
    """A failure the user can fix; its message is printed as one line."""


@dataclass
class Console:
    """Where a command reads and writes; tests pass their own.

    Attributes:
        out: Text for standard output (serve's log, the demo's report).
        err: Notes, summaries, traces and errors.
        stdin: What ``connect`` sends (None: file descriptor 0).
        stdout: Where ``connect`` writes what it receives (None: descriptor 1).
    """

    out: TextIO
    err: TextIO
    stdin: trio.abc.ReceiveStream | None = None
    stdout: trio.abc.SendStream | None = None
    #: Set once ``out``'s (or ``err``'s) reader has gone, a script that
    #: waited for "listening on" and closed the pipe, say: later lines are
    #: dropped, since logging must not stop a server.
    out_gone: bool = False
    err_gone: bool = False

    @classmethod
    def default(cls) -> Console:
        """The process's own standard streams."""
        return cls(out=sys.stdout, err=sys.stderr)

    def say(self, text: str) -> None:
        """Print a line on ``out`` and flush it, so a reader sees it at once."""
        if not self.out_gone:
            self.out_gone = not _print_line(text, self.out)

    def note(self, text: str) -> None:
        """Print a line on ``err``."""
        if not self.err_gone:
            self.err_gone = not _print_line(text, self.err)

    def error(self, text: str) -> None:
        """Print the one-line error report."""
        self.note(f"{PROGRAM}: error: {text}")


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROGRAM}: error: {message} (see '{self.prog} --help')\n")


if TYPE_CHECKING:
    #: Where each command module adds its parser (``add_subparsers()``'s
    #: result; generic only in typeshed, not at run time).
    Commands: TypeAlias = argparse._SubParsersAction[UsageParser]


# ----------------------------------------------------------------- arguments


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} seconds: give a positive number")
    return value


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    """Options serve and connect share: --alpn, --tls1.2/--tls1.3, --trace."""
    # One protocol per --alpn (or several, comma-separated) rather than
    # nargs="+", which would swallow connect's HOST:PORT after it.
    parser.add_argument(
        "--alpn",
        action="append",
        default=[],
        metavar="PROTO",
        help="an ALPN protocol to offer; repeat it, or separate with commas, for more "
        "(in order of preference)",
    )
    versions = parser.add_mutually_exclusive_group()
    versions.add_argument(
        "--tls1.2", dest="tls_version", action="store_const", const="1.2", help="only TLS 1.2"
    )
    versions.add_argument(
        "--tls1.3", dest="tls_version", action="store_const", const="1.3", help="only TLS 1.3"
    )
    parser.add_argument(
        "--keylog",
        metavar="FILE",
        help="append the TLS secrets to FILE (NSS key log format, for Wireshark); "
        "default: the SSLKEYLOGFILE environment variable",
    )
    add_trace_option(parser)


def add_trace_option(parser: argparse.ArgumentParser) -> None:
    """``--trace``: every command can show the data flow."""
    parser.add_argument(
        "--trace", action="store_true", help="print every transfer between the BIOs on stderr"
    )


def check_tls_options(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Cross-check the shared options and split ``--alpn`` lists; usage errors exit."""
    if (arguments.cert is None) != (arguments.key is None):
        parser.error("--cert and --key go together: give the certificate and its private key")
    arguments.alpn = [name for item in arguments.alpn for name in item.split(",") if name]
    for name in arguments.alpn:
        if not name.isascii() or len(name) > 255:
            parser.error(f"--alpn {name[:40]!r}: a protocol name is 1 to 255 ASCII characters")


def throwaway_authority(
    *names: str, missing: Exception | SystemExit
) -> tuple[trustme.CA, trustme.LeafCert]:
    """A new ECDSA certificate authority and a certificate it issued for ``names``.

    trustme is an optional dependency: without it, raises ``missing`` (which
    says how to install it) instead.
    """
    try:
        import trustme
    except ImportError:  # pragma: no cover - depends on how it was installed
        raise missing from None
    authority = trustme.CA(key_type=trustme.KeyType.ECDSA)
    return authority, authority.issue_cert(*names, key_type=trustme.KeyType.ECDSA)


def show_address(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------ TLS setup


def pin_version(context: ssl.SSLContext, version: str | None) -> None:
    """Allow only TLS ``version`` ("1.2" or "1.3"); None leaves the defaults."""
    if version is not None:
        context.minimum_version = context.maximum_version = _VERSIONS[version]


def apply_keylog(context: ssl.SSLContext, keylog: str | None, console: Console) -> None:
    """Log the TLS secrets of ``context``'s connections to ``--keylog`` or SSLKEYLOGFILE.

    ``--keylog`` wins; else SSLKEYLOGFILE is honoured as
    :func:`ssl.create_default_context` honours it (set and not empty, and
    Python not run with -E), since the command line builds its contexts
    without that function. OpenSSL appends one line per secret, in the NSS
    key log format Wireshark reads. Whoever can read the file can decrypt
    every logged connection, so a note on stderr says where it goes.
    Raises CLIError if the file cannot be opened for appending.
    """
    source = "--keylog"
    path = keylog
    if path is None and not sys.flags.ignore_environment:
        path = os.environ.get("SSLKEYLOGFILE") or None
        source = "SSLKEYLOGFILE"
    if path is None:
        return
    try:
        context.keylog_filename = path
    except OSError as exc:
        raise CLIError(
            f"cannot write the TLS key log {source} {path}: {describe_os_error(exc)}"
        ) from None
    console.note(
        f"logging TLS secrets to {path} ({source}); "
        "anyone with that file can decrypt these connections"
    )


def load_cert_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load ``--cert``/``--key``, or raise CLIError saying what is wrong."""
    for option, path in (("--cert", cert), ("--key", key)):
        if not os.path.isfile(path):
            raise CLIError(f"cannot read {option} {path}: no such file")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # before OSError: it is one
        raise CLIError(
            f"cannot load --cert {cert} with --key {key}: {_reason(exc)} "
            "(are they PEM files, and is the key the certificate's?)"
        ) from None
    except OSError as exc:
        raise CLIError(
            f"cannot read --cert {cert} or --key {key}: {describe_os_error(exc)}"
        ) from None


def load_cafile(context: ssl.SSLContext, cafile: str) -> None:
    """Trust the CAs in ``cafile``, or raise CLIError saying what is wrong."""
    try:
        context.load_verify_locations(cafile)
    except ssl.SSLError as exc:  # before OSError: it is one
        raise CLIError(
            f"cannot load --cafile {cafile}: {_reason(exc)} (is it a PEM file of CAs?)"
        ) from None
    except OSError as exc:
        raise CLIError(f"cannot read --cafile {cafile}: {describe_os_error(exc)}") from None


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason for a failure to load a file, undecorated."""
    text = getattr(exc, "reason", None) or (exc.args[-1] if exc.args else "") or str(exc)
    return clean_openssl_text(str(text))


# --------------------------------------------------------------- describing


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError, digging the reason out of trio's groups."""
    # trio's "all attempts to connect ... failed" keeps the reasons in a group.
    reasons = [
        os.strerror(leaf.errno) if leaf.errno else str(leaf)
        for leaf in leaves(exc.__cause__)
        if isinstance(leaf, OSError)
    ]
    if exc.strerror is None and reasons:
        return ", ".join(dict.fromkeys(reasons))
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{text}: {exc.filename}"
    return text


def leaves(exc: BaseException | None) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if exc is None:
        return
    # Duck-typed so this works without the exceptiongroup backport on 3.10.
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple):
        for child in inner:
            yield from leaves(child)
    else:
        yield exc


def describe_tls_failure(exc: BaseException, *, server_side: bool) -> str:
    """The stream's message for a TLS failure, tidied, with a hint appended."""
    if isinstance(exc.__cause__, TLSTruncationError):
        # The stream's own message advises on https_compatible, an API choice.
        peer = "client" if server_side else "server"
        return (
            f"the {peer} closed the connection without a TLS close_notify, "
            "so the data may be cut short"
        )
    return clean_openssl_text(str(exc)) + tls_hint(exc, server_side=server_side)


def tls_hint(exc: BaseException, *, server_side: bool) -> str:
    """A suggestion for the user, from the ssl error behind a TLS failure."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else None
    if cause is None:
        return ""
    # Not every ssl.SSLError has a reason: TLSTruncationError, made by the
    # engine rather than by OpenSSL, has none (and once crashed serve's log).
    text = f"{getattr(cause, 'reason', None) or ''} {cause}".lower()
    if isinstance(cause, ssl.SSLCertVerificationError):
        message = (cause.verify_message or "").lower()
        if "expired" in message or "not yet valid" in message:
            return " (the certificate must be renewed; check the clocks too)"
        if "hostname" in message or "ip address mismatch" in message:
            return " (does --servername name the server?)"
        return " (is --cafile right?)"
    if "certificate required" in text or "peer did not return a certificate" in text:
        if server_side:
            return " (the client sent no certificate)"
        return " (the server wants a client certificate: pass --cert and --key)"
    if "unknown ca" in text or "bad certificate" in text or "certificate expired" in text:
        if server_side:
            return " (the client rejected our certificate: not its CA, wrong name, or expired)"
        return " (the server rejected our client certificate: is it from the CA it trusts?)"
    if "alert handshake failure" in text and not server_side:
        return (
            " (the server refused: does it want a client certificate (--cert/--key), "
            "another --tls1.2/--tls1.3, or another --alpn?)"
        )
    if "wrong version number" in text or "http request" in text:
        return " (is the peer speaking TLS?)"
    if "protocol version" in text or "unsupported protocol" in text:
        return " (the two sides share no TLS version: check --tls1.2/--tls1.3)"
    if "no application protocol" in text:
        return " (the two sides share no ALPN protocol: check --alpn)"
    return ""


class Tracer:
    """A trace callback printing each event with a monotonic timestamp.

    Args:
        err: Where to print.
        label: A callable giving a prefix for each line (which connection).
        start: The ``time.monotonic()`` that timestamps count from (default:
            now); tracers that share one print on one clock.
    """

    def __init__(
        self, err: TextIO, label: Callable[[], str] = str, start: float | None = None
    ) -> None:
        self._err = err
        self._label = label
        self._start = time.monotonic() if start is None else start

    def __call__(self, event: TraceEvent) -> None:
        elapsed = time.monotonic() - self._start
        print(f"[{elapsed:10.6f}] {self._label()}{event}", file=self._err, flush=True)
