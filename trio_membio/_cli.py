"""The command line: ``python -m trio_membio demo|serve|connect``.

Theory of operation
===================

:func:`main` parses the arguments and runs one command in ``trio.run``;
:func:`main_async` runs it in the current trio run, so tests can run ``serve``
and ``connect`` against each other in one process with fake standard streams
(a :class:`Console`). The commands live in ``_cli_serve.py`` and
``_cli_connect.py``; this module holds the parser and what they share.

Errors are shown so that the user can act on them:

- Usage errors print one line and raise ``SystemExit(2)``, as argparse does.
- Failures the user can cause at run time (refused, untrusted, missing file)
  are raised as :class:`CLIError` anywhere in a command and printed as one
  line, ``trio_membio: error: ...``; the exit status is 1.
- Anything else is a bug and keeps its traceback.

Ctrl-C: ``serve`` turns SIGINT and SIGTERM into a clean stop (status 0); an
interrupt elsewhere ends with a one-line note and status 130 (0 for serve).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn, TextIO

import trio

from ._engine import TLSTruncationError
from ._trace import TraceEvent

__all__ = ["CLIError", "Console", "main", "main_async", "run"]

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
        out: Text for standard output (serve's log).
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


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROGRAM}: error: {message} (see '{self.prog} --help')\n")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} seconds: give a positive number")
    return value


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
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
        "--trace", action="store_true", help="print every transfer between the BIOs on stderr"
    )


def _parser() -> tuple[_Parser, dict[str, _Parser]]:
    """The parser, and each command's parser (for errors that name the command)."""
    parser = _Parser(
        prog="python -m trio_membio",
        description="TLS over trio streams through memory BIOs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="run a TLS server and client over loopback TCP and show the connection",
    )

    serve = commands.add_parser(
        "serve",
        help="run a TLS echo server or a minimal HTTPS server",
        description="A TLS echo server, or with --mode http a minimal HTTPS server "
        "(GET / and GET /bytes/N). Without --cert and --key it makes a throwaway "
        "certificate for localhost and 127.0.0.1 and writes its CA to a file.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=0, help="port; 0 (the default) picks one")
    serve.add_argument("--cert", metavar="FILE", help="the server's certificate chain (PEM)")
    serve.add_argument("--key", metavar="FILE", help="the private key of --cert (PEM)")
    serve.add_argument(
        "--ca-out", metavar="PATH", help="where to write the throwaway CA (default: a temp dir)"
    )
    serve.add_argument(
        "--require-client-cert",
        action="store_true",
        help="refuse clients without a certificate issued by --cafile",
    )
    serve.add_argument("--cafile", metavar="FILE", help="CAs trusted for client certificates")
    serve.add_argument("--mode", choices=["echo", "http"], default="echo", help="echo (default)")
    serve.add_argument(
        "--handshake-timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="close connections that have not finished the handshake by then (default 60)",
    )
    _add_tls_options(serve)

    from ._cli_connect import add_arguments

    connect = commands.add_parser(
        "connect",
        help="connect to a TLS server, like openssl s_client",
        description="Connect, print the handshake summary on stderr, then copy stdin to "
        "the connection and the connection to stdout.",
    )
    add_arguments(connect)
    _add_tls_options(connect)
    return parser, {"serve": serve, "connect": connect}


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and cross-check the arguments; usage errors raise SystemExit(2)."""
    parser, commands = _parser()
    arguments = parser.parse_args(argv)
    if arguments.command not in commands:
        return arguments
    command = commands[arguments.command]
    if (arguments.cert is None) != (arguments.key is None):
        command.error("--cert and --key go together: give the certificate and its private key")
    if arguments.command == "serve":
        if arguments.require_client_cert and arguments.cafile is None:
            command.error("--require-client-cert needs --cafile FILE, the CA of the client certs")
        if arguments.ca_out is not None and arguments.cert is not None:
            command.error("--ca-out is for the throwaway certificate; drop it or --cert/--key")
    arguments.alpn = [name for item in arguments.alpn for name in item.split(",") if name]
    for name in arguments.alpn:
        if not name.isascii() or len(name) > 255:
            command.error(f"--alpn {name[:40]!r}: a protocol name is 1 to 255 ASCII characters")
    return arguments


# ------------------------------------------------------------ shared TLS setup


def pin_version(context: ssl.SSLContext, version: str | None) -> None:
    """Allow only TLS ``version`` ("1.2" or "1.3"); None leaves the defaults."""
    if version is not None:
        context.minimum_version = context.maximum_version = _VERSIONS[version]


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
    """OpenSSL's reason, without the "[SSL] ... (_ssl.c:1234)" decoration."""
    text = exc.reason or (exc.args[-1] if exc.args else "") or str(exc)
    return re.sub(r"^\[\w+\] |\s*\(_ssl\.c:\d+\)$", "", str(text))


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
    return tidy(str(exc)) + tls_hint(exc, server_side=server_side)


def tidy(text: str) -> str:
    """Drop OpenSSL's "[SSL: CODE]" and "(_ssl.c:1234)" from a message."""
    # The stream quotes OpenSSL's text, decoration included; users need neither.
    return re.sub(r"\[SSL: \w+\] |\s*\(_ssl\.c:\d+\)", "", text)


def tls_hint(exc: BaseException, *, server_side: bool) -> str:
    """A suggestion for the user, from the ssl error behind a TLS failure."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else None
    if cause is None:
        return ""
    text = f"{cause.reason} {cause}".lower()
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
    """

    def __init__(self, err: TextIO, label: Callable[[], str] = str) -> None:
        self._err = err
        self._label = label
        self._start = time.monotonic()

    def __call__(self, event: TraceEvent) -> None:
        elapsed = time.monotonic() - self._start
        print(f"[{elapsed:10.6f}] {self._label()}{event}", file=self._err, flush=True)


# ------------------------------------------------------------------- running


async def main_async(
    argv: Sequence[str] | None = None,
    *,
    console: Console | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run a command inside the current trio run; return the exit status.

    Args:
        argv: The arguments after the program name.
        console: The streams to use; default: this process's own.
        task_status: ``serve`` reports the (host, port) pairs it listens on,
            for ``nursery.start``.

    Raises:
        SystemExit: a usage error (status 2) or ``--help`` (status 0).
    """
    arguments = parse_arguments(argv)
    return await _run_command(arguments, console or Console.default(), task_status)


async def _run_command(
    arguments: argparse.Namespace,
    console: Console,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> int:
    try:
        if arguments.command == "serve":
            from ._cli_serve import serve

            return await serve(arguments, console, task_status=task_status)
        if arguments.command == "connect":
            from ._cli_connect import connect

            return await connect(arguments, console)
        if arguments.command == "demo":
            from ._demo import run_demo

            await run_demo(console.out)
            return 0
    except BaseException as exc:
        found = list(leaves(exc))
        errors = [leaf for leaf in found if isinstance(leaf, CLIError)]
        # A CLIError next to anything but a cancellation is a bug worth a traceback.
        if not errors or not all(isinstance(leaf, (CLIError, trio.Cancelled)) for leaf in found):
            raise
        console.error(str(errors[0]))
        return 1
    raise AssertionError(f"unhandled command {arguments.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv``; return the exit status.

    Raises:
        SystemExit: a usage error (status 2) or ``--help`` (status 0).
    """
    arguments = parse_arguments(argv)
    console = Console.default()
    try:
        return trio.run(_run_command, arguments, console)
    except BaseException as exc:
        if not any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves(exc)):
            raise
    if arguments.command == "serve":
        console.note(f"{PROGRAM}: interrupted, server stopped")
        return 0
    console.note(f"{PROGRAM}: interrupted")
    return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
