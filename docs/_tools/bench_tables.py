"""Turn a benchmark JSON file into the Markdown tables of docs/performance.md.

Usage::

    python benchmarks/bench.py --json docs/_static/bench.json --chart docs/_static/bench.png
    python docs/_tools/bench_tables.py docs/_static/bench.json > docs/_generated/bench-tables.md

The tables only restate the JSON (medians over rounds, and ratios to
trio.SSLStream taken round by round); the page says how to read them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEMBIO = "membio"
BASELINE = "trio_ssl"
#: TLS on trio with no stream layer (benchmarks/bench_floor.py).
FLOOR = "floor"


def number(value: float) -> str:
    """A measurement with as many digits as it deserves."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(value: float) -> str:
    """A ratio to trio.SSLStream."""
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.01:
        return f"{value:.2f}"
    return f"{value:.4f}"


def headline_table(workloads: dict[str, Any]) -> list[str]:
    """MemoryBIOStream against trio.SSLStream, one row per workload."""
    lines = [
        "| workload | unit | MemoryBIOStream | trio.SSLStream | ratio (min-max) |",
        "|---|---|--:|--:|--:|",
    ]
    for workload_id, workload in workloads.items():
        results = workload["results"]
        ours, theirs = results.get(MEMBIO), results.get(BASELINE)
        if ours is None or theirs is None:
            continue
        better = "higher" if workload["higher_is_better"] else "lower"
        spread = ours["ratio"]
        lines.append(
            f"| `{workload_id}` | {workload['unit']} ({better} is better) "
            f"| {number(ours['median'])} | {number(theirs['median'])} "
            f"| **{ratio(spread['median'])}** ({ratio(spread['min'])}-{ratio(spread['max'])}) |"
        )
    return lines


