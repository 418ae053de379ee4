"""Handshake storm: the server's handshake step inline vs offloaded to worker threads (issue 14).

Usage::

    python benchmarks/bench_handshake_offload.py [--quick] [--json PATH] [--rounds N]
        [--window S] [--warmup S] [--clients N] [--certs CERT ...] [--modes MODE ...]
        [--client {threads,trio,c}]

Three processes per measurement, all on 127.0.0.1:

* a **server** process (a fresh one per measurement) serving with
  :func:`trio_membio.serve_tls_over_tcp`: TLS 1.3 only, ``num_tickets = 0`` so
  that every handshake is a full one, each connection echoing until the client
  closes. Mode ``inline`` passes nothing (the library's default); mode
  ``offload`` passes ``offload_handshake=True``;
* a **load client** process: C concurrent clients, each in a loop: TCP
  connect, full TLS 1.3 handshake verifying the server's certificate,
  close_notify, close. ``--client threads`` (the default) runs C OS threads
  doing blocking :func:`socket.create_connection` and
  :meth:`ssl.SSLContext.wrap_socket` (OpenSSL releases the GIL, so little
  Python runs per handshake); ``--client trio`` runs C trio tasks with
  :class:`trio.SSLStream`; ``--client c`` runs ``storm_client.c`` (compiled
  with the system's ``cc`` against its OpenSSL): one epoll thread with C
  connections in flight, no Python at all. Each is a fixed, neutral load
  generator: the library under test is only on the server side. It counts
  the handshakes completed inside the window and its process CPU in the
  window;
* the **probe**, in this (the driving) process: one established
  :class:`trio.SSLStream` connection to the same server doing one 64-byte
  request/response every 10 ms, recording each round trip's latency.

The window (``--window`` seconds, after ``--warmup`` seconds of storm) is
given to the processes as ``time.monotonic()`` instants (one system-wide
clock on Linux). The server reads ``time.thread_time()`` of its event-loop
thread (the worker threads of offload mode are not counted) and
``time.process_time()`` (all threads) at the window's ends, and divides by the
handshakes it completed in between.

Modes alternate within a round (the order flips from round to round), every
certificate in every round; numbers are medians over the rounds with the
min-max, and ratios are offload / inline *of the same round*, summarised the
same way. The *CPU ceiling* of a mode is the rate at which its measured CPU
per handshake (server process + load client) would keep every core of the
machine busy; the handshakes/s ratio cannot exceed offload's ceiling divided
by inline's measured rate, printed under each table. ``--quick`` is a smoke
run (tiny window, 8 clients, 2 rounds): its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
import math
import os
import shlex
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import trio
import trustme
from bench_common import (
    HOSTNAME,
    LOCALHOST,
    PING,
    PKI,
    BenchmarkError,
    Summary,
    reap_process,
    server_context,
)

HERE: Final = Path(__file__).resolve()
MODES: Final = ("inline", "offload")
#: The load client's kinds; the first is the default (the lighter per handshake: README).
CLIENTS: Final = ("threads", "trio", "c")
CLIENT_LABELS: Final = {
    "threads": "blocking ssl.SSLSocket, one OS thread per client",
    "trio": "trio.SSLStream, one trio task per client",
    "c": "storm_client.c, one epoll thread (OpenSSL's client, no Python)",
}
#: The C load client's source, compiled for ``--client c`` (needs a C compiler and libssl headers).
C_CLIENT_SOURCE: Final = HERE.parent / "storm_client.c"
PROBE_INTERVAL: Final = 0.010
PROBE_SIZE: Final = len(PING)
#: How long a process may take to start, answer or finish before the run fails.
PROCESS_TIMEOUT: Final = 60.0


@dataclass(frozen=True)
class Cert:
    id: str
    label: str
    clients: int  # the issue's concurrency for this certificate


CERTS: Final = (
    Cert("rsa2048", "RSA-2048", 64),
    Cert("rsa4096", "RSA-4096", 16),
    Cert("ecdsa", "ECDSA P-256", 64),
)
CERT_IDS: Final = tuple(cert.id for cert in CERTS)


@dataclass(frozen=True)
class Metric:
    id: str
    title: str
    unit: str
    higher_is_better: bool


METRICS: Final = (
    Metric("handshakes_per_s", "handshakes/s", "1/s", True),
    Metric("probe_p50_ms", "probe p50", "ms", False),
    Metric("probe_p99_ms", "probe p99", "ms", False),
    Metric("loop_cpu_us", "loop CPU/handshake", "us", False),
    Metric("process_cpu_us", "process CPU/handshake", "us", False),
    # Whether the machine was saturated: 2 cores are shared by server, load client and probe.
    Metric("server_cores", "server process CPU", "cores", False),
    Metric("load_cores", "load client CPU", "cores", False),
    # How heavy the load generator is: its process CPU / the handshakes it completed.
    Metric("load_cpu_us", "load client CPU/handshake", "us", False),
    # The most handshakes/s the machine's cores allow at this mode's measured CPU per handshake
    # (server process + load client), were every core busy with nothing else (see README).
    Metric("ceiling_per_s", "CPU ceiling", "1/s", True),
)
#: The cores this process may run on (its affinity, not the machine's count).
CORES: Final = (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)


@dataclass(frozen=True)
class Target:
    """Issue 14's target: the median ratio offload/inline of ``metric`` against ``bound``."""

    cert: str
    metric: str
    at_least: bool  # ratio >= bound, else ratio <= bound
    bound: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound if self.at_least else ratio <= self.bound

    def describe(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.bound:g}x"


