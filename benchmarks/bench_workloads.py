"""The workloads: which implementations run each one, with which sizes.

A workload is a context manager (it may start receiver processes) yielding one
runner per implementation; a runner is called with ``warmup=True`` once, then
once per round, and returns a :class:`Measurement`. Each runner starts its own
event loop (``trio.run``, ``asyncio.run``) or threads, so no state is shared
between implementations except the two SSL contexts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import bench_asyncio
import bench_memory
import bench_sync
import bench_trio
import trio
from bench_common import Contexts, Measurement
from bench_remote import remote_receiver, trio_impl

MiB = 1 << 20
Runner = Callable[[bool], Measurement]  # called with warmup=True once, then per round
Runners = dict[str, Runner]
TRIO_FAMILY = ("membio", "trio_ssl", "anyio", "plain_trio", "floor")


@dataclass(frozen=True)
class Sizes:
    bulk: int
    bulk_warmup: int
    bulk_memory: int
    pings: int
    handshakes: int
    idle_pairs: int


FULL = Sizes(
    bulk=256 * MiB,
    bulk_warmup=16 * MiB,
    bulk_memory=64 * MiB,
    pings=20_000,
    handshakes=500,
    idle_pairs=1000,
)
QUICK = Sizes(
    bulk=4 * MiB, bulk_warmup=1 * MiB, bulk_memory=4 * MiB, pings=500, handshakes=20, idle_pairs=50
)


@dataclass
class Env:
    contexts: Contexts
    sizes: Sizes
    rounds: int
    available: dict[str, bool]

    def trio_impls(self) -> dict[str, bench_trio.TrioImpl[Any]]:
        return {name: trio_impl(name) for name in TRIO_FAMILY if self.available[name]}


# ------------------------------------------------------------------- workloads


def trio_runners(
    env: Env,
    fn: Callable[..., Awaitable[Measurement]],
    amount: Callable[[bool], int],
    only: tuple[str, ...] = TRIO_FAMILY,
    ports: dict[str, int] | None = None,
) -> Runners:
    """``trio.run(fn, impl, contexts, amount(warmup)[, port])`` for each trio-family impl."""

    def runner(name: str, impl: bench_trio.TrioImpl[Any]) -> Runner:
        extra = () if ports is None else (ports[name],)

        def run(warmup: bool) -> Measurement:
            result: Measurement = trio.run(fn, impl, env.contexts, amount(warmup), *extra)
            return result

        return run

    return {name: runner(name, impl) for name, impl in env.trio_impls().items() if name in only}


def bulk_size(env: Env, *, memory: bool = False) -> Callable[[bool], int]:
    full = env.sizes.bulk_memory if memory else env.sizes.bulk
    return lambda warmup: min(env.sizes.bulk_warmup, full) if warmup else full


def ping_count(env: Env) -> Callable[[bool], int]:
    return lambda warmup: max(env.sizes.pings // 10, 10) if warmup else env.sizes.pings


def handshake_count(env: Env) -> Callable[[bool], int]:
    return lambda warmup: max(env.sizes.handshakes // 10, 5) if warmup else env.sizes.handshakes


@contextlib.contextmanager
def bulk_tcp(env: Env) -> Iterator[Runners]:
    c, size = env.contexts, bulk_size(env)
    runners = trio_runners(env, bench_trio.bulk_tcp, size)
    runners["asyncio"] = lambda w: bench_asyncio.bulk_tcp(c, size(w))
    runners["blocking"] = lambda w: bench_sync.bulk_tcp(c, size(w))
    runners["pump"] = lambda w: bench_sync.pump_bulk(c, size(w))
    yield runners


@contextlib.contextmanager
def bulk_tcp_2proc(env: Env) -> Iterator[Runners]:
    c, size = env.contexts, bulk_size(env)
    with contextlib.ExitStack() as stack:
        ports = {
            name: stack.enter_context(remote_receiver(name, env.rounds + 1, c.pki.ca_pem.parent))
            for name in (*env.trio_impls(), "asyncio", "blocking")
        }
        runners = trio_runners(env, bench_trio.bulk_tcp, size, ports=ports)
        runners["asyncio"] = lambda w: bench_asyncio.bulk_tcp(c, size(w), ports["asyncio"])
        runners["blocking"] = lambda w: bench_sync.bulk_tcp(c, size(w), ports["blocking"])
        yield runners


@contextlib.contextmanager
def bulk_memory(env: Env) -> Iterator[Runners]:
    c, size = env.contexts, bulk_size(env, memory=True)
    runners = trio_runners(env, bench_trio.bulk_memory, size)
    runners["pump"] = lambda w: bench_sync.pump_bulk(c, size(w))
    yield runners


@contextlib.contextmanager
def ping_pong(env: Env) -> Iterator[Runners]:
    c, count = env.contexts, ping_count(env)
    runners = trio_runners(env, bench_trio.ping_pong, count)
    runners["asyncio"] = lambda w: bench_asyncio.ping_pong(c, count(w))
    runners["blocking"] = lambda w: bench_sync.ping_pong(c, count(w))
    runners["pump"] = lambda w: bench_sync.pump_ping_pong(c, count(w))
    yield runners


@contextlib.contextmanager
def handshake_full(env: Env) -> Iterator[Runners]:
    c, count = env.contexts, handshake_count(env)
    runners = trio_runners(env, partial(bench_trio.handshakes, resume=False), count)
    runners["asyncio"] = lambda w: bench_asyncio.handshakes(c, count(w))
    runners["blocking"] = lambda w: bench_sync.handshakes(c, count(w), resume=False)
    runners["pump"] = lambda w: bench_sync.pump_handshakes(c, count(w), resume=False)
    yield runners


@contextlib.contextmanager
def handshake_resumed(env: Env) -> Iterator[Runners]:
    c, count = env.contexts, handshake_count(env)
    resumable = tuple(name for name, impl in env.trio_impls().items() if impl.resumption is None)
    runners = trio_runners(env, partial(bench_trio.handshakes, resume=True), count, resumable)
    runners["blocking"] = lambda w: bench_sync.handshakes(c, count(w), resume=True)
    runners["pump"] = lambda w: bench_sync.pump_handshakes(c, count(w), resume=True)
    yield runners


def _resumption_skips(env: Env) -> dict[str, str]:
    skips = {
        name: impl.resumption
        for name, impl in env.trio_impls().items()
        if impl.resumption is not None
    }
    skips["asyncio"] = bench_asyncio.RESUMPTION
    return skips


@contextlib.contextmanager
def idle_memory(env: Env) -> Iterator[Runners]:
    pairs = env.sizes.idle_pairs
    yield trio_runners(env, bench_memory.idle_connections, lambda w: 10 if w else pairs)


PEAK_IMPLS = ("membio", "trio_ssl", "anyio")


def send_peak(nbytes: int) -> Callable[[Env], contextlib.AbstractContextManager[Runners]]:
    @contextlib.contextmanager
    def setup(env: Env) -> Iterator[Runners]:
        count = sum(name in PEAK_IMPLS for name in env.trio_impls())
        pki_dir = env.contexts.pki.ca_pem.parent
        with remote_receiver("blocking", (env.rounds + 1) * count, pki_dir) as port:
            ports = dict.fromkeys(PEAK_IMPLS, port)
            yield trio_runners(env, peak, lambda w: nbytes, PEAK_IMPLS, ports)

    async def peak(
        impl: bench_trio.TrioImpl[Any], contexts: Contexts, nbytes: int, port: int
    ) -> Measurement:
        return await bench_memory.send_peak(impl, contexts, port, nbytes)

    return setup


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    unit: str
    higher_is_better: bool
    description: str
    setup: Callable[[Env], contextlib.AbstractContextManager[Runners]]
    params: Callable[[Env], dict[str, Any]]
    skips: Callable[[Env], dict[str, str]] = lambda env: {}


NOT_TRIO_MEMORY = "not a trio stream over memory_stream_pair"


def _peak_skips() -> dict[str, str]:
    return {
        **dict.fromkeys(("asyncio", "blocking", "pump"), "only the trio-family TLS streams"),
        "plain_trio": "no TLS",
        "floor": "the floor sends the whole payload in one SSLObject.write",
    }


def _bulk_params(env: Env) -> dict[str, Any]:
    return {"bytes": env.sizes.bulk, "send_size": 65536, "receive_size": 65536}


WORKLOADS = (
    Workload(
        "bulk-tcp",
        "bulk one way over loopback TCP, both ends in one process",
        "MiB/s",
        True,
        "The client sends the payload in 64 KiB send_all calls; the server checks every byte"
        " and acknowledges; the clock runs from the server's READY to its acknowledgement."
        " trio family and asyncio: one event loop; blocking: a server thread; pump: no I/O.",
        bulk_tcp,
        _bulk_params,
    ),
    Workload(
        "bulk-tcp-2proc",
        "bulk one way over loopback TCP, the receiver in a second process",
        "MiB/s",
        True,
        "As bulk-tcp, with the receiving end (same implementation) in another process.",
        bulk_tcp_2proc,
        _bulk_params,
        lambda env: {"pump": "no I/O: nothing to put in another process"},
    ),
    Workload(
        "bulk-memory",
        "bulk one way over trio.testing.memory_stream_pair",
        "MiB/s",
        True,
        "As bulk-tcp over trio.testing.memory_stream_pair (how the fuzz tests run), with a"
        " smaller payload: that pair never blocks a sender, so the sender runs ahead and the"
        " pair buffers tens of MiB (more, the bigger the transfer), and the numbers depend on"
        " the size. anyio's TLSStream runs over the same pair through an anyio ByteStream"
        " adapter, since anyio's memory object streams (whole objects, another buffering"
        " model) are not comparable.",
        bulk_memory,
        lambda env: {**_bulk_params(env), "bytes": env.sizes.bulk_memory},
        lambda env: {
            "asyncio": "no in-memory trio transport",
            "blocking": "no in-memory trio transport",
        },
    ),
    Workload(
        "ping-pong",
        "64-byte request and response over loopback TCP",
        "round trips/s",
        True,
        "A fixed number of 64-byte requests, each waiting for the 64-byte response.",
        ping_pong,
        lambda env: {"round_trips": env.sizes.pings, "message_size": 64},
    ),
    Workload(
        "handshake-full",
        "full TLS 1.3 handshakes (ECDSA P-256) over loopback TCP",
        "handshakes/s",
        True,
        "Sequential connections: TCP connect, full handshake, the client reads one byte"
        " (which also delivers the session tickets), close_notify, close. 'trio, no TLS' is"
        " the same without TLS (the cost of the TCP part); the pump has no TCP and no close.",
        handshake_full,
        lambda env: {"connections": env.sizes.handshakes, "transport": "loopback TCP"},
    ),
    Workload(
        "handshake-resumed",
        "resumed TLS 1.3 handshakes over loopback TCP",
        "handshakes/s",
        True,
        "As handshake-full, each connection resuming the session (ticket) that the previous"
        " connection received; every connection is checked to have resumed.",
        handshake_resumed,
        lambda env: {"connections": env.sizes.handshakes, "transport": "loopback TCP"},
        _resumption_skips,
    ),
    Workload(
        "idle-memory",
        "Python heap per idle established stream (tracemalloc, memory_stream_pair)",
        "bytes/stream",
        False,
        "Traced growth for N established pairs (one byte moved each way, then idle) divided"
        " by 2N: per stream, including its half of the memory_stream_pair; 'trio, no TLS' is"
        " the bare memory_stream_pair. OpenSSL's own (C) allocations are not traced.",
        idle_memory,
        lambda env: {"pairs": env.sizes.idle_pairs, "transport": "memory_stream_pair"},
        lambda env: dict.fromkeys(("asyncio", "blocking", "pump"), NOT_TRIO_MEMORY),
    ),
    Workload(
        "send-peak-1MiB",
        "peak extra Python heap during one send_all(1 MiB) (tracemalloc)",
        "bytes",
        False,
        "tracemalloc peak during the call minus traced memory just before it; over loopback"
        " TCP to a blocking-ssl receiver in another process.",
        send_peak(1 * MiB),
        lambda env: {"bytes": 1 * MiB, "transport": "loopback TCP, receiver in a process"},
        lambda env: _peak_skips(),
    ),
    Workload(
        "send-peak-64MiB",
        "peak extra Python heap during one send_all(64 MiB) (tracemalloc)",
        "bytes",
        False,
        "As send-peak-1MiB with 64 MiB.",
        send_peak(64 * MiB),
        lambda env: {"bytes": 64 * MiB, "transport": "loopback TCP, receiver in a process"},
        lambda env: _peak_skips(),
    ),
)

WORKLOAD_IDS = tuple(workload.id for workload in WORKLOADS)
