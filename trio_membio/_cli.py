"""The command line: ``python -m trio_membio COMMAND``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_membio",
        description="TLS over trio streams through memory BIOs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="run a TLS server and client over loopback TCP and show the connection",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv``; return the exit status."""
    arguments = _parser().parse_args(argv)
    if arguments.command == "demo":
        from ._demo import run_demo

        trio.run(run_demo, sys.stdout)
        return 0
    raise AssertionError(f"unhandled command {arguments.command!r}")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