TARGETS: Final = (
    Target("rsa2048", "handshakes_per_s", True, 1.15),
    Target("rsa2048", "probe_p50_ms", False, 0.3),
    Target("rsa2048", "loop_cpu_us", False, 0.6),
    Target("rsa4096", "handshakes_per_s", True, 1.4),
    Target("ecdsa", "handshakes_per_s", True, 0.97),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------- certificates


def _trustme_pki(directory: Path, key_type: trustme.KeyType) -> PKI:
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert(HOSTNAME, LOCALHOST, "localhost", key_type=key_type)
    pki = PKI.load(directory)
    ca.cert_pem.write_to_path(str(pki.ca_pem))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pki.server_pem))
    return pki


def _rsa4096_pki(directory: Path) -> PKI:
    """A CA and a leaf, both RSA-4096 (trustme only makes RSA-2048 keys)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def key_usage(*, leaf: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=leaf,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=not leaf,
            crl_sign=not leaf,
            encipher_only=False,
            decipher_only=False,
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trio-membio bench RSA-4096 CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(leaf=False), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(leaf=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(HOSTNAME),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address(LOCALHOST)),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = PKI.load(directory)
    pki.ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_pem.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + leaf_cert.public_bytes(serialization.Encoding.PEM)
    )
    return pki


def create_pki(cert: str, directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    if cert == "rsa2048":
        return _trustme_pki(directory, trustme.KeyType.RSA)
    if cert == "ecdsa":
        return _trustme_pki(directory, trustme.KeyType.ECDSA)
    if cert == "rsa4096":
        return _rsa4096_pki(directory)
    raise ValueError(f"unknown certificate {cert!r}")


def full_handshake_server_context(pki: PKI) -> ssl.SSLContext:
    """The suite's server context, TLS 1.3 only, issuing no tickets: no resumption possible."""
    context = server_context(pki)
    context.num_tickets = 0
    return context


def load_client_context(pki: PKI) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def trio_deadline(monotonic_instant: float) -> float:
    """A time.monotonic() instant (shared by the processes) on this trio run's clock."""
    return trio.current_time() + (monotonic_instant - time.monotonic())


def read_window(line: str) -> tuple[float, float]:
    start, end = (float(field) for field in line.split())
    return start, end


# --------------------------------------------------------------- the server


def offload_available() -> bool:
    import inspect

    from trio_membio import serve_tls_over_tcp

    return "offload_handshake" in inspect.signature(serve_tls_over_tcp).parameters


def offloaded_steps(context: ssl.SSLContext) -> int:
    """How many of ``context``'s handshake steps the offload policy has sent to the pool."""
    from trio_membio import _offload  # the library's own bookkeeping: a benchmark may read it

    cost = _offload._costs.get(context)
    return 0 if cost is None else cost.offloaded


