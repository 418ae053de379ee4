"""Benchmarks: MemoryBIOStream against trio.SSLStream and the other TLS stacks.

Usage::

    python benchmarks/bench.py [--quick] [--json PATH] [--chart PATH]
                               [--rounds N] [--only WORKLOAD ...]

Every workload runs every implementation that applies once per round,
alternating implementations within the round (the order rotates from round to
round), after one untimed warm-up run of each. Each number is the median over
the rounds with the min-max; each ratio is the implementation's number divided
by trio.SSLStream's number *of the same round*, summarised the same way, so
machine noise that lasts longer than one round cancels out.

All implementations use the same ECDSA certificate (trustme), TLS 1.3 only,
one server context (its ticket keys persist for resumption) and the same
payload; the negotiated cipher suite of every implementation is recorded and
must be the same for all, or the run fails.

``--quick`` makes everything tiny, to prove that the suite works (the test
suite runs it); its numbers mean little.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio
from bench_common import PINNED_SUITE, PKI, BenchmarkError, Contexts, Measurement, pin_cipher_suite
from bench_report import (
    LABELS,
    WorkloadResult,
    negotiated_suites,
    table,
    to_json,
    write_chart,
    write_json,
)
from bench_workloads import FULL, QUICK, WORKLOAD_IDS, WORKLOADS, Env, Runner, Workload

import trio_membio


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(runner: Runner, warmup: bool) -> Measurement:
    gc.collect()
    measurement = runner(warmup)
    if not measurement.value > 0:
        raise BenchmarkError(f"non-positive measurement: {measurement}")
    return measurement


def run_workload(workload: Workload, env: Env) -> WorkloadResult:
    result = WorkloadResult(
        workload.id,
        workload.title,
        workload.unit,
        workload.higher_is_better,
        workload.description,
        workload.params(env),
    )
    log(f"== {workload.id}: {workload.title}")
    with workload.setup(env) as runners:
        names = list(runners)
        for name in names:
            measure(runners[name], warmup=True)
        for index in range(env.rounds):
            shift = index % len(names)
            order = names[shift:] + names[:shift]
            done: dict[str, float] = {}
            for name in order:
                measurement = measure(runners[name], warmup=False)
                result.record(name, measurement)
                done[name] = measurement.value
            values = ", ".join(f"{LABELS[name]} {done[name]:.4g}" for name in names)
            log(f"   round {index + 1}/{env.rounds}: {values} {workload.unit}")
    # Keep the rows in the registry's order, whatever order they ran in.
    result.rounds = {name: result.rounds[name] for name in LABELS if name in result.rounds}
    skips = workload.skips(env)
    for name, available in env.available.items():
        if not available and name not in skips:
            skips[name] = "not installed"
    result.skipped = {name: skips[name] for name in LABELS if name in skips}
    return result


def source_commit() -> str | None:
    """The git commit the library and benchmarks ran from (+ "-dirty" if edited), if known."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    edited = git("status", "--porcelain", "--", "trio_membio", "benchmarks")
    return commit + ("-dirty" if edited else "")


def versions() -> dict[str, Any]:
    found: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "trio_membio": trio_membio.__version__,
        "openssl": ssl.OPENSSL_VERSION,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        from bench_anyio import anyio_version
    except ImportError:
        found["anyio"] = None
    else:
        found["anyio"] = anyio_version()
    return found


def anyio_available() -> bool:
    try:
        import bench_anyio  # noqa: F401
    except ImportError:
        return False
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: prove the suite works")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every number here")
    parser.add_argument("--chart", type=Path, metavar="PATH", help="write a PNG of the ratios")
    parser.add_argument("--rounds", type=int, metavar="N", help="rounds (default 5; quick: 2)")
    parser.add_argument(
        "--only", nargs="+", choices=WORKLOAD_IDS, metavar="WORKLOAD", help="run only these"
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    commit = source_commit()  # before the run: the code measured
    rounds: int = args.rounds or (2 if args.quick else 5)
    sizes = QUICK if args.quick else FULL
    available = dict.fromkeys(LABELS, True)
    available["anyio"] = anyio_available()
    if not available["anyio"]:
        log("anyio is not installed: its TLSStream is reported as unavailable")
    selected = [w for w in WORKLOADS if args.only is None or w.id in args.only]
    with tempfile.TemporaryDirectory(prefix="trio-membio-bench-") as directory:
        env = Env(Contexts(PKI.create(Path(directory))), sizes, rounds, available)
        results = [run_workload(workload, env) for workload in selected]
    elapsed = time.perf_counter() - started
    print(table(results))
    suites = negotiated_suites(results)
    distinct = {tuple(pair) for pairs in suites.values() for pair in pairs}
    pinned = pin_cipher_suite(ssl.create_default_context())
    print()
    print(
        f"negotiated: {', '.join(' '.join(map(str, pair)) for pair in sorted(distinct))}"
        f" ({'pinned' if pinned else 'OpenSSL default; ' + PINNED_SUITE + ' cannot be pinned'}"
        f" on Python {sys.version_info.major}.{sys.version_info.minor})"
    )
    print(f"total time: {elapsed:.1f} s ({rounds} rounds{', quick' if args.quick else ''})")
    if args.json is not None:
        meta = {
            "date": date,
            "commit": commit,
            "versions": versions(),
            "argv": sys.argv[1:] if argv is None else argv,
            "quick": args.quick,
            "rounds": rounds,
            "sizes": asdict(sizes),
            "total_seconds": elapsed,
            "cipher_pinned": pinned,
            "ciphers_equal": len(distinct) <= 1,
            "unavailable": {name: "not installed" for name, ok in available.items() if not ok},
        }
        write_json(args.json, to_json(results, meta))
        print(f"JSON written to {args.json}")
    if args.chart is not None:
        print(write_chart(args.chart, results))
    if len(distinct) > 1:
        log(f"the implementations negotiated different TLS parameters: {suites}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
