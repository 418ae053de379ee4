"""Hypothesis strategies for fault plans, chunkings, schedules and cancellations.

Theory of operation
===================

Every value here is plain data from :mod:`trio_membio.testing`, so a failing
example prints as a readable constructor call and shrinks towards the
simplest misbehaviour: chunk sizes towards 1, delays and offsets towards 0,
optional faults towards absent. Faults that change what a correct program
observes (corruption, an early end, hangs, errors, per-direction errors) are
off unless asked for,
so ``fault_plans()`` alone only reorders time and fragments bytes, and any
test of "the data arrives intact" may use it.

Delays are drawn in whole milliseconds and meant for trio's autojump clock.

Importing this module needs hypothesis (``pip install 'trio-membio[test]'``).
"""

from __future__ import annotations

import dataclasses

import trio

try:
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - depends on the installation
    raise ImportError(
        "trio_membio.testing.strategies needs hypothesis: pip install 'trio-membio[test]'"
    ) from None

from ._pairs import TLSVersion
from ._plan import Corruption, FaultPlan
from ._schedule import CancelPoint, Pause, TaskSchedule

__all__ = [
    "cancel_points",
    "chunkings",
    "corruptions",
    "delays",
    "fault_plans",
    "messages",
    "pauses",
    "task_schedules",
    "tls_versions",
]


def tls_versions() -> st.SearchStrategy[TLSVersion]:
    """ "1.2" or "1.3" (shrinks towards "1.3", the default)."""
    return st.sampled_from(("1.3", "1.2"))


def chunkings(
    *, max_size: int = 2048, max_chunks: int = 8, allow_empty: bool = True
) -> st.SearchStrategy[tuple[int, ...]]:
    """Chunk sizes for ``FaultPlan.send_chunks`` / ``receive_chunks``.

    Args:
        max_size: The largest chunk.
        max_chunks: The most sizes in one chunking (they are used cyclically).
        allow_empty: Whether ``()`` (no chunking) may be drawn.
    """
    return st.lists(
        st.integers(min_value=1, max_value=max_size),
        min_size=0 if allow_empty else 1,
        max_size=max_chunks,
    ).map(tuple)


def delays(
    *, max_seconds: float = 1.0, max_delays: int = 4
) -> st.SearchStrategy[tuple[float, ...]]:
    """Delays in whole milliseconds for ``FaultPlan.send_delays`` / ``receive_delays``."""
    milliseconds = st.integers(min_value=0, max_value=int(max_seconds * 1000))
    return st.lists(milliseconds.map(lambda ms: ms / 1000), max_size=max_delays).map(tuple)


def corruptions(*, max_offset: int) -> st.SearchStrategy[Corruption]:
    """One changed byte at an offset in ``[0, max_offset]``: flipped bits, or a new value."""
    offsets = st.integers(min_value=0, max_value=max_offset)
    return st.one_of(
        st.builds(Corruption, offset=offsets, xor=st.integers(min_value=1, max_value=255)),
        st.builds(Corruption, offset=offsets, value=st.integers(min_value=0, max_value=255)),
    )