async def _echo(stream: trio.abc.Stream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # a load client that closed without close_notify


async def _server(pki_dir: Path, mode: str) -> None:
    from trio_membio import serve_tls_over_tcp

    context = full_handshake_server_context(PKI.load(pki_dir))
    # Failed handshakes are counted (and reported), not logged one by one.
    logging.getLogger("trio_membio").setLevel(logging.ERROR)
    handshakes = failures = 0

    async def handler(stream: trio.abc.Stream) -> None:
        nonlocal handshakes
        handshakes += 1
        await _echo(stream)

    def on_handshake_error(stream: object, error: BaseException) -> None:
        nonlocal failures
        failures += 1

    options: dict[str, Any] = {"offload_handshake": True} if mode == "offload" else {}
    control = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    lines = _LineReader(control)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve_tls_over_tcp(
                handler,
                0,
                context,
                host=LOCALHOST,
                on_handshake_error=on_handshake_error,
                task_status=task_status,
                **options,
            )
        )
        print(listeners[0].transport_listener.socket.getsockname()[1], flush=True)
        start, end = read_window(await lines.readline())
        await trio.sleep_until(trio_deadline(start))
        offloaded_before = offloaded_steps(context)
        before = (handshakes, failures, time.thread_time(), time.process_time(), time.monotonic())
        await trio.sleep_until(trio_deadline(end))
        after = (handshakes, failures, time.thread_time(), time.process_time(), time.monotonic())
        offloaded_after = offloaded_steps(context)
        result = {
            "handshakes": after[0] - before[0],
            "failures": after[1] - before[1],
            "loop_cpu_s": after[2] - before[2],
            "process_cpu_s": after[3] - before[3],
            "window_s": after[4] - before[4],
            "start_lag_s": before[4] - start,
            # Steps the policy sent to the worker threads (not the ones it kept inline).
            "offloaded_steps": offloaded_after - offloaded_before,
        }
        print(json.dumps(result), flush=True)
        await lines.readline()  # end of stdin: the driver is done with us
        nursery.cancel_scope.cancel()


