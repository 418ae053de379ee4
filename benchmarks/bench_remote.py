"""Bulk receivers in a second process.

Run as a script by :func:`remote_receiver`::

    python bench_remote.py IMPL CONNECTIONS PKI_DIR

It loads the certificate from PKI_DIR, listens on 127.0.0.1 (an ephemeral
port, printed on the first line of stdout), receives CONNECTIONS bulk
transfers with implementation IMPL (checking every byte, as in one process),
and exits.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
from bench_common import PKI, BenchmarkError, Contexts, reap_process
from bench_trio import TrioImpl, bulk_receive, serve

#: The implementations that can receive in another process.
REMOTE_IMPLS = ("membio", "trio_ssl", "anyio", "asyncio", "blocking", "plain_trio", "floor")


def trio_impl(name: str) -> TrioImpl[Any]:
    """A trio-family implementation by name (anyio's only if anyio is installed)."""
    from bench_trio import MembioImpl, PlainTrio, TrioSSLImpl

    if name == "anyio":
        from bench_anyio import AnyioImpl

        return AnyioImpl()
    if name == "floor":
        from bench_floor import FloorImpl

        return FloorImpl()
    impls: dict[str, type[TrioImpl[Any]]] = {
        "membio": MembioImpl,
        "trio_ssl": TrioSSLImpl,
        "plain_trio": PlainTrio,
    }
    return impls[name]()


async def _receive_trio(impl: TrioImpl[Any], contexts: Contexts, connections: int) -> None:
    listener = await impl.listen()
    print(listener.port, flush=True)
    try:
        await serve(impl, listener, contexts.server, bulk_receive, connections)
    finally:
        await listener.aclose()


def receive(name: str, connections: int, pki_dir: Path) -> None:
    contexts = Contexts(PKI.load(pki_dir))
    if name == "asyncio":
        from bench_asyncio import receive_bulk_connections

        receive_bulk_connections(contexts, connections)
    elif name == "blocking":
        from bench_sync import receive_bulk_connections as receive_blocking

        receive_blocking(contexts, connections)
    else:
        trio.run(_receive_trio, trio_impl(name), contexts, connections)


@contextmanager
def remote_receiver(name: str, connections: int, pki_dir: Path) -> Iterator[int]:
    """Start a receiver process; yield its port; on exit, wait for it to finish."""
    if name not in REMOTE_IMPLS:
        raise ValueError(f"no remote receiver for {name}")
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), name, str(connections), str(pki_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.strip():
            raise BenchmarkError(f"the {name} receiver process did not start")
        yield int(line)
        if process.wait(timeout=60) != 0:
            raise BenchmarkError(f"the {name} receiver process failed ({process.returncode})")
    finally:
        reap_process(process)


if __name__ == "__main__":
    receive(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
