"""FaultPlan and its parts: what a FaultyStream does wrong, as plain data.

Theory of operation
===================

A plan is a frozen dataclass of offsets, sizes, delays and exception types,
nothing live, so hypothesis can generate it, shrink it and print it as a
constructor call that reproduces the failure. :class:`FaultyStream` (in
``_faults.py``) interprets it; the module documentation there says what each
field does. The records of what happened (:class:`OperationRecord`,
:class:`Outcome`) live here too, as the other half of that vocabulary.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

import trio

__all__ = ["Corruption", "FaultPlan", "OperationRecord", "Outcome", "random_chunks"]


@dataclass(frozen=True)
class Corruption:
    """Change one byte of a stream.

    Attributes:
        offset: Which byte, counted from where the plan was installed.
        xor: The byte is XORed with this mask (1-255, so it always changes).
        value: If not None, the byte is replaced by this value instead (which
            changes nothing if the byte already had it).
    """

    offset: int
    xor: int = 0x01
    value: int | None = None

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"Corruption.offset must be at least 0, not {self.offset}")
        if not 1 <= self.xor <= 255:
            raise ValueError(f"Corruption.xor must be in 1..255, not {self.xor}")
        if self.value is not None and not 0 <= self.value <= 255:
            raise ValueError(f"Corruption.value must be in 0..255, not {self.value}")

    def apply(self, byte: int) -> int:
        """The corrupted value of ``byte``."""
        return self.value if self.value is not None else byte ^ self.xor


@dataclass(frozen=True)
class FaultPlan:
    """What a :class:`FaultyStream` does wrong; the default does nothing.

    Offsets are byte positions and operation numbers are 0-based, both
    counted from when the plan was installed. ``raise_at_operation`` counts
    every operation; ``raise_on_send_at`` counts only the sending direction's
    (``send_all``, ``wait_send_all_might_not_block``, ``send_eof``) and
    ``raise_on_receive_at`` only ``receive_some`` calls. Sequences are used
    cyclically. Error types are any exception class that takes one message
    argument (not :exc:`trio.Cancelled`: cancel a scope for that). See the
    module documentation of ``_faults.py`` for what each fault does.
    """

    send_chunks: tuple[int, ...] = ()
    receive_chunks: tuple[int, ...] = ()
    send_delays: tuple[float, ...] = ()
    receive_delays: tuple[float, ...] = ()
    corrupt_sent: tuple[Corruption, ...] = ()
    corrupt_received: tuple[Corruption, ...] = ()
    eof_sent_at: int | None = None
    eof_received_at: int | None = None
    hang_sent_at: int | None = None
    hang_received_at: int | None = None
    hang_at_operation: int | None = None
    raise_at_operation: int | None = None
    error: type[Exception] = field(default=trio.BrokenResourceError)
    raise_on_send_at: int | None = None
    send_error: type[BaseException] = field(default=trio.BrokenResourceError)
    send_error_after_bytes: int = 0
    raise_on_receive_at: int | None = None
    receive_error: type[BaseException] = field(default=trio.BrokenResourceError)

    def __post_init__(self) -> None:
        for name in ("send_chunks", "receive_chunks"):
            sizes: tuple[int, ...] = getattr(self, name)
            if any(size < 1 for size in sizes):
                raise ValueError(f"FaultPlan.{name} sizes must be at least 1: {sizes}")
        for name in ("send_delays", "receive_delays"):
            delays: tuple[float, ...] = getattr(self, name)
            if any(not delay >= 0 for delay in delays):
                raise ValueError(f"FaultPlan.{name} must be at least 0: {delays}")
        for name in (
            "eof_sent_at",
            "eof_received_at",
            "hang_sent_at",
            "hang_received_at",
            "hang_at_operation",
            "raise_at_operation",
            "raise_on_send_at",
            "raise_on_receive_at",
        ):
            value: int | None = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"FaultPlan.{name} must be at least 0, not {value}")
        if self.send_error_after_bytes < 0:
            raise ValueError(
                "FaultPlan.send_error_after_bytes must be at least 0, "
                f"not {self.send_error_after_bytes}"
            )
        if self.send_error_after_bytes and self.raise_on_send_at is None:
            raise ValueError(
                "FaultPlan.send_error_after_bytes only applies to the send that "
                "raise_on_send_at names: set raise_on_send_at too"
            )
        for name in ("error", "send_error", "receive_error"):
            _check_error_type(f"FaultPlan.{name}", getattr(self, name))

    @property
    def is_transparent(self) -> bool:
        """Whether this plan changes neither the bytes nor their timing."""
        # The error types alone inject nothing: only the positions that use them do.
        return self == FaultPlan(
            error=self.error, send_error=self.send_error, receive_error=self.receive_error
        )


def _check_error_type(name: str, error: object) -> None:
    """Reject what a FaultyStream could not raise as ``error("injected fault: ...")``."""
    if not (isinstance(error, type) and issubclass(error, BaseException)):
        raise TypeError(f"{name} must be an exception class, not {error!r}")
    if issubclass(error, trio.Cancelled):
        # trio.Cancelled cannot be made by hand; cancel a scope instead
        # (FaultyStream.cancel_at, or a hang and a deadline).
        raise TypeError(f"{name} cannot be trio.Cancelled: use FaultyStream.cancel_at()")
    try:
        error("injected fault")
    except Exception as exc:
        raise TypeError(
            f"{name} must be constructible from one message argument: "
            f"{error.__name__}('...') raised {exc!r}"
        ) from exc


def random_chunks(
    seed: int, *, count: int = 64, min_size: int = 1, max_size: int = 1500
) -> tuple[int, ...]:
    """``count`` chunk sizes drawn from ``random.Random(seed)``: the same seed, the same sizes.

    For ``FaultPlan(receive_chunks=random_chunks(7))`` outside hypothesis.
    """
    if not 1 <= min_size <= max_size:
        raise ValueError("need 1 <= min_size <= max_size")
    rng = random.Random(seed)
    return tuple(rng.randint(min_size, max_size) for _ in range(count))


class Outcome(enum.Enum):
    """How one transport operation of a :class:`FaultyStream` ended."""

    RUNNING = "running"
    OK = "ok"
    CANCELLED = "cancelled"
    INJECTED = "injected"  # raise_at_operation, raise_on_send_at or raise_on_receive_at
    FAILED = "failed"  # the inner stream raised


@dataclass
class OperationRecord:
    """One operation in :attr:`FaultyStream.operations`.

    Attributes:
        kind: ``"send"``, ``"receive"``, ``"wait"`` or ``"send_eof"``.
        index: Its number, counted from the stream's creation.
        outcome: How it ended (``RUNNING`` while it runs).
        nbytes: Bytes it moved through the inner stream (after faults).
    """

    kind: str
    index: int
    outcome: Outcome = Outcome.RUNNING
    nbytes: int = 0
