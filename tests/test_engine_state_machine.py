"""The sans-I/O TLSEngine as a hypothesis state machine: any order of operations.

Two engines, a client and a server, are joined by two "wires" (the
ciphertext each has handed out and the other has not been given yet). The
rules do anything either side can do, in any order: handshake, hand out
ciphertext, deliver some of it (or the end of the transport), read, write,
send close_notify, unwrap, and change a byte on a wire. Before each call an
oracle works out, from the engine's public state and its docstrings, which
outcomes are allowed; anything else fails.

Invariants:

- plaintext read by one side is always a prefix of what the other wrote,
  corrupted wires included;
- once an engine has failed, its failure never changes, and every operation
  raises that same error (rule 3), except read() handing out plaintext it
  authenticated before the failure (rules 6 and 7);
- the handshake, once complete, stays complete;
- with nothing corrupted, cut or failed, pumping the wires at the end
  delivers everything that was written, in order.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from trio_membio import TLSEngine
from trio_membio.testing import TLSVersion, throwaway_contexts, tls_engine_pair
from trio_membio.testing.strategies import tls_versions

T = TypeVar("T")
SIDES = st.sampled_from((0, 1))
NAMES = ("client", "server")


@functools.cache
def contexts(version: TLSVersion) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Made once per version: creating contexts costs more than a whole example."""
    return throwaway_contexts(tls_version=version)


def engines(version: TLSVersion) -> tuple[TLSEngine, TLSEngine]:
    client_context, server_context = contexts(version)
    return tls_engine_pair(client_context=client_context, server_context=server_context)


class Expected:
    """What an operation may do, worked out before calling it."""

    def __init__(self, error: type[Exception] | ssl.SSLError | None = None) -> None:
        #: An exception type the call must raise, or the exact ssl error it
        #: must re-raise, or None: it may succeed or fail with a new ssl error.
        self.error = error


