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
import sys
from pathlib import Path
from typing import Any

MEMBIO = "membio"
BASELINE = "trio_ssl"


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


def render(document: dict[str, Any]) -> str:
    """The Markdown fragment: where it ran, then the two tables."""
    versions = document["versions"]
    suites = sorted({tuple(pair) for pairs in document["negotiated"].values() for pair in pairs})
    suite_text = ", ".join(f"{cipher} ({version})" for cipher, version in suites)
    lines = [
        f"Run of {document['date'][:10]}: `bench.py {' '.join(document['argv'])}`, "
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
