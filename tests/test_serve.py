"""serve_tls_over_tcp's handshake deadline, over real loopback sockets.

The autojump clock works with real sockets here: on loopback, a connect or a
send is complete in the kernel when the call returns, so whenever every task
is blocked, nothing is in flight and the clock may jump to the next deadline.
The test therefore takes no real time, however long the deadline.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trio.testing

from trio_membio import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    MemoryBIOListener,
    MemoryBIOStream,
    serve_tls_over_tcp,
)

from .helpers import HOSTNAME, client_context, server_context

HANDSHAKE_TIMEOUT = 5.0


async def echo_once(stream: MemoryBIOStream[trio.SocketStream]) -> None:
    await stream.send_all(await stream.receive_some())


async def test_silent_client_is_dropped_while_others_are_served(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_membio")
    with trio.fail_after(HANDSHAKE_TIMEOUT * 4):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_through_helper, echo_once, None)
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()

            # Meanwhile another client is served from start to finish.
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            async with MemoryBIOStream(tcp, client_context(), server_hostname=HOSTNAME) as client:
                await client.send_all(b"served")
                assert await client.receive_some() == b"served"
                assert await client.receive_some() == b""  # the handler returned
            assert trio.current_time() - started < HANDSHAKE_TIMEOUT

            async with silent:
                # The server closes the silent connection at the deadline.
                assert await silent.receive_some() == b""
            assert trio.current_time() - started == pytest.approx(HANDSHAKE_TIMEOUT)
            nursery.cancel_scope.cancel()

    warnings = library_records(caplog)
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "TLS handshake with 127.0.0.1:" in warnings[0].getMessage()
    assert f"timed out after {HANDSHAKE_TIMEOUT} seconds" in warnings[0].getMessage()


# --------------------------------------------------------------------------
# The serving policy (handshake deadline, error hook, port probes), through
# both ways in: serve_tls_over_tcp and MemoryBIOListener.serve. They share one
# implementation; each test runs against both so that neither can drift.

Hook = Callable[
    [MemoryBIOStream[trio.SocketStream], trio.BrokenResourceError | trio.TooSlowError], object
]
Handler = Callable[[MemoryBIOStream[trio.SocketStream]], Awaitable[object]]


@dataclass
class HookCall:
    """One on_handshake_error call, with what the stream looked like then."""

    stream: MemoryBIOStream[trio.SocketStream]
    error: trio.BrokenResourceError | trio.TooSlowError
    socket_open_during_call: bool
    ciphertext_received: int


@dataclass
class RecordingHook:
    calls: list[HookCall] = field(default_factory=list)
    called: trio.Event = field(default_factory=trio.Event)

    def __call__(
        self,
        stream: MemoryBIOStream[trio.SocketStream],
        error: trio.BrokenResourceError | trio.TooSlowError,
    ) -> None:
        self.calls.append(
            HookCall(
                stream,
                error,
                socket_open_during_call=stream.transport_stream.socket.fileno() != -1,
                ciphertext_received=stream.statistics().ciphertext_received,
            )
        )
        self.called.set()


async def serve_through_listener(
    handler: Handler,
    on_handshake_error: Hook | None,
    *,
    task_status: trio.TaskStatus[int],
) -> None:
    (tcp_listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = MemoryBIOListener(
        tcp_listener,
        server_context(),
        handshake_timeout=HANDSHAKE_TIMEOUT,
        on_handshake_error=on_handshake_error,
    )
    assert listener.handshake_timeout == HANDSHAKE_TIMEOUT
    assert listener.on_handshake_error is on_handshake_error
    async with trio.open_nursery() as nursery:
        (started,) = await nursery.start(partial(listener.serve, handler))
        assert started is listener
        task_status.started(tcp_listener.socket.getsockname()[1])


async def serve_through_helper(
    handler: Handler,
    on_handshake_error: Hook | None,
    *,
    task_status: trio.TaskStatus[int],
) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(
                serve_tls_over_tcp,
                handler,
                0,
                server_context(),
                host="127.0.0.1",
                handshake_timeout=HANDSHAKE_TIMEOUT,
                on_handshake_error=on_handshake_error,
            )
        )
        task_status.started(listeners[0].transport_listener.socket.getsockname()[1])


SERVERS = [
    pytest.param(serve_through_helper, id="serve_tls_over_tcp"),
    pytest.param(serve_through_listener, id="MemoryBIOListener.serve"),
]
Server = Callable[..., Awaitable[None]]


def library_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "trio_membio"]


@pytest.mark.parametrize("serve", SERVERS)
async def test_deadline_calls_the_hook_with_too_slow_error(
    serve: Server, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_membio")
    hook = RecordingHook()
    with trio.fail_after(HANDSHAKE_TIMEOUT * 4):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, echo_once, hook)
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            await silent.send_all(b"\x16")  # a first byte of a ClientHello, then nothing
            started = trio.current_time()
            async with silent:
                assert await silent.receive_some() == b""
            assert trio.current_time() - started == pytest.approx(HANDSHAKE_TIMEOUT)
            nursery.cancel_scope.cancel()

    (call,) = hook.calls
    assert isinstance(call.error, trio.TooSlowError)
    assert str(call.error) == f"TLS handshake did not finish within {HANDSHAKE_TIMEOUT} seconds"
    assert call.socket_open_during_call  # the hook can still ask the peer's address
    assert call.ciphertext_received == 1
    assert call.stream.transport_stream.socket.fileno() == -1  # closed after the hook
    (record,) = library_records(caplog)
    assert record.levelno == logging.WARNING
    assert f"timed out after {HANDSHAKE_TIMEOUT} seconds" in record.getMessage()
    assert record.tls_error is call.error  # type: ignore[attr-defined]  # set through extra=


@pytest.mark.parametrize("serve", SERVERS)
async def test_failed_handshake_calls_the_hook_and_others_are_served(
    serve: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_membio")
    hook = RecordingHook()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, echo_once, hook)
            distrusting = MemoryBIOStream(
                await trio.open_tcp_stream("127.0.0.1", port),
                ssl.create_default_context(),  # does not trust the test CA
                server_hostname=HOSTNAME,
            )
            with pytest.raises(trio.BrokenResourceError, match="certificate verify failed"):
                await distrusting.do_handshake()
            await distrusting.aclose()

            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            async with MemoryBIOStream(tcp, client_context(), server_hostname=HOSTNAME) as client:
                await client.send_all(b"still served")
                assert await client.receive_some() == b"still served"
            nursery.cancel_scope.cancel()

    (call,) = hook.calls
    assert isinstance(call.error, trio.BrokenResourceError)
    assert isinstance(call.error.__cause__, ssl.SSLError)
    assert "unknown ca" in str(call.error)  # the client's alert
    assert call.stream.server_side
    assert call.socket_open_during_call
    assert call.stream.transport_stream.socket.fileno() == -1
    (record,) = library_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("TLS handshake with 127.0.0.1:")
    assert record.getMessage().endswith("failed: tlsv1 alert unknown ca")
    assert record.tls_error is call.error  # type: ignore[attr-defined]  # set through extra=


@pytest.mark.parametrize("serve", SERVERS)
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_port_probe_is_logged_at_debug(
    serve: Server, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every port probe and health check logged a WARNING, burying the real failures."""
    caplog.set_level(logging.DEBUG, logger="trio_membio")
    hook = RecordingHook()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, echo_once, hook)
            probe = await trio.open_tcp_stream("127.0.0.1", port)
            if how == "reset":
                # SO_LINGER 0: close() sends RST instead of FIN.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await probe.aclose()
            await hook.called.wait()
            nursery.cancel_scope.cancel()

    (call,) = hook.calls
    assert isinstance(call.error, trio.BrokenResourceError)
    assert call.ciphertext_received == 0
    (record,) = library_records(caplog)
    assert record.levelno == logging.DEBUG
    assert record.getMessage().endswith("closed the connection without sending a byte")
    assert record.tls_error is call.error  # type: ignore[attr-defined]  # set through extra=


