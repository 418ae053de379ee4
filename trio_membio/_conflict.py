"""Detect two tasks calling a method that allows only one at a time."""

from __future__ import annotations

from types import TracebackType

import trio

__all__ = ["ConflictDetector"]


class ConflictDetector:
    """A context manager that raises BusyResourceError on overlapping use.

    Unlike a lock it never waits: trio's stream contract says two tasks
    sending (or two receiving) at once is a bug in the caller, to be reported,
    not serialised.
    """

    __slots__ = ("in_use", "message")

    def __init__(self, message: str) -> None:
        self.message = message
        #: Whether a task is inside the guarded section right now. The hot
        #: paths of MemoryBIOStream test and set it directly instead of
        #: entering the context manager: it is the same protocol, cheaper.
        self.in_use = False

    def __enter__(self) -> None:
        if self.in_use:
            raise trio.BusyResourceError(self.message)
        self.in_use = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.in_use = False
