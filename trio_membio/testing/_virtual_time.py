"""run_in_virtual_time: an async test body, run per call (per hypothesis example) in virtual time.

Theory of operation
===================

A hypothesis property written as an ``async def`` test under pytest-trio
runs every example inside the one ``trio.run`` pytest-trio made for the test,
on the real clock: the kit's fault delays take real seconds, and asking for
pytest-trio's ``autojump_clock`` fixture does not help, because hypothesis
refuses function-scoped fixtures (one clock for all examples) in a @given
test. The cure is a fresh ``trio.run`` with an autojump
``trio.testing.MockClock`` per example, which means a *synchronous* test for
hypothesis to call.

:func:`run_in_virtual_time` makes that synchronous function out of the async
body. Each call is one ``trio.run(body, clock=MockClock(autojump_threshold=0))``
under a virtual-time limit. It works on either side of ``@given``:

- below it (``@given`` applied last), it returns the synchronous function
  that hypothesis then wraps;
- above it, it finds the async body where hypothesis documents it for
  async frameworks (``test.hypothesis.inner_test``) and replaces it there,
  as pytest-trio itself does.

Either way the collected test is no longer a coroutine function, so
pytest-trio leaves it alone (no ``trio.run`` around the examples) and
hypothesis drives it like any synchronous property. hypothesis is not
imported here: the kit stays importable without it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeAlias, cast, overload

import trio

__all__ = ["DEFAULT_VIRTUAL_TIMEOUT", "run_in_virtual_time"]

#: Virtual seconds an example may take before it counts as a hang.
DEFAULT_VIRTUAL_TIMEOUT = 600.0

# What the decorator takes: an async test body, or (above ``@given``) the
# synchronous hypothesis test around one, which is checked at run time. The
# parameters are hypothesis's and pytest's business, hence "...".
_Test: TypeAlias = Callable[..., Awaitable[None] | None]
_SyncTest: TypeAlias = Callable[..., None]


@overload
def run_in_virtual_time(test: _Test, /) -> _SyncTest: ...


@overload
def run_in_virtual_time(
    *, timeout: float = DEFAULT_VIRTUAL_TIMEOUT
) -> Callable[[_Test], _SyncTest]: ...


def run_in_virtual_time(
    test: _Test | None = None,
    /,
    *,
    timeout: float = DEFAULT_VIRTUAL_TIMEOUT,
) -> _SyncTest | Callable[[_Test], _SyncTest]:
    """Run an async test in its own ``trio.run`` on an autojump clock, once per call.

    Use it on an ``async def`` hypothesis property, above or below
    ``@given``; with pytest-trio's ``trio_mode`` the test then runs each
    example in virtual time instead of the whole test in real time::

        @settings(deadline=None)
        @given(plan=fault_plans())
        @run_in_virtual_time
        async def test_echo(plan: FaultPlan) -> None:
            client, server = memory_tls_stream_pair(client_faults=plan)
            ...

    Every call (every example) gets a new ``trio.run`` with
    ``trio.testing.MockClock(autojump_threshold=0)``: sleeps, the kit's
    :class:`~trio_membio.testing.FaultPlan` delays and timeouts cost no real
    time whenever all tasks wait, and ``trio.lowlevel.current_clock()`` inside
    is that clock. pytest fixtures work if they are synchronous; trio's async
    fixtures (``nursery``, ``autojump_clock``) belong to pytest-trio's run,
    which this replaces: open a nursery in the body instead.

    Args:
        test: The async test body. Called with the arguments the call got
            (hypothesis's drawn values, pytest's fixtures).
        timeout: Virtual seconds each call may take; past them the body is
            cancelled and the call fails (a hang, or tasks that wait on each
            other). ``math.inf`` for no limit.

    Returns:
        A synchronous function with the test's signature (or, given only
        ``timeout``, a decorator making one).

    Raises:
        TypeError: ``test`` is not an async function (or a hypothesis test
            of one).
        ValueError: ``timeout`` is not a positive number.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of virtual seconds, not {timeout!r}")

    def decorate(test: _Test) -> _SyncTest:
        hypothesis_handle = getattr(test, "hypothesis", None)
        inner = getattr(hypothesis_handle, "inner_test", None)
        if inner is not None:
            # @given(...) was applied first: swap the body it calls.
            hypothesis_handle.inner_test = _in_virtual_time(inner, timeout)  # type: ignore[union-attr]  # hypothesis's handle: untyped
            return cast("_SyncTest", test)  # the @given wrapper: synchronous
        return _in_virtual_time(test, timeout)

    return decorate if test is None else decorate(test)


def _in_virtual_time(test: _Test, timeout: float) -> _SyncTest:
    if not inspect.iscoroutinefunction(test):
        raise TypeError(
            f"run_in_virtual_time runs an async def test; {test!r} is not one "
            "(a synchronous test needs no trio.run: drop the decorator)"
        )
    body_function = cast("Callable[..., Awaitable[None]]", test)  # checked just above

    @functools.wraps(test)
    def run_each_call(*args: object, **kwargs: object) -> None:
        async def body() -> None:
            with trio.move_on_after(timeout) as scope:
                await body_function(*args, **kwargs)
            if scope.cancelled_caught:
                raise AssertionError(
                    f"{test.__name__} did not finish within {timeout:g} virtual seconds: "
                    "a hang, or tasks waiting on each other (see run_in_virtual_time's timeout)"
                )

        # trio.testing imports pytest when it is installed: not at import time.
        from trio.testing import MockClock

        trio.run(body, clock=MockClock(autojump_threshold=0))

    # functools.wraps points __wrapped__ at the coroutine function, so that
    # hypothesis and pytest see its signature; pytest-trio asks
    # inspect.iscoroutinefunction(), which does not follow __wrapped__ and so
    # leaves this synchronous function to hypothesis and pytest.
    return run_each_call
