"""Where the time goes: sum a ``py-spy record --native -f raw`` profile by layer.

Usage::

    python benchmarks/profile_breakdown.py PROFILE.txt [PROFILE.txt ...]

Each sample is charged to one layer, from the innermost Python frame and the
native frame under it:

- OpenSSL: native code under ``SSLObject.*`` (the cryptography, and the copies
  OpenSSL makes into and out of its records);
- system calls: socket reads and writes, connect/accept/close, epoll;
- trio_membio: this package's Python, and the C it calls directly (the
  memory BIO copies, joining records into one result);
- trio: the scheduler, trio's sockets and memory streams, outcome;
- the benchmark: the workload's own code (sending, checking every byte);
- anything else (anyio's Python, for example).

Samples taken while importing modules or making the certificate are left out.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

SYSCALLS = (
    "write (",
    "read (",
    "recv",
    "send",
    "epoll",
    "connect (",
    "accept",
    "close (",
    "socket (",
    "setsockopt",
    "getsockopt",
)
STARTUP = ("importlib", "PKI.create", "trustme")


def layer(stack: str) -> str:
    """The layer a sample's stack (frames joined by ';', outermost first) is charged to."""
    frames = stack.split(";")
    leaf = frames[-1]
    python = [frame for frame in frames if ".py:" in frame]
    inner = python[-1] if python else ""
    native = ".py:" not in leaf
    if native and "SSLObject." in inner:
        return "OpenSSL"
    if native and any(name in leaf for name in SYSCALLS):
        return "system calls"
    if "trio_membio/" in inner:
        return "trio_membio"
    if "trio/" in inner or "outcome/" in inner:
        return "trio"
    if "ssl.py" in inner:
        return "OpenSSL" if native else "ssl.py wrappers"
    if "bench" in inner:
        return "the benchmark"
    return "other"


def breakdown(path: Path) -> tuple[int, Counter[str]]:
    """Samples per layer in one raw py-spy file (lines of 'stack count')."""
    layers: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or any(marker in stack for marker in STARTUP):
            continue
        samples = int(count)
        total += samples
        layers[layer(stack)] += samples
    return total, layers


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for name in argv:
        total, layers = breakdown(Path(name))
        print(f"{name}: {total} samples")
        for layer_name, samples in layers.most_common():
            print(f"  {100 * samples / max(total, 1):5.1f}%  {layer_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
