"""The server's expensive handshake step, run off the event-loop thread.

Theory of operation
===================

A TLS server's handshake has one expensive step: the ``do_handshake()`` that
answers a complete ClientHello with the server's whole flight, signing with
the certificate's private key (CPU time on this project's 2-core machine:
about 0.22 ms for ECDSA P-256, 0.45 ms for RSA-2048, 5 ms for RSA-4096). On
the event-loop thread that step stalls every other connection of the
process. CPython releases the GIL inside ``SSLObject.do_handshake()``, so the
step can run in another thread while the loop goes on. (The idea, and the
measurements behind the choices below, are issue 14's.)

1. **Only that step.** The final step and resumed handshakes are cheap, and
   crossing threads costs more than they do, so every other step stays
   inline. A stream with ``offload_handshake=True`` offloads at most one step:
   the first whose ClientHello is complete.

2. **Only when it is expensive.** The cost of that step depends on the
   certificate's key, so it is measured per :class:`ssl.SSLContext` (CPU time
   of the step's own thread): the first steps of a context run inline to
   measure (their median seeds a running average that every later step
   updates), one in every ``RESAMPLE`` later ones too, and a step is
   offloaded while the running average exceeds ``OFFLOAD_ABOVE`` seconds. Tracing
   (a ``trace=`` callback) keeps every step inline: the callback would
   otherwise run in a worker thread.

3. **A pool of our own.** ``trio.to_thread.run_sync`` hands each call to a
   fresh or cached thread and costs more than a cheap step. The library keeps
   a few dedicated worker threads (as many as the CPUs, started on first use,
   shared by every stream of the process, stopped at interpreter exit), fed
   by a queue; a finished step wakes its task through the trio token, and
   steps finishing before the loop has taken the wake-up join it (one
   wake-up, not one per step). On Linux the workers run
   at a lower priority: with as many workers as cores at the loop's own
   priority, they competed with the loop for the cores and established
   connections waited longer (docs/performance.md has the measurements).

4. **Never abandoned.** A step cannot be interrupted, and the worker would
   race any cleanup on the same SSLObject, so its task waits for it shielded:
   a cancellation takes effect when the step ends, and the handshake is then
   exactly where the step left it, as if it had run inline. While the step
   runs, nothing else touches that engine: the driver holds the handshake
   (other tasks wait for its outcome), ``aclose()`` waits for the step
   (bounded by the step) before it closes, and the accessors that would call
   into OpenSSL answer without it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Final

import trio

from ._engine import TLSEngine

__all__ = ["HandshakeOffload"]

#: Offload the step while its average cost (seconds of CPU) is above this:
#: between ECDSA P-256's (about 0.22 ms here) and RSA-2048's (about 0.45 ms).
OFFLOAD_ABOVE: Final = 0.00035
#: Steps of a context measured inline before deciding.
WARM_UP: Final = 3
#: Then one in this many is measured inline again, to follow changes.
RESAMPLE: Final = 64
#: Worker threads: as many as the cores, at a lower scheduling priority
#: (WORKER_NICENESS, Linux) so that the event loop gets a core first.
WORKERS: Final = os.cpu_count() or 2
WORKER_NICENESS: Final = 10
#: Weight of a new measurement in the running average.
SMOOTHING: Final = 0.1


class _StepCost:
    """The running average cost of one context's expensive step."""

    __slots__ = ("_warm_up", "average", "decisions", "offloaded", "steps")

    def __init__(self) -> None:
        self.average = 0.0
        self.steps = 0  # measured
        self.decisions = 0
        self.offloaded = 0  # steps sent to the pool (the benchmark reports it)
        self._warm_up: list[float] = []

    def add(self, seconds: float) -> None:
        if self.steps < WARM_UP or self.steps == 0:
            # The median of the first steps: a context's first step costs up to
            # twice the next ones (cold caches, the key's lazy set-up), and as
            # the seed of the running average it would offload an ECDSA
            # context's steps for the next twenty or so.
            self._warm_up.append(seconds)
            # One sorted copy: runs in other threads may share the context.
            samples = sorted(self._warm_up)
            self.average = samples[len(samples) // 2]
        else:
            self._warm_up.clear()
            self.average += SMOOTHING * (seconds - self.average)
        self.steps += 1

    def offload_next(self) -> bool:
        self.decisions += 1
        if self.steps < WARM_UP or self.decisions % RESAMPLE == 0:
            return False  # measure inline
        if self.average > OFFLOAD_ABOVE:
            self.offloaded += 1
            return True
        return False


_costs: weakref.WeakKeyDictionary[object, _StepCost] = weakref.WeakKeyDictionary()


class _Step:
    """One do_handshake() call handed to a worker thread."""

    __slots__ = ("cost", "done", "engine", "error", "finished", "token")

    def __init__(self, engine: TLSEngine) -> None:
        self.engine = engine
        self.token = trio.lowlevel.current_trio_token()
        self.done = trio.Event()
        self.finished = False
        self.error: BaseException | None = None
        self.cost = 0.0

    def run(self) -> None:
        """In a worker thread: the step, then wake the task that waits for it."""
        started = time.thread_time()
        try:
            self.finished = self.engine.do_handshake()
        except BaseException as exc:  # handed to the waiting task, raised there
            self.error = exc
        self.cost = time.thread_time() - started
        _deliveries.hand_back(self)


class _Deliveries:
    """Finished steps handed back to their trio runs: one wake-up per batch.

    A worker that finishes a step while an earlier finished step of the same
    run still waits for the loop adds it to that batch instead of waking the
    loop again: each wake-up is a socket write and a round of GIL hand-offs
    between the worker and the loop, which the loop pays for under load.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[trio.lowlevel.TrioToken, list[_Step]] = {}

    def hand_back(self, step: _Step) -> None:
        """In a worker thread: ``step`` has finished."""
        token = step.token
        with self._lock:
            batch = self._waiting.get(token)
            if batch is not None:
                batch.append(step)  # a wake-up is on its way
                return
            self._waiting[token] = [step]
        try:
            token.run_sync_soon(self._deliver, token)
        except trio.RunFinishedError:  # the run ended meanwhile: nobody waits any more
            with self._lock:
                self._waiting.pop(token, None)

    def _deliver(self, token: trio.lowlevel.TrioToken) -> None:
        """In the trio thread: wake the tasks of every step finished since the wake-up."""
        with self._lock:
            batch = self._waiting.pop(token, [])
        for step in batch:
            step.done.set()


_deliveries = _Deliveries()


class _WorkerPool:
    """A few daemon threads running queued steps; started on first use."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        if not self._threads:
            self._start()
        self._jobs.put(job)

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for number in range(WORKERS):
                thread = threading.Thread(
                    target=self._work, name=f"trio_membio handshake worker {number}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            atexit.register(self.shutdown)

    def _work(self) -> None:
        if sys.platform == "linux":
            # On Linux a thread is a task of its own: this lowers only this
            # thread's priority, so the loop thread is scheduled first.
            with contextlib.suppress(OSError):
                os.setpriority(
                    os.PRIO_PROCESS,
                    threading.get_native_id(),
                    os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS,
                )
        while (job := self._jobs.get()) is not None:
            job()

    def shutdown(self) -> None:
        """Stop the threads once the queued steps are done (at interpreter exit)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join(timeout=1.0)


_pool = _WorkerPool()


class HandshakeOffload:
    """One server stream's decision and state for offloading its expensive step.

    ``running`` is set while a step runs in a worker thread: nothing else may
    touch the engine then (rule 4).
    """

    __slots__ = ("_cost", "_used", "running")

    def __init__(self, context: object) -> None:
        cost = _costs.get(context)
        if cost is None:
            cost = _costs[context] = _StepCost()
        self._cost = cost
        self._used = False
        self.running: trio.Event | None = None

    async def do_handshake(self, engine: TLSEngine) -> bool:
        """``engine.do_handshake()``, in a worker thread when rule 1 and 2 say so."""
        if self._used or not engine.client_hello_complete:
            return engine.do_handshake()
        self._used = True
        cost = self._cost
        if not cost.offload_next():
            started = time.thread_time()
            try:
                return engine.do_handshake()
            finally:
                cost.add(time.thread_time() - started)
        step = _Step(engine)
        self.running = step.done
        try:
            _pool.submit(step.run)
            with trio.CancelScope(shield=True):
                await step.done.wait()
        finally:
            self.running = None
        cost.add(step.cost)
        await trio.lowlevel.checkpoint_if_cancelled()  # rule 4: now, not during the step
        if step.error is not None:
            raise step.error
        return step.finished
