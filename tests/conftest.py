"""Hypothesis profiles, and the fixtures several test modules share.

Hypothesis profiles: pick one with HYPOTHESIS_PROFILE (default "ci").

- ``ci``: derandomized (the same examples on every run), few examples, no
  deadline, failing examples printed as a reproduction blob, no "explain"
  phase (see below). The default, so that the plain test run stays fast and
  deterministic.
- ``dev``: hypothesis's defaults (100 random examples, saved to .hypothesis/).
- ``fuzz``: a campaign: 10,000 random examples per property, no deadline, no
  "explain" phase; failures are saved to the example database (.hypothesis/)
  and replayed first on the next run. ``nox -s fuzz`` uses it.

HYPOTHESIS_MAX_EXAMPLES=N overrides the profile's number of examples, to fit
a campaign into the time at hand.

Each property test runs its examples under trio's autojump clock with a
virtual deadline, so hypothesis's wall-clock deadline is off everywhere.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import trio
import trio.testing

if os.environ.get("TRIO_MEMBIO_TEST_OFFLOAD") == "1":
    # Offload mode (see the end of this file): handshake steps run in worker
    # threads, and "every task is blocked" no longer means the system is
    # quiet. Tests synchronise with wait_all_tasks_blocked(), so it also waits
    # for the steps in flight. Patched before any test module imports it.
    from trio_membio import _offload

    _steps_idle = threading.Condition()
    _steps_running = 0  # submitted to the pool and not finished
    _submit = _offload._pool.submit

    def _counted_submit(job: Callable[[], None]) -> None:
        global _steps_running

        def counted_job() -> None:
            global _steps_running
            try:
                job()
            finally:
                with _steps_idle:
                    _steps_running -= 1
                    _steps_idle.notify_all()

        with _steps_idle:
            _steps_running += 1
        _submit(counted_job)

    def _wait_steps_idle() -> None:
        with _steps_idle:
            _steps_idle.wait_for(lambda: _steps_running == 0, timeout=10)

    _offload._pool.submit = _counted_submit  # type: ignore[method-assign]  # test mode only
    _wait_all_tasks_blocked = trio.testing.wait_all_tasks_blocked

    async def _wait_all_tasks_and_steps(cushion: float = 0.0) -> None:
        while True:
            await _wait_all_tasks_blocked(cushion)
            if _steps_running == 0:
                return
            await trio.to_thread.run_sync(_wait_steps_idle)

    trio.testing.wait_all_tasks_blocked = _wait_all_tasks_and_steps
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from .cli_harness import write_pems

# The explain phase reruns a failing example hundreds of times to say which
# parts matter; with a TLS conversation per example that takes many minutes.
_NO_EXPLAIN = [phase for phase in Phase if phase is not Phase.explain]

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=30,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
    phases=_NO_EXPLAIN,
)
settings.register_profile("dev", deadline=None)
settings.register_profile(
    "fuzz",
    max_examples=10_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
    phases=_NO_EXPLAIN,
)
_profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if "HYPOTHESIS_MAX_EXAMPLES" in os.environ:
    # A time-boxed campaign: the profile's settings with fewer (or more) examples.
    settings.register_profile(
        f"{_profile}-sized",
        parent=settings.get_profile(_profile),
        max_examples=int(os.environ["HYPOTHESIS_MAX_EXAMPLES"]),
    )
    _profile = f"{_profile}-sized"
settings.load_profile(_profile)


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, str]:
    """PEM files for the command-line tests (see cli_harness.write_pems)."""
    return write_pems(tmp_path)


# TRIO_MEMBIO_TEST_OFFLOAD=1: every server-side MemoryBIOStream offloads its
# expensive handshake step to a worker thread, whatever the step costs, so that
# the contract and fault-model tests run in that mode too (tests/test_offload.py
# runs them so).
if os.environ.get("TRIO_MEMBIO_TEST_OFFLOAD") == "1":

    @pytest.fixture(autouse=True)
    def _offload_every_server_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
        from trio_membio import _offload, _stream

        original = _stream.MemoryBIOStream.__init__

        def offloading_init(self: object, *args: object, **kwargs: object) -> None:
            if kwargs.get("server_side"):
                kwargs.setdefault("offload_handshake", True)
            original(self, *args, **kwargs)  # type: ignore[arg-type, type-var]  # forwarded as given

        monkeypatch.setattr(_stream.MemoryBIOStream, "__init__", offloading_init)
        monkeypatch.setattr(_offload, "WARM_UP", 0)
        monkeypatch.setattr(_offload, "RESAMPLE", 1 << 62)
        monkeypatch.setattr(_offload, "OFFLOAD_ABOVE", -1.0)

    @pytest.fixture
    def autojump_clock() -> trio.testing.MockClock:
        # A step runs in a worker thread while every task waits for it: with
        # a threshold of 0 the clock would jump to the next deadline at once.
        # 50 ms of real idleness first is far longer than any step.
        return trio.testing.MockClock(autojump_threshold=0.05)
