"""Two trio-family implementations, alternating in one process: the ratio between them.

Usage::

    python benchmarks/bench_ab.py WORKLOAD A B [ROUNDS [AMOUNT]]

WORKLOAD is one of ``bench_one.py``'s; A and B are implementation names
(``membio``, ``trio_ssl``, ``anyio``, ``plain_trio``, ``floor``). Each round
runs A then B (the order swaps every round) on a smaller amount than the full
suite: 64 MiB of bulk, 10,000 round trips, 200 handshakes (or AMOUNT, in the
workload's unit). It prints A/B per round, then the median and quartiles.

Many short alternating rounds in one process see the same machine state, so
the ratio is steadier than one taken across separate runs: this is how a
change to the hot paths is compared with the floor (for example
``bench_ab.py ping-pong membio floor 16`` before and after).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import trio
from bench_common import PKI, Contexts
from bench_one import WORKLOADS
from bench_remote import trio_impl

MiB = 1 << 20
AMOUNTS = {
    "bulk-tcp": 64 * MiB,
    "bulk-memory": 64 * MiB,
    "ping-pong": 10_000,
    "handshake-full": 200,
}


def main(argv: list[str]) -> int:
    if not 3 <= len(argv) <= 5 or argv[0] not in WORKLOADS:
        print(__doc__, file=sys.stderr)
        return 2
    workload_id, first, second = argv[:3]
    rounds = int(argv[3]) if len(argv) > 3 else 12
    default, workload = WORKLOADS[workload_id]
    amount = AMOUNTS[workload_id]
    if len(argv) > 4:
        amount = int(argv[4]) * (MiB if default >= MiB else 1)
    impls = {name: trio_impl(name) for name in (first, second)}
    ratios = []
    with tempfile.TemporaryDirectory() as directory:
        contexts = Contexts(PKI.create(Path(directory)))
        for index in range(rounds):
            order = (first, second) if index % 2 == 0 else (second, first)
            values = {
                name: trio.run(workload, impls[name], contexts, amount).value for name in order
            }
            ratios.append(values[first] / values[second])
            print(f"round {index + 1}: {first}/{second} {ratios[-1]:.3f}")
    ordered = sorted(ratios)
    quartiles = ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]
    print(
        f"{workload_id} {first}/{second}: median {statistics.median(ratios):.3f}"
        f" (quartiles {quartiles[0]:.3f}-{quartiles[1]:.3f}, {rounds} rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