class _LineReader:
    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def readline(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(4096)
            if not data:
                break
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


# --------------------------------------------------------------- the load client


async def _storm(
    port: int, context: ssl.SSLContext, clients: int, start: float, end: float
) -> dict[str, float]:
    counts: dict[str, float] = {"handshakes": 0, "total": 0, "errors": 0}

    async def cpu_in_window() -> None:
        await trio.sleep_until(trio_deadline(start))
        before = time.process_time()
        await trio.sleep_until(trio_deadline(end))
        counts["cpu_s"] = time.process_time() - before

    async def one_client() -> None:
        while time.monotonic() < end:
            tcp = None
            try:
                tcp = await trio.open_tcp_stream(LOCALHOST, port)
                stream = trio.SSLStream(tcp, context, server_hostname=HOSTNAME)
                await stream.do_handshake()
                done = time.monotonic()
            except (trio.BrokenResourceError, OSError):
                counts["errors"] += 1
                if tcp is not None:
                    await tcp.aclose()
                continue
            if stream.session_reused:
                raise BenchmarkError("a session was resumed: not a full handshake")
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.aclose()  # close_notify, then close: no wait for the server's
            counts["total"] += 1
            if start <= done < end:
                counts["handshakes"] += 1

    # In-flight handshakes finish after the window; a stuck one must not hang the run.
    with trio.fail_at(trio_deadline(end + PROCESS_TIMEOUT / 2)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cpu_in_window)
            for _ in range(clients):
                nursery.start_soon(one_client)
    return counts


def _close_notify(tls: ssl.SSLSocket) -> None:
    """Send close_notify without waiting for the server's, as trio.SSLStream.aclose() does."""
    tls.setblocking(False)
    # The second SSL_shutdown() inside unwrap() wants the peer's close_notify: WantRead.
    with contextlib.suppress(OSError):
        tls.unwrap()


def _storm_threads(
    port: int, context: ssl.SSLContext, clients: int, start: float, end: float
) -> dict[str, float]:
    """The storm from ``clients`` OS threads doing blocking connects and handshakes.

    OpenSSL releases the GIL for the handshake and the socket calls, so each
    handshake costs little Python: the load generator stays light.
    """
    per_thread = [{"handshakes": 0, "total": 0, "errors": 0} for _ in range(clients)]
    failures: list[BaseException] = []

    def one_client(counts: dict[str, int]) -> None:
        try:
            while time.monotonic() < end:
                try:
                    # The timeout only keeps a stuck handshake from hanging the run.
                    tcp = socket.create_connection((LOCALHOST, port), timeout=PROCESS_TIMEOUT / 2)
                    with contextlib.closing(tcp):
                        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        # Full handshake (verifying the certificate) before wrap_socket returns.
                        with context.wrap_socket(tcp, server_hostname=HOSTNAME) as tls:
                            done = time.monotonic()
                            if tls.session_reused:
                                raise BenchmarkError("a session was resumed: not a full handshake")
                            _close_notify(tls)
                except OSError:
                    counts["errors"] += 1
                    continue
                counts["total"] += 1
                if start <= done < end:
                    counts["handshakes"] += 1
        except BaseException as error:  # re-raised by the main thread
            failures.append(error)

    threads = [
        threading.Thread(target=one_client, args=(counts,), daemon=True) for counts in per_thread
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, start - time.monotonic()))
    before = time.process_time()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu_s = time.process_time() - before
    # In-flight handshakes finish after the window; a stuck one must not hang the run.
    for thread in threads:
        thread.join(timeout=max(0.0, end + PROCESS_TIMEOUT / 2 - time.monotonic()))
    if failures:
        raise failures[0]
    if any(thread.is_alive() for thread in threads):
        raise BenchmarkError("a load client thread did not finish")
    counts = {key: float(sum(c[key] for c in per_thread)) for key in per_thread[0]}
    return {**counts, "cpu_s": cpu_s}


def _load(pki_dir: Path, port: int, clients: int, kind: str) -> None:
    context = load_client_context(PKI.load(pki_dir))
    print("ready", flush=True)
    start, end = read_window(sys.stdin.readline())
    if kind == "threads":
        counts = _storm_threads(port, context, clients, start, end)
    else:
        counts = trio.run(_storm, port, context, clients, start, end)
    print(json.dumps(counts), flush=True)


# --------------------------------------------------------------- the probe


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def _probe(
    port: int, context: ssl.SSLContext, start_window: Callable[[], tuple[float, float]]
) -> dict[str, Any]:
    tcp = await trio.open_tcp_stream(LOCALHOST, port)
    stream = trio.SSLStream(tcp, context, server_hostname=HOSTNAME)
    await stream.do_handshake()
    cipher = stream.cipher()
    version = stream.version()
    start, end = start_window()
    latencies: list[float] = []
    slot = start
    while slot < end:
        await trio.sleep_until(trio_deadline(slot))
        began = time.perf_counter()
        await stream.send_all(PING)
        received = b""
        while len(received) < PROBE_SIZE:
            data = await stream.receive_some(PROBE_SIZE - len(received))
            if not data:
                raise BenchmarkError("the server closed the probe connection")
            received += data
        latencies.append(time.perf_counter() - began)
        if received != PING:
            raise BenchmarkError("the probe's echo came back different")
        # The next free 10 ms slot: a late round trip does not cause a burst.
        now = time.monotonic()
        slot += PROBE_INTERVAL * max(1, math.ceil((now - slot) / PROBE_INTERVAL))
    await stream.aclose()
    if not latencies:
        raise BenchmarkError("the probe made no round trip in the window")
    return {
        "samples": len(latencies),
        # Slots skipped because a round trip overran: stalls are sampled once, not per slot.
        "slots": math.ceil((end - start) / PROBE_INTERVAL - 1e-9),
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "cipher": cipher[0] if cipher else None,
        "version": version,
    }


