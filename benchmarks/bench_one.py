"""One workload, one trio-family implementation, one run: for profilers.

Usage::

    python benchmarks/bench_one.py WORKLOAD IMPL [AMOUNT]

WORKLOAD is ``bulk-tcp`` (AMOUNT in MiB, default 1024), ``bulk-memory`` (MiB,
default 1024), ``ping-pong`` (round trips, default 100000) or
``handshake-full`` (connections, default 3000); IMPL is ``membio``,
``trio_ssl``, ``anyio``, ``plain_trio`` or ``floor``. It prints the measurement, nothing
else, so a sampling profiler sees only the workload (after the imports and
the certificate). For example, the breakdowns in docs/performance.md came
from::

    py-spy record --native -r 400 -f raw -o bulk.txt -- \\
        python benchmarks/bench_one.py bulk-tcp membio 4096
    python benchmarks/profile_breakdown.py bulk.txt
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import bench_trio
import trio
from bench_common import PKI, Contexts, Measurement
from bench_remote import trio_impl

MiB = 1 << 20

WORKLOADS: dict[str, tuple[int, Callable[..., Awaitable[Measurement]]]] = {
    "bulk-tcp": (1024 * MiB, bench_trio.bulk_tcp),
    "bulk-memory": (1024 * MiB, bench_trio.bulk_memory),
    "ping-pong": (100_000, bench_trio.ping_pong),
    "handshake-full": (3000, partial(bench_trio.handshakes, resume=False)),
}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] not in WORKLOADS:
        print(__doc__, file=sys.stderr)
        return 2
    default, workload = WORKLOADS[argv[0]]
    amount = default if len(argv) == 2 else int(argv[2]) * (MiB if default >= MiB else 1)
    impl = trio_impl(argv[1])
    with tempfile.TemporaryDirectory() as directory:
        contexts = Contexts(PKI.create(Path(directory)))
        measurement = trio.run(workload, impl, contexts, amount)
    print(f"{argv[0]} {argv[1]}: {measurement.value:,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
