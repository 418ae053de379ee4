"""Task schedules and cancellation points: interleavings as plain data.

Theory of operation
===================

Concurrency bugs hide in particular interleavings. Under trio, the order in
which tasks run is decided by where they block and for how long, so a test
can steer it by making each task pause between its operations: a number of
bare checkpoints (each lets every other runnable task take a step) and a
virtual sleep (under trio's autojump clock, :class:`trio.testing.MockClock`
with ``autojump_threshold=0``, sleeping costs no real time). A
:class:`TaskSchedule` is such a list of pauses, so hypothesis can generate
interleavings, shrink them and print the one that fails. (Trio's own
scheduler is made deterministic while hypothesis is imported, so the same
schedule gives the same run.)

A :class:`CancelPoint` says where to cancel an operation: at once (before it
starts), just before its n-th transport operation (through
:meth:`FaultyStream.cancel_at`, which lands exactly there), or after some
virtual seconds (which lands wherever the task is blocked then).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ._faults import FaultyStream

__all__ = ["CancelPoint", "Pause", "TaskSchedule"]


@dataclass(frozen=True)
class Pause:
    """Some bare checkpoints, then a (virtual) sleep.

    Attributes:
        checkpoints: How many times to yield to the scheduler.
        sleep: Seconds to sleep after that; 0 does not sleep.
    """

    checkpoints: int = 0
    sleep: float = 0.0

    def __post_init__(self) -> None:
        if self.checkpoints < 0 or not self.sleep >= 0:
            raise ValueError("a Pause needs checkpoints >= 0 and sleep >= 0")

    async def wait(self) -> None:
        """Take the pause.

        On cancellation raises :exc:`trio.Cancelled` (from the checkpoint or
        sleep it was in).
        """
        for _ in range(self.checkpoints):
            await trio.lowlevel.checkpoint()
        if self.sleep:
            await trio.sleep(self.sleep)


@dataclass(frozen=True)
class TaskSchedule:
    """The pauses a task takes between its operations, used in turn, cyclically.

    An empty schedule never pauses.
    """

    pauses: tuple[Pause, ...] = ()

    async def pause(self, step: int) -> None:
        """Take the pause for ``step`` (the task's operation number).

        On cancellation raises :exc:`trio.Cancelled`.
        """
        if self.pauses:
            await self.pauses[step % len(self.pauses)].wait()


@dataclass(frozen=True)
class CancelPoint:
    """Where to cancel an operation.

    With neither attribute set, the operation is cancelled before it starts.

    Attributes:
        at_operation: Cancel just before the transport's n-th operation from
            when the point is armed (0 = the next one).
        after_seconds: Cancel after this many (virtual) seconds.
    """

    at_operation: int | None = None
    after_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.at_operation is not None and self.at_operation < 0:
            raise ValueError("at_operation must be at least 0")
        if self.after_seconds is not None and not self.after_seconds >= 0:
            raise ValueError("after_seconds must be at least 0")

    def arm(self, transport: FaultyStream | None = None) -> trio.CancelScope:
        """A cancel scope that cancels at this point; enter it around the operation.

        Must be called inside a trio run (for the deadline). ``transport`` is
        needed for ``at_operation``.

        Raises:
            ValueError: ``at_operation`` is set but ``transport`` is None.
        """
        scope = trio.CancelScope()
        if self.after_seconds is not None:
            scope.deadline = trio.current_time() + self.after_seconds
        if self.at_operation is not None:
            if transport is None:
                raise ValueError("CancelPoint.at_operation needs the FaultyStream transport")
            transport.cancel_at(scope, self.at_operation)
        if self.at_operation is None and self.after_seconds is None:
            scope.cancel()
        return scope