def ratio_table(workloads: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Every implementation's median ratio to trio.SSLStream, one row per workload."""
    columns = list(labels)
    lines = [
        "| workload | " + " | ".join(labels[column] for column in columns) + " |",
        "|---|" + "--:|" * len(columns),
    ]
    for workload_id, workload in workloads.items():
        cells = []
        for column in columns:
            result = workload["results"].get(column)
            if result is None or result.get("ratio") is None:
                cells.append("n/a")
            else:
                cells.append(ratio(result["ratio"]["median"]))
        lines.append(f"| `{workload_id}` | " + " | ".join(cells) + " |")
    return lines


@dataclass(frozen=True)
class Target:
    """One performance target: MemoryBIOStream's number against a peer's, per round."""

    text: str
    workload: str
    peer: str | None  # None: MemoryBIOStream's own number (minus the bare transport's)
    limit: float
    at_least: bool  # True: the ratio (or number) must be >= limit; False: <=


#: The targets of the performance issue (ratios taken round by round).
TARGETS = (
    Target("bulk over TCP, ratio to trio.SSLStream", "bulk-tcp", "trio_ssl", 1.7, True),
    Target("bulk over TCP, ratio to anyio's TLSStream", "bulk-tcp", "anyio", 1.2, True),
    Target("ping-pong, ratio to trio.SSLStream", "ping-pong", "trio_ssl", 2.5, True),
    Target("ping-pong, ratio to trio with no TLS", "ping-pong", "plain_trio", 0.8, True),
    Target("full handshakes, ratio to trio.SSLStream", "handshake-full", "trio_ssl", 1.3, True),
    Target(
        "bulk over memory_stream_pair, ratio to trio.SSLStream",
        "bulk-memory",
        "trio_ssl",
        2.0,
        True,
    ),
    Target(
        "Python heap per idle stream, bytes (minus the bare transport's)",
        "idle-memory",
        None,
        2000,
        False,
    ),
    Target("peak extra heap in send_all(1 MiB), bytes", "send-peak-1MiB", None, 300_000, False),
    Target("peak extra heap in send_all(64 MiB), bytes", "send-peak-64MiB", None, 300_000, False),
)


def _ratios(workloads: dict[str, Any], target: Target, impl: str) -> list[float] | None:
    """``impl``'s per-round ratios to the target's peer, if the run has both."""
    results = workloads[target.workload]["results"]
    if impl not in results or target.peer not in results:
        return None
    return [
        a / b for a, b in zip(results[impl]["rounds"], results[target.peer]["rounds"], strict=True)
    ]


def target_value(workloads: dict[str, Any], target: Target) -> tuple[float, float, float] | None:
    """Median, min and max over rounds of what the target measures, if the run has it."""
    workload = workloads.get(target.workload)
    if workload is None or MEMBIO not in workload["results"]:
        return None
    ours = workload["results"][MEMBIO]["rounds"]
    values: list[float] | None
    if target.peer is not None:
        values = _ratios(workloads, target, MEMBIO)
        if values is None:
            return None
    elif target.workload == "idle-memory":
        bare = workload["results"].get("plain_trio")
        if bare is None:
            return None
        values = [a - b for a, b in zip(ours, bare["rounds"], strict=True)]
    else:
        values = list(ours)
    return statistics.median(values), min(values), max(values)


def floor_values(workloads: dict[str, Any], target: Target) -> tuple[list[float], list[float]]:
    """Per round: the floor's ratio to the target's peer, and ours to the floor's number."""
    if target.peer is None or target.workload not in workloads:
        return [], []
    floor = _ratios(workloads, target, FLOOR)
    if floor is None:
        return [], []
    results = workloads[target.workload]["results"]
    ours = [a / b for a, b in zip(results[MEMBIO]["rounds"], results[FLOOR]["rounds"], strict=True)]
    return floor, ours


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{ratio(statistics.median(values))} ({ratio(min(values))}-{ratio(max(values))})"


def target_table(workloads: dict[str, Any]) -> list[str]:
    """Each target: this run's median (min-max over rounds), the floor's, whether it holds."""
    lines = [
        "| target | limit | this run (min-max) | the floor (min-max) | ours / the floor | met |",
        "|---|--:|--:|--:|--:|:-:|",
    ]
    for target in TARGETS:
        found = target_value(workloads, target)
        if found is None:
            continue
        median, low, high = found
        met = median >= target.limit if target.at_least else median <= target.limit
        shown = ratio if target.peer is not None else number
        sign = ">=" if target.at_least else "<="
        floor, ours = floor_values(workloads, target)
        lines.append(
            f"| {target.text} | {sign} {shown(target.limit)} "
            f"| {shown(median)} ({shown(low)}-{shown(high)}) "
            f"| {_spread(floor)} | {_spread(ours)} | {'yes' if met else '**no**'} |"
        )
    return lines


def render(document: dict[str, Any]) -> str:
    """The Markdown fragment: where it ran, then the two tables."""
    versions = document["versions"]
    suites = sorted({tuple(pair) for pairs in document["negotiated"].values() for pair in pairs})
    suite_text = ", ".join(f"{cipher} ({version})" for cipher, version in suites)
    lines = [
        f"Run of {document['date'][:10]}"
        f"{' at commit ' + document['commit'][:12] if document.get('commit') else ''}: "
        f"`bench.py {' '.join(document['argv'])}`, "
        f"{document['rounds']} rounds, {document['total_seconds']:.0f} s. "
        f"CPython {versions['python']}, trio {versions['trio']}, anyio {versions['anyio']}, "
        f"{versions['openssl']}, {versions['platform']}. Every implementation negotiated "
        f"{suite_text}.",
        "",
        *headline_table(document["workloads"]),
        "",
        "Ratios to trio.SSLStream for every implementation (median over rounds; "
        "n/a where a workload does not apply):",
        "",
        *ratio_table(document["workloads"], document["implementations"]),
        "",
        "The targets, computed round by round from the same numbers (median of the "
        "per-round values; a target is met when the median is). 'The floor' is the same "
        "ratio for TLS on trio with no stream layer at all (benchmarks/bench_floor.py), "
        "about the most a TLS stream of this design can show in that run; 'ours / the "
        "floor' is MemoryBIOStream's number divided by the floor's, round by round.",
        "",
        *target_table(document["workloads"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the tables for the JSON file named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("json", type=Path, help="a file written by bench.py --json")
    arguments = parser.parse_args(argv)
    document = json.loads(arguments.json.read_text())
    if document.get("quick"):
        print("refusing a --quick run: its numbers mean little", file=sys.stderr)
        return 1
    sys.stdout.write(render(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