@pytest.mark.parametrize("serve", SERVERS)
async def test_a_failing_hook_propagates_after_closing_the_stream(serve: Server) -> None:
    """A bug in the hook is not hidden (it ends the server, as a bug in a handler does)."""

    class HookBug(Exception):
        pass

    streams: list[MemoryBIOStream[trio.SocketStream]] = []

    def buggy_hook(
        stream: MemoryBIOStream[trio.SocketStream],
        error: trio.BrokenResourceError | trio.TooSlowError,
    ) -> None:
        streams.append(stream)
        raise HookBug

    with trio.fail_after(10), pytest.RaisesGroup(HookBug, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, echo_once, buggy_hook)
            probe = await trio.open_tcp_stream("127.0.0.1", port)
            await probe.aclose()
            await trio.sleep_forever()
    (stream,) = streams
    assert stream.transport_stream.socket.fileno() == -1


async def test_listener_rejects_a_bad_handshake_timeout() -> None:
    (tcp_listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with tcp_listener:
        with pytest.raises(ValueError, match="handshake_timeout must be >= 0 or None, not -1"):
            MemoryBIOListener(tcp_listener, server_context(), handshake_timeout=-1)
        listener = MemoryBIOListener(tcp_listener, server_context())
        assert listener.handshake_timeout == DEFAULT_HANDSHAKE_TIMEOUT
        assert listener.on_handshake_error is None


async def test_accept_alone_applies_no_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """accept() is trio.SSLListener's: the handshake deadline is serve()'s business."""
    (tcp_listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    hook = RecordingHook()
    listener = MemoryBIOListener(
        tcp_listener, server_context(), handshake_timeout=1, on_handshake_error=hook
    )
    port = tcp_listener.socket.getsockname()[1]
    async with listener, await trio.open_tcp_stream("127.0.0.1", port) as tcp:
        accepted = await listener.accept()
        await trio.sleep(100)  # far past the listener's deadline: still open
        client = MemoryBIOStream(tcp, client_context(), server_hostname=HOSTNAME)
        async with client, trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(accepted.do_handshake)
        await accepted.aclose()
    assert hook.calls == []
