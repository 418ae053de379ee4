"""The command line: ``python -m trio_membio demo|serve|connect`` (and ``trio-membio``).

Theory of operation
===================

This module is the top of the package: it builds the parser from the
command modules and runs one. Imports only point down::

    __init__  ->  _demo, _serve, _connect  ->  _http_server (serve only)  ->  _common

Each command module owns its command: ``add_parser`` (its arguments),
``check`` (cross-checks that argparse cannot express, reported as usage
errors) and ``run`` (the command itself, inside a trio run). ``_common``
holds what they share and imports none of them (tests/test_imports.py walks
the package's imports and fails on a cycle).

:func:`main` parses the arguments and runs one command in ``trio.run``;
:func:`main_async` runs it in the current trio run, so tests can run ``serve``
and ``connect`` against each other in one process with fake standard streams
(a :class:`Console`).

Exit statuses: 0 done, 1 a :class:`CLIError` (printed as one line), 2 a usage
error, 130 interrupted. Ctrl-C: ``serve`` turns SIGINT and SIGTERM into a
clean stop (status 0); an interrupt elsewhere ends with a one-line note and
status 130 (0 for serve).
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .. import __version__
from . import _connect, _demo, _serve
from ._common import PROGRAM, CLIError, Console, UsageParser, leaves

if TYPE_CHECKING:
    from ._common import Commands

__all__ = ["CLIError", "Console", "main", "main_async", "parse_arguments", "run"]


@dataclass(frozen=True)
class _Command:
    """What a command module provides (see the module docstring)."""

    add_parser: Callable[[Commands], argparse.ArgumentParser]
    check: Callable[[argparse.Namespace, argparse.ArgumentParser], None]
    run: Callable[
        [argparse.Namespace, Console, trio.TaskStatus[list[tuple[str, int]]]], Awaitable[int]
    ]


#: The commands, in the order ``--help`` lists them.
_COMMANDS = {
    "demo": _Command(_demo.add_parser, _demo.check, _demo.run),
    "serve": _Command(_serve.add_parser, _serve.check, _serve.run),
    "connect": _Command(_connect.add_parser, _connect.check, _connect.run),
}


def version_text() -> str:
    """What ``--version`` prints: ours, and what a bug report needs besides."""
    return (
        f"{PROGRAM} {__version__} (trio {trio.__version__}, "
        f"Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION})"
    )


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and cross-check the arguments; usage errors raise SystemExit(2)."""
    parser = UsageParser(
        prog="python -m trio_membio",
        description="TLS over trio streams through memory BIOs.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command_parsers = {name: module.add_parser(commands) for name, module in _COMMANDS.items()}
    arguments = parser.parse_args(argv)
    _COMMANDS[arguments.command].check(arguments, command_parsers[arguments.command])
    return arguments


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
    command = _COMMANDS[arguments.command]
    try:
        return await command.run(arguments, console, task_status)
    except BaseException as exc:
        found = list(leaves(exc))
        errors = [leaf for leaf in found if isinstance(leaf, CLIError)]
        # A CLIError next to anything but a cancellation is a bug worth a traceback.
        if not errors or not all(isinstance(leaf, (CLIError, trio.Cancelled)) for leaf in found):
            raise
        console.error(str(errors[0]))
        return 1


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
    """Console-script entry point (``trio-membio``) and ``python -m trio_membio``."""
    sys.exit(main())