# --------------------------------------------------------------- one measurement


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _read_line(process: subprocess.Popen[str], what: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip():
        process.wait(timeout=PROCESS_TIMEOUT)
        raise BenchmarkError(f"the {what} process ended without answering ({process.returncode})")
    return line


def _finish(process: subprocess.Popen[str], what: str) -> None:
    try:
        if process.stdin is not None:
            process.stdin.close()
        if process.wait(timeout=PROCESS_TIMEOUT) != 0:
            raise BenchmarkError(f"the {what} process failed ({process.returncode})")
    finally:
        reap_process(process)


@dataclass(frozen=True)
class Settings:
    window: float
    warmup: float
    rounds: int
    client: str  # the load client's kind, one of CLIENTS
    c_client: Path | None = None  # the compiled storm_client.c, for client "c"


def measure(pki_dir: Path, mode: str, clients: int, settings: Settings) -> dict[str, Any]:
    """One measurement: a fresh server, a load client, the probe; raw numbers and metrics."""
    server = _spawn("_server", str(pki_dir), mode)
    load: subprocess.Popen[str] | None = None
    try:
        port = int(_read_line(server, "server"))
        if settings.client == "c":
            assert settings.c_client is not None
            ca_pem = str(PKI.load(pki_dir).ca_pem)
            load = subprocess.Popen(
                [str(settings.c_client), LOCALHOST, str(port), str(clients), ca_pem, HOSTNAME],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        else:
            load = _spawn("_load", str(pki_dir), str(port), str(clients), settings.client)
        _read_line(load, "load client")

        def start_window() -> tuple[float, float]:
            start = time.monotonic() + settings.warmup
            line = f"{start!r} {start + settings.window!r}\n"
            for process in (server, load):
                assert process is not None
                assert process.stdin is not None
                process.stdin.write(line)
                process.stdin.flush()
            return start, start + settings.window

        probe = trio.run(_probe, port, load_client_context(PKI.load(pki_dir)), start_window)
        served = json.loads(_read_line(server, "server"))
        storm = json.loads(_read_line(load, "load client"))
        _finish(load, "load client")
        _finish(server, "server")
    finally:
        for process in (server, load):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    if storm["handshakes"] <= 0 or served["handshakes"] <= 0:
        raise BenchmarkError(f"no handshake completed in the window: {storm} {served}")
    metrics = {
        "handshakes_per_s": storm["handshakes"] / settings.window,
        "probe_p50_ms": probe["p50_ms"],
        "probe_p99_ms": probe["p99_ms"],
        "loop_cpu_us": served["loop_cpu_s"] / served["handshakes"] * 1e6,
        "process_cpu_us": served["process_cpu_s"] / served["handshakes"] * 1e6,
        "server_cores": served["process_cpu_s"] / served["window_s"],
        "load_cores": storm["cpu_s"] / settings.window,
        "load_cpu_us": storm["cpu_s"] / storm["handshakes"] * 1e6,
    }
    metrics["ceiling_per_s"] = CORES * 1e6 / (metrics["process_cpu_us"] + metrics["load_cpu_us"])
    # The 1-minute load average after the window: other work on the machine shows here.
    loadavg = os.getloadavg()[0]
    return {"metrics": metrics, "server": served, "load": storm, "probe": probe, "loadavg": loadavg}


# --------------------------------------------------------------- the run


def summary_json(values: Sequence[float]) -> dict[str, Any]:
    return {"rounds": list(values), **asdict(Summary.of(values))}


def compile_c_client(directory: Path) -> Path:
    """storm_client.c, built with the system's C compiler against its OpenSSL."""
    binary = directory / "storm_client"
    compiler = os.environ.get("CC", "cc")
    command = [
        *shlex.split(compiler),
        *("-O2", "-o", str(binary), str(C_CLIENT_SOURCE), "-lssl", "-lcrypto"),
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise BenchmarkError(f"--client c needs a C compiler ({compiler}): {error}") from None
    except subprocess.CalledProcessError as error:
        raise BenchmarkError(
            f"--client c: compiling {C_CLIENT_SOURCE.name} failed (are the OpenSSL headers,"
            f" e.g. libssl-dev, installed?):\n{error.stderr}"
        ) from None
    return binary


def run(
    certs: Sequence[Cert], modes: Sequence[str], settings: Settings, clients: int | None
) -> dict[str, Any]:
    results: dict[str, Any] = {
        cert.id: {"label": cert.label, "clients": clients or cert.clients, "rounds": []}
        for cert in certs
    }
    with tempfile.TemporaryDirectory(prefix="trio-membio-offload-") as directory:
        if settings.client == "c":
            settings = dataclasses.replace(settings, c_client=compile_c_client(Path(directory)))
        pki_dirs = {}
        for cert in certs:
            log(f"certificate {cert.label}...")
            pki_dirs[cert.id] = create_pki(cert.id, Path(directory) / cert.id).ca_pem.parent
        for index in range(settings.rounds):
            order = list(modes) if index % 2 == 0 else list(reversed(modes))
            for cert in certs:
                entry = results[cert.id]
                measured = {
                    mode: measure(pki_dirs[cert.id], mode, entry["clients"], settings)
                    for mode in order
                }
                entry["rounds"].append({"order": order, **measured})
                values = ", ".join(
                    f"{mode} {measured[mode]['metrics']['handshakes_per_s']:.0f}/s"
                    f" p50 {measured[mode]['metrics']['probe_p50_ms']:.2f} ms"
                    for mode in modes
                )
                log(f"round {index + 1}/{settings.rounds} {cert.label}: {values}")
    for entry in results.values():
        entry["metrics"] = summarise(entry["rounds"], modes)
    return results


def summarise(rounds: list[dict[str, Any]], modes: Sequence[str]) -> dict[str, Any]:
    summaries: dict[str, Any] = {}
    for metric in METRICS:
        per_mode = {mode: [r[mode]["metrics"][metric.id] for r in rounds] for mode in modes}
        item: dict[str, Any] = {
            "title": metric.title,
            "unit": metric.unit,
            "higher_is_better": metric.higher_is_better,
            **{mode: summary_json(values) for mode, values in per_mode.items()},
        }
        if set(MODES) <= set(modes):
            ratios = [o / i for o, i in zip(per_mode["offload"], per_mode["inline"], strict=True)]
            item["ratio"] = summary_json(ratios)
        summaries[metric.id] = item
    return summaries


def _number(entry: dict[str, Any]) -> str:
    def fmt(value: float) -> str:
        return f"{value:.3g}" if value < 100 else f"{value:,.0f}"

    return f"{fmt(entry['median'])} ({fmt(entry['min'])}-{fmt(entry['max'])})"


def _ratio(entry: dict[str, Any]) -> str:
    return f"{entry['median']:.2f}x ({entry['min']:.2f}-{entry['max']:.2f})"


def targets_for(cert: str, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for target in TARGETS:
        if target.cert == cert and "ratio" in metrics[target.metric]:
            ratio = metrics[target.metric]["ratio"]["median"]
            found.append(
                {
                    "metric": target.metric,
                    "target": target.describe(),
                    "ratio": ratio,
                    "met": target.met(ratio),
                }
            )
    return found


def table(cert: str, entry: dict[str, Any], modes: Sequence[str], rounds: int) -> str:
    metrics = entry["metrics"]
    targets = {t["metric"]: t for t in targets_for(cert, metrics)}
    both = "ratio" in metrics[METRICS[0].id]
    header = ["metric", *modes, *(["offload/inline", "target"] if both else [])]
    rows = [header]
    for metric in METRICS:
        item = metrics[metric.id]
        row = [f"{metric.title} ({metric.unit})", *(_number(item[mode]) for mode in modes)]
        if both:
            target = targets.get(metric.id)
            verdict = (
                f"{target['target']}: {'met' if target['met'] else 'NOT MET'}" if target else ""
            )
            row += [_ratio(item["ratio"]), verdict]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    errors = sum(r[mode]["load"]["errors"] for r in entry["rounds"] for mode in modes)
    failures = sum(r[mode]["server"]["failures"] for r in entry["rounds"] for mode in modes)
    lines = [
        f"{entry['label']}, {entry['clients']} clients"
        f" (medians over {rounds} rounds, min-max in brackets)",
        *(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ),
    ]
    if "offload" in modes:
        shares = [
            r["offload"]["server"]["offloaded_steps"] / r["offload"]["server"]["handshakes"]
            for r in entry["rounds"]
        ]
        share = Summary.of(shares)
        lines.append(
            f"offload mode: steps run in the worker threads per handshake {share.median:.2f}"
            f" ({share.min:.2f}-{share.max:.2f}); the policy keeps the others inline"
        )
    if both:
        # What the handshakes/s ratio could be at best: offload at its CPU ceiling, per round.
        best = [
            r["offload"]["metrics"]["ceiling_per_s"] / r["inline"]["metrics"]["handshakes_per_s"]
            for r in entry["rounds"]
        ]
        lines.append(
            f"offload's CPU ceiling / inline's handshakes/s: {_ratio(summary_json(best))}"
            f" (the handshakes/s ratio cannot exceed it on these {CORES} cores)"
        )
    if errors or failures:
        lines.append(f"(all rounds: {errors} load client errors, {failures} failed handshakes)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every number here")
    parser.add_argument("--rounds", type=int, metavar="N", help="rounds (default 5; quick: 2)")
    parser.add_argument(
        "--window", type=float, metavar="S", help="measurement window (default 3; quick: 0.3)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        metavar="S",
        help="storm before the window (default 0.5; quick: 0.1)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        metavar="N",
        help="concurrent load tasks for every certificate"
        " (default: 64, 16 for RSA-4096, as in issue 14; quick: 8)",
    )
    parser.add_argument(
        "--certs", nargs="+", choices=CERT_IDS, default=list(CERT_IDS), metavar="CERT"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), metavar="MODE")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default=CLIENTS[0],
        help="the load client: blocking ssl sockets in OS threads, or trio.SSLStream tasks"
        f" (default {CLIENTS[0]}, the lighter per handshake)",
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "clients"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    for name in ("window", "warmup"):
        value = getattr(args, name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            parser.error(f"--{name} must be a non-negative number of seconds")
    if args.window is not None and args.window == 0:
        parser.error("--window must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "offload" in args.modes and not offload_available():
        log("this trio_membio has no offload_handshake option: run with --modes inline")
        return 2
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    from bench import source_commit, versions

    commit = source_commit()  # before the run: the code measured
    settings = Settings(
        window=args.window if args.window is not None else (0.3 if args.quick else 3.0),
        warmup=args.warmup if args.warmup is not None else (0.1 if args.quick else 0.5),
        rounds=args.rounds or (2 if args.quick else 5),
        client=args.client,
    )
    clients = args.clients or (8 if args.quick else None)
    modes = [mode for mode in MODES if mode in args.modes]
    certs = [cert for cert in CERTS if cert.id in args.certs]
    results = run(certs, modes, settings, clients)
    elapsed = time.perf_counter() - started
    for cert in certs:
        print(table(cert.id, results[cert.id], modes, settings.rounds))
        print()
    print(
        f"load client: {CLIENT_LABELS[settings.client]}; probe: trio.SSLStream;"
        f" TLS 1.3 full handshakes; window"
        f" {settings.window:g} s after {settings.warmup:g} s warm-up; probe every"
        f" {PROBE_INTERVAL * 1e3:g} ms"
    )
    if args.quick:
        print("--quick: a smoke run; its numbers and verdicts mean nothing")
    print(
        f"total time: {elapsed:.1f} s ({settings.rounds} rounds{', quick' if args.quick else ''})"
    )
    if args.json is not None:
        for cert in certs:
            results[cert.id]["targets"] = targets_for(cert.id, results[cert.id]["metrics"])
        document = {
            "benchmark": "handshake-offload",
            "date": date,
            "commit": commit,
            "versions": versions(),
            "argv": sys.argv[1:] if argv is None else argv,
            "quick": args.quick,
            "modes": modes,
            "load_client": CLIENT_LABELS[settings.client],
            "probe_interval_s": PROBE_INTERVAL,
            "total_seconds": elapsed,
            **{key: value for key, value in asdict(settings).items() if key != "c_client"},
            "certs": results,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_server"]:
        trio.run(_server, Path(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:2] == ["_load"]:
        _load(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(main())