class EngineMachine(RuleBasedStateMachine):
    """A client and a server TLSEngine, and the bytes in flight between them."""

    def __init__(self) -> None:
        super().__init__()
        self.engines: tuple[TLSEngine, TLSEngine] = engines("1.3")
        self.wires = (bytearray(), bytearray())  # wires[i]: from side i to the other
        self.written = (bytearray(), bytearray())  # plaintext each side wrote
        self.received = (bytearray(), bytearray())  # plaintext each side read
        self.failures: list[ssl.SSLError | None] = [None, None]
        self.handshaken = [False, False]
        self.eof_delivered = [False, False]
        self.tampered = False
        self.version: TLSVersion = "1.3"

    @initialize(version=tls_versions(), handshake_first=st.booleans())
    def start(self, version: TLSVersion, handshake_first: bool) -> None:
        """Half the runs start connected, to spend their steps on what follows."""
        self.version = version
        self.engines = engines(version)
        if handshake_first:
            for _ in range(4):
                for side in (0, 1):
                    self.exchange(side)
            assert all(engine.handshake_complete for engine in self.engines)

    # ------------------------------------------------------------ the oracle

    def call(
        self, side: int, name: str, expected: Expected, operation: Callable[[], T]
    ) -> T | None:
        """Run ``operation`` on ``side`` and check its outcome against ``expected``."""
        engine = self.engines[side]
        failure_before = engine.failure
        raised: Exception | None = None
        result: T | None = None
        try:
            result = operation()
        except (ssl.SSLError, RuntimeError, ValueError) as exc:
            raised = exc
        if isinstance(raised, ssl.SSLError):
            event(f"{name} raised {type(raised).__name__}")
            if isinstance(expected.error, ssl.SSLError):
                assert raised is expected.error, f"{name}: a different error after failing"
            else:
                assert expected.error is None, f"{name}: raised {raised!r}, not {expected.error}"
            assert engine.failure is raised, f"{name}: raised {raised!r} without recording it"
            self.record_failure(side)
            return None
        if raised is not None:
            # RuntimeError and ValueError: only for the documented misuses.
            assert isinstance(expected.error, type), f"{name}: undocumented {raised!r}"
            assert isinstance(raised, expected.error), f"{name}: {raised!r}, not {expected.error}"
            return None
        assert not isinstance(expected.error, ssl.SSLError), f"{name} succeeded on a failed engine"
        assert expected.error is None, f"{name}: returned {result!r}, not {expected.error}"
        if failure_before is None:
            self.record_failure(side)  # read() may record a failure for its next call
        return result

    def record_failure(self, side: int) -> None:
        failure = self.engines[side].failure
        if self.failures[side] is None:
            self.failures[side] = failure
        assert failure is self.failures[side], "the engine's failure changed"

    def data_op(self, side: int, *, writing: bool = False, data: bytes = b"x") -> Expected:
        """What read/write/send_close_notify/unwrap must do, from the state alone."""
        engine = self.engines[side]
        if engine.failure is not None:
            return Expected(engine.failure)
        if not engine.handshake_complete:
            return Expected(RuntimeError)
        if writing and not data:
            return Expected(ValueError)
        if writing and engine.close_notify_sent:
            return Expected(RuntimeError)
        return Expected()

    # ----------------------------------------------------------------- rules

    @rule(side=SIDES)
    def do_handshake(self, side: int) -> None:
        engine = self.engines[side]
        expected = Expected(engine.failure) if engine.failure is not None else Expected()
        finished = self.call(side, "do_handshake", expected, engine.do_handshake)
        if finished is not None:
            assert finished == engine.handshake_complete

    @rule(side=SIDES)
    def hand_out(self, side: int) -> None:
        """Take the engine's ciphertext out onto its wire."""
        engine = self.engines[side]
        pending = engine.bytes_to_send
        data = engine.data_to_send()
        assert len(data) == pending, "bytes_to_send disagrees with data_to_send()"
        self.wires[side].extend(data)

    @rule(side=SIDES)
    def exchange(self, side: int) -> None:
        """Run this side's handshake step, and deliver everything it sends (a shortcut)."""
        engine = self.engines[side]
        if not engine.handshake_complete:
            self.do_handshake(side)
        self.hand_out(side)
        self.deliver(side, len(self.wires[side]))

    @rule(side=SIDES, size=st.integers(min_value=1, max_value=5000))
    def deliver(self, side: int, size: int) -> None:
        """Give the peer up to ``size`` bytes from this side's wire."""
        wire = self.wires[side]
        piece = bytes(wire[:size])
        if not piece:
            return
        del wire[:size]
        peer = 1 - side
        expected = Expected(ValueError) if self.eof_delivered[peer] else Expected()
        self.call(peer, "receive_data", expected, lambda: self.engines[peer].receive_data(piece))

    @rule(side=SIDES, dice=st.integers(min_value=0, max_value=3))
    def deliver_eof(self, side: int, dice: int) -> None:
        """End the transport from this side to the peer (one time in four: it ends a lot)."""
        if dice:
            return
        peer = 1 - side
        self.engines[peer].receive_eof()
        self.eof_delivered[peer] = True

    @rule(side=SIDES, index=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
    def corrupt(self, side: int, index: int, mask: int) -> None:
        """Change a byte in flight (on whichever wire has bytes)."""
        wire = self.wires[side] or self.wires[1 - side]
        if wire:
            wire[index % len(wire)] ^= mask
            self.tampered = True

    @rule(side=SIDES, max_bytes=st.integers(min_value=1, max_value=70_000))
    def read(self, side: int, max_bytes: int) -> None:
        engine = self.engines[side]
        buffered = engine.buffered_plaintext
        expected = Expected() if buffered else self.data_op(side)
        data = self.call(side, "read", expected, lambda: engine.read(max_bytes))
        if buffered:
            assert data, "plaintext set aside was not handed out first"
        if data:
            assert len(data) <= max_bytes
            self.received[side].extend(data)

    @rule(side=SIDES, data=st.binary(max_size=3000))
    def write(self, side: int, data: bytes) -> None:
        engine = self.engines[side]
        expected = self.data_op(side, writing=True, data=data)
        written = self.call(side, "write", expected, lambda: engine.write(data))
        if written is not None:
            # Python cannot start a renegotiation, so a write never waits.
            assert written == len(data), f"write() consumed {written} of {len(data)} bytes"
            self.written[side].extend(data)

    @rule(side=SIDES)
    def send_close_notify(self, side: int) -> None:
        engine = self.engines[side]
        if engine.failure is None and engine.close_notify_sent:
            expected = Expected()  # again: nothing to do
        else:
            expected = self.data_op(side)
        self.call(side, "send_close_notify", expected, engine.send_close_notify)
        if engine.failure is None and engine.handshake_complete:
            assert engine.close_notify_sent

    @rule(side=SIDES)
    def unwrap(self, side: int) -> None:
        engine = self.engines[side]
        result = self.call(side, "unwrap", self.data_op(side), engine.unwrap)
        if result is not None:
            assert engine.close_notify_sent
            if result:
                assert engine.close_notify_received

    # ------------------------------------------------------------ invariants

    @invariant()
    def plaintext_is_a_prefix_of_what_was_written(self) -> None:
        for side in (0, 1):
            received, written = self.received[side], self.written[1 - side]
            assert written.startswith(received), (
                f"the {NAMES[side]} read {bytes(received[:60])!r}... which the "
                f"{NAMES[1 - side]} never wrote"
            )

    @invariant()
    def failures_and_handshakes_stick(self) -> None:
        for side in (0, 1):
            engine = self.engines[side]
            if self.failures[side] is not None:
                assert engine.failure is self.failures[side]
            if self.handshaken[side]:
                assert engine.handshake_complete
            self.handshaken[side] = engine.handshake_complete

    def teardown(self) -> None:
        """With nothing corrupted, cut or failed: everything written arrives."""
        for side in (0, 1):
            engine = self.engines[side]
            event(f"{NAMES[side]}: handshake complete={engine.handshake_complete}")
            event(f"{NAMES[side]}: failed={engine.failure is not None}")
            event(f"{NAMES[side]}: close_notify sent={engine.close_notify_sent}")
        if (
            self.tampered
            or any(self.eof_delivered)
            or any(engine.failure is not None for engine in self.engines)
        ):
            return
        event("teardown: everything written is checked to arrive")
        for _ in range(20):
            for side in (0, 1):
                engine = self.engines[side]
                if not engine.handshake_complete:
                    engine.do_handshake()
                self.wires[side].extend(engine.data_to_send())
            for side in (0, 1):
                if self.wires[side]:
                    self.engines[1 - side].receive_data(bytes(self.wires[side]))
                    self.wires[side].clear()
            if not any(engine.bytes_to_send for engine in self.engines) and all(
                engine.handshake_complete for engine in self.engines
            ):
                break
        for side in (0, 1):
            engine = self.engines[side]
            assert engine.handshake_complete, f"the {NAMES[side]} never finished its handshake"
            while data := engine.read(65536):
                self.received[side].extend(data)
            assert self.received[side] == self.written[1 - side], (
                f"the {NAMES[side]} got {len(self.received[side])} of "
                f"{len(self.written[1 - side])} bytes"
            )


TestEngineStateMachine = EngineMachine.TestCase


# ----------------------------------------------------------- regressions


def failed_after_handshake(close_notify_first: bool) -> TLSEngine:
    """A client engine, past its handshake, failed by a corrupted record."""
    client, server = engines("1.3")
    for _ in range(4):
        client.do_handshake()
        server.receive_data(client.data_to_send() or b"\0")
        server.do_handshake()
        if server.bytes_to_send:
            client.receive_data(server.data_to_send())
    assert client.handshake_complete
    assert server.handshake_complete
    if close_notify_first:
        client.send_close_notify()
    server.write(b"data")
    tampered = bytearray(server.data_to_send())
    tampered[-1] ^= 1
    client.receive_data(tampered)
    with pytest.raises(ssl.SSLError):
        client.read(100)
    assert client.failure is not None
    return client


def test_send_close_notify_after_failure_raises_the_failure() -> None:
    """Rule 3: "From then on every operation raises that same error".

    Found by the state machine: send_close_notify() used to return quietly
    when close_notify had been queued before the failure.
    """
    client = failed_after_handshake(close_notify_first=True)
    failure = client.failure
    assert failure is not None
    with pytest.raises(ssl.SSLError) as info:
        client.send_close_notify()
    assert info.value is failure


def test_do_handshake_after_failure_raises_the_failure() -> None:
    """Rule 3 again, for an engine that failed after its handshake had finished.

    Found by the state machine: do_handshake() used to return True there.
    """
    client = failed_after_handshake(close_notify_first=False)
    failure = client.failure
    assert failure is not None
    with pytest.raises(ssl.SSLError) as info:
        client.do_handshake()
    assert info.value is failure