def fault_plans(
    *,
    chunking: bool = True,
    delay: bool = True,
    max_chunk: int = 2048,
    max_delay: float = 0.5,
    corrupt_sent: int = 0,
    corrupt_received: int = 0,
    eof: bool = False,
    hangs: bool = False,
    errors: tuple[type[Exception], ...] = (),
    direction_errors: tuple[type[BaseException], ...] = (),
    max_offset: int = 65536,
    max_operation: int = 32,
) -> st.SearchStrategy[FaultPlan]:
    """Fault plans; by default only chunking and delays (data arrives intact).

    Args:
        chunking: Draw ``send_chunks`` and ``receive_chunks``.
        delay: Draw ``send_delays`` and ``receive_delays``.
        max_chunk: The largest chunk size.
        max_delay: The longest delay, in seconds.
        corrupt_sent: The most corrupted bytes in the sent stream.
        corrupt_received: The most corrupted bytes in the received stream.
        eof: Maybe draw ``eof_sent_at`` and ``eof_received_at``.
        hangs: Maybe draw ``hang_sent_at``, ``hang_received_at`` and
            ``hang_at_operation``.
        errors: Exception types ``raise_at_operation`` may raise; empty for
            no injected errors.
        direction_errors: Exception types for the per-direction faults:
            maybe draw ``raise_on_send_at`` (with ``send_error`` and a
            ``send_error_after_bytes`` prefix) and ``raise_on_receive_at``
            (with ``receive_error``); empty for none.
        max_offset: The largest byte offset for corruption, ends and hangs.
        max_operation: The largest operation number for hangs and errors.
    """
    offsets = st.integers(min_value=0, max_value=max_offset)
    operations = st.integers(min_value=0, max_value=max_operation)
    none: st.SearchStrategy[None] = st.none()
    nothing: st.SearchStrategy[tuple[int, ...]] = st.just(())
    no_delay: st.SearchStrategy[tuple[float, ...]] = st.just(())
    chunks = chunkings(max_size=max_chunk) if chunking else nothing
    waits = delays(max_seconds=max_delay) if delay else no_delay
    maybe_offset = none | offsets
    plans = st.builds(
        FaultPlan,
        send_chunks=chunks,
        receive_chunks=chunks,
        send_delays=waits,
        receive_delays=waits,
        corrupt_sent=st.lists(corruptions(max_offset=max_offset), max_size=corrupt_sent).map(tuple),
        corrupt_received=st.lists(
            corruptions(max_offset=max_offset), max_size=corrupt_received
        ).map(tuple),
        eof_sent_at=maybe_offset if eof else none,
        eof_received_at=maybe_offset if eof else none,
        hang_sent_at=maybe_offset if hangs else none,
        hang_received_at=maybe_offset if hangs else none,
        hang_at_operation=(none | operations) if hangs else none,
        raise_at_operation=(none | operations) if errors else none,
        error=st.sampled_from(errors) if errors else st.just(trio.BrokenResourceError),
    )
    if not direction_errors:
        return plans
    error_types = st.sampled_from(direction_errors)
    return st.builds(
        _with_direction_errors,
        plans,
        send_at=none | operations,
        send_error=error_types,
        after_bytes=offsets,
        receive_at=none | operations,
        receive_error=error_types,
    )


def _with_direction_errors(
    plan: FaultPlan,
    *,
    send_at: int | None,
    send_error: type[BaseException],
    after_bytes: int,
    receive_at: int | None,
    receive_error: type[BaseException],
) -> FaultPlan:
    return dataclasses.replace(
        plan,
        raise_on_send_at=send_at,
        send_error=send_error,
        # A prefix only means something for a send that fails.
        send_error_after_bytes=after_bytes if send_at is not None else 0,
        raise_on_receive_at=receive_at,
        receive_error=receive_error,
    )


def pauses(*, max_checkpoints: int = 3, max_sleep: float = 0.05) -> st.SearchStrategy[Pause]:
    """A pause: up to ``max_checkpoints`` checkpoints, then up to ``max_sleep`` seconds."""
    return st.builds(
        Pause,
        checkpoints=st.integers(min_value=0, max_value=max_checkpoints),
        sleep=st.integers(min_value=0, max_value=int(max_sleep * 1000)).map(lambda ms: ms / 1000),
    )


def task_schedules(
    *, max_pauses: int = 6, max_checkpoints: int = 3, max_sleep: float = 0.05
) -> st.SearchStrategy[TaskSchedule]:
    """A task's pauses between operations (``()``, never pausing, is the simplest)."""
    return st.lists(
        pauses(max_checkpoints=max_checkpoints, max_sleep=max_sleep), max_size=max_pauses
    ).map(lambda drawn: TaskSchedule(tuple(drawn)))


def cancel_points(
    *, max_operation: int = 16, max_seconds: float = 1.0, before_start: bool = True
) -> st.SearchStrategy[CancelPoint]:
    """Where to cancel: before the start, at a transport operation, or after a delay.

    Args:
        max_operation: The largest transport operation number.
        max_seconds: The longest delay, in seconds (whole milliseconds).
        before_start: Whether "before it starts" may be drawn.
    """
    choices = [
        st.builds(CancelPoint, at_operation=st.integers(min_value=0, max_value=max_operation)),
        st.builds(
            CancelPoint,
            after_seconds=st.integers(min_value=0, max_value=int(max_seconds * 1000)).map(
                lambda ms: ms / 1000
            ),
        ),
    ]
    if before_start:
        choices.append(st.just(CancelPoint()))
    return st.one_of(choices)


def messages(*, max_messages: int = 8, max_size: int = 4096) -> st.SearchStrategy[list[bytes]]:
    """A list of non-empty payloads, each to be sent with one ``send_all``."""
    return st.lists(st.binary(min_size=1, max_size=max_size), max_size=max_messages)
