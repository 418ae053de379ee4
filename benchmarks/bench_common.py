"""Shared pieces of the benchmark suite: certificates, contexts, payload, statistics.

Every implementation uses the same certificate (an ECDSA leaf from a trustme
ECDSA CA, written once to a directory so that the receiver processes load the
very same files), the same two :class:`ssl.SSLContext` objects per process
(one server context reused for every connection, so its ticket keys persist
for session resumption), TLS 1.3 only, and the same payload.

Python's :mod:`ssl` cannot choose TLS 1.3 cipher suites before
``SSLContext.set_ciphersuites`` exists (it does not in any released CPython up
to 3.13), so :func:`pin_cipher_suite` pins ``TLS_AES_128_GCM_SHA256`` where the
method exists and otherwise leaves OpenSSL's default order; the suite records
the suite every implementation negotiated and refuses to report if they differ.
"""

from __future__ import annotations

import random
import ssl
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trustme

HOSTNAME: Final = "bench.example.org"
LOCALHOST: Final = "127.0.0.1"
PINNED_SUITE: Final = "TLS_AES_128_GCM_SHA256"

#: Bulk transfers send this much plaintext per send call.
CHUNK: Final = 65536
#: The payload is this pseudo-random block repeated; receivers check every byte.
PATTERN_SIZE: Final = 1 << 20
_PATTERN: Final = random.Random(20240917).randbytes(PATTERN_SIZE)
#: Twice the block, so that any slice of up to PATTERN_SIZE bytes at any offset
#: is contiguous.
PATTERN_VIEW: Final = memoryview(_PATTERN + _PATTERN)
#: The send chunks, in order; chunk i of a transfer is CHUNKS[i % len(CHUNKS)].
CHUNKS: Final = tuple(_PATTERN[i : i + CHUNK] for i in range(0, PATTERN_SIZE, CHUNK))

PING: Final = bytes(range(64))
PONG: Final = bytes(reversed(PING))
#: Receivers send READY once they know the transfer size, OK / BAD at the end.
READY: Final = b"r"
OK: Final = b"!"
BAD: Final = b"X"


class BenchmarkError(RuntimeError):
    """A measurement went wrong: corrupt data, a failed resumption, a cipher mismatch."""


def reap_process(process: subprocess.Popen[str]) -> None:
    """Kill a helper process that has not exited, and close its output pipe."""
    if process.poll() is None:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


# --------------------------------------------------------------- certificates


@dataclass(frozen=True)
class PKI:
    """The files every process loads its contexts from."""

    ca_pem: Path
    server_pem: Path

    @classmethod
    def create(cls, directory: Path) -> PKI:
        ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
        leaf = ca.issue_cert(HOSTNAME, LOCALHOST, key_type=trustme.KeyType.ECDSA)
        pki = cls(directory / "ca.pem", directory / "server.pem")
        ca.cert_pem.write_to_path(str(pki.ca_pem))
        leaf.private_key_and_cert_chain_pem.write_to_path(str(pki.server_pem))
        return pki

    @classmethod
    def load(cls, directory: Path) -> PKI:
        return cls(directory / "ca.pem", directory / "server.pem")


def pin_cipher_suite(context: ssl.SSLContext) -> bool:
    """Pin PINNED_SUITE if this Python can; return whether it did."""
    setter: Callable[[str], None] | None = getattr(context, "set_ciphersuites", None)
    if setter is None:
        return False
    setter(PINNED_SUITE)
    return True


def server_context(pki: PKI) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_pem)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    pin_cipher_suite(context)
    return context


def client_context(pki: PKI) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


@dataclass
class Contexts:
    """One client and one server context, shared by every connection in a process."""

    pki: PKI
    client: ssl.SSLContext = field(init=False)
    server: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.client = client_context(self.pki)
        self.server = server_context(self.pki)


# ----------------------------------------------------------------- payload


def header(nbytes: int) -> bytes:
    """The 8-byte size announcement a bulk sender starts with."""
    return nbytes.to_bytes(8, "big")


def check_bulk_size(nbytes: int) -> int:
    if nbytes <= 0 or nbytes % CHUNK:
        raise ValueError(f"bulk sizes must be positive multiples of {CHUNK}: {nbytes}")
    return nbytes // CHUNK


class Verifier:
    """Checks received bytes against the payload, in order, without copying."""

    __slots__ = ("ok", "received")

    def __init__(self) -> None:
        self.received = 0
        self.ok = True

    def feed(self, data: bytes | bytearray) -> None:
        offset = self.received % PATTERN_SIZE
        if not data.startswith(PATTERN_VIEW[offset : offset + len(data)]):
            self.ok = False
        self.received += len(data)


def payload(nbytes: int) -> bytes:
    """nbytes of the payload as one object (for the single-send_all workloads)."""
    whole, part = divmod(nbytes, PATTERN_SIZE)
    return _PATTERN * whole + _PATTERN[:part]


# ------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Measurement:
    """One round's number for one implementation, plus what TLS it negotiated."""

    value: float
    cipher: str | None = None
    version: str | None = None


class Timer:
    """perf_counter around a block: ``with Timer() as t: ...; t.elapsed``."""

    __slots__ = ("elapsed", "start")

    def __init__(self) -> None:
        self.start = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self.start


def mib_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / (1 << 20) / seconds


@dataclass(frozen=True)
class Summary:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values))
