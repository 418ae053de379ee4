"""The behaviour contract (DESIGN.md section 3), promises 1 and 2: the handshake.

Every task waiting on a handshake sees how it ended, and a cancelled or failed
handshake leaves the stream resumable or broken with its reason. The other
promises are in test_contract.py, whose docstring gives the conventions both
follow (how trio.SSLStream differs, what a fixed bug's test says, no hang
outside virtual time).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from trio.testing import wait_all_tasks_blocked

from trio_membio import MemoryBIOStream
from trio_membio.testing import handshake, memory_tls_stream_pair

from .helpers import (
    HANG,
    HOSTNAME,
    TLSVersion,
    aclose_all,
    cancellable,
    client_context,
    expect_broken,
    quietly,
    server_context,
    tls_pair,
    untrusting_client_context,
)
from .transports import ControlledTransport, HalfWritingStream

AnyStream = MemoryBIOStream[trio.abc.Stream]


# ------------------------------------------------------------------ 1. waiters


async def test_handshake_failure_reaches_every_waiter(autojump_clock: trio.abc.Clock) -> None:
    """trio.SSLStream: the non-driving waiters hang forever."""
    client, server = memory_tls_stream_pair(client_context=untrusting_client_context())
    errors: list[BaseException] = []

    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "handshake": client.do_handshake,
        "send": lambda: client.send_all(b"x"),
        "receive": client.receive_some,
    }

    async def expect_broken(operation: str) -> None:
        with pytest.raises(trio.BrokenResourceError) as info:
            await operations[operation]()
        errors.append(info.value)

    async def server_side() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for operation in ("handshake", "send", "receive"):
                nursery.start_soon(expect_broken, operation)
            nursery.start_soon(server_side)
    assert len(errors) == 3
    causes = {id(error.__cause__) for error in errors}
    assert len(causes) == 1, "every waiter must see the same ssl error"
    assert isinstance(errors[0].__cause__, ssl.SSLCertVerificationError)
    assert len({str(error) for error in errors}) == 1
    assert "certificate verify failed" in str(errors[0])


async def test_cancelled_driver_hands_handshake_to_a_waiter(
    autojump_clock: trio.abc.Clock,
) -> None:
    """trio.SSLStream: the waiter hangs forever once the driver is cancelled."""
    client, server = memory_tls_stream_pair()
    driver_scope = trio.CancelScope()
    outcome: list[str] = []

    async def driver() -> None:
        with driver_scope:
            await client.do_handshake()
        outcome.append("driver cancelled" if driver_scope.cancelled_caught else "driver done")

    async def waiter() -> None:
        await client.do_handshake()
        outcome.append("waiter done")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            driver_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            # Only now does the server answer: the waiter must pick up.
            nursery.start_soon(server.do_handshake)
    assert outcome == ["driver cancelled", "waiter done"]
    await _check_data_flows(client, server)


@pytest.mark.parametrize(("version", "end"), [("1.3", "client"), ("1.2", "server")])
async def test_waiters_see_the_handshake_broken_when_its_final_flight_is_half_written(
    version: TLSVersion, end: str, autojump_clock: trio.abc.Clock
) -> None:
    """Driver cancelled in its final flight: waiters saw success or hung in receive_some()."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        if end == "client":  # TLS 1.3: the client's Finished ends the handshake
            transport = ControlledTransport(client_transport)
            ours = MemoryBIOStream(transport, client_context(version), server_hostname=HOSTNAME)
            peer = MemoryBIOStream(server_transport, server_context(version), server_side=True)
        else:  # TLS 1.2: the server's ChangeCipherSpec and Finished end it
            transport = ControlledTransport(server_transport)
            ours = MemoryBIOStream(transport, server_context(version), server_side=True)
            peer = MemoryBIOStream(
                client_transport, client_context(version), server_hostname=HOSTNAME
            )
        transport.half_write_at = 2  # our second flight, the final one
        async with trio.open_nursery() as nursery:
            nursery.start_soon(quietly, peer.do_handshake)
            driver = trio.CancelScope()
            nursery.start_soon(cancellable, driver, ours.do_handshake)
            await wait_all_tasks_blocked()
            assert transport.sends == 2  # half of the final flight is out, the rest hangs
            assert ours.ssl_object.version() is not None  # OpenSSL considers it done
            async with trio.open_nursery() as waiters:
                waiters.start_soon(expect_broken, ours.do_handshake, "handshake was cancelled")
                waiters.start_soon(expect_broken, ours.receive_some, "handshake was cancelled")
                await wait_all_tasks_blocked()
                driver.cancel()
            nursery.cancel_scope.cancel()
        await aclose_all(ours, peer)


# --------------------------------------------------------- 2. cancelled handshake


async def test_handshake_cancelled_waiting_for_peer_resumes(autojump_clock: trio.abc.Clock) -> None:
    """trio.SSLStream: the stream is broken after this cancellation."""
    client, server = memory_tls_stream_pair()
    with trio.move_on_after(1) as scope:
        await client.do_handshake()  # the server is not running yet
    assert scope.cancelled_caught
    await handshake(client, server)
    assert client.version() == server.version()
    await _check_data_flows(client, server)


async def test_handshake_cancelled_while_half_written_breaks_with_reason(
    autojump_clock: trio.abc.Clock,
) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    half_writing = HalfWritingStream(client_transport)
    client = MemoryBIOStream(half_writing, client_context(), server_hostname=HOSTNAME)
    with trio.move_on_after(1) as scope:
        await client.do_handshake()
    assert scope.cancelled_caught
    assert half_writing.half_written
    for operation in (client.do_handshake(), client.send_all(b"x"), client.receive_some()):
        with pytest.raises(trio.BrokenResourceError, match="cancelled while its ciphertext"):
            await operation
    await client.aclose()
    await server_transport.aclose()


async def test_half_written_handshake_flight_breaks_the_whole_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A lane holder cancelled mid-ClientHello broke only sending; the handshake then hung."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        transport = ControlledTransport(client_transport)
        transport.wait_gate = trio.Event()
        transport.half_write_at = 1  # the ClientHello
        client = MemoryBIOStream(transport, client_context("1.3"), server_hostname=HOSTNAME)
        server = MemoryBIOStream(server_transport, server_context("1.3"), server_side=True)

        async def drive_handshake() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await client.do_handshake()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(quietly, server.do_handshake)
            waiter = trio.CancelScope()
            nursery.start_soon(cancellable, waiter, client.wait_send_all_might_not_block)
            await wait_all_tasks_blocked()  # the waiter holds the send lane
            nursery.start_soon(drive_handshake)
            await wait_all_tasks_blocked()  # the ClientHello is queued behind the waiter
            transport.wait_gate.set()
            await wait_all_tasks_blocked()  # the waiter wrote half of the ClientHello
            assert transport.sends == 1
            waiter.cancel()
            await wait_all_tasks_blocked()
            await expect_broken(client.do_handshake, "handshake was cancelled")
            await expect_broken(client.receive_some, "handshake was cancelled")
            nursery.cancel_scope.cancel()
        await aclose_all(client, server)


async def test_failed_handshake_send_breaks_the_whole_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A transport send failure in the handshake broke only sending; do_handshake() then hung."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        pump = client_transport.send_stream.send_all_hook
        assert pump is not None
        sends = 0

        async def fail_first_send() -> None:
            nonlocal sends
            sends += 1
            if sends == 1:
                raise trio.BrokenResourceError("transient send failure")
            await pump()

        client_transport.send_stream.send_all_hook = fail_first_send
        client, server = tls_pair(lambda: (client_transport, server_transport), version="1.3")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(quietly, server.do_handshake)
            with pytest.raises(trio.BrokenResourceError, match="transient send failure"):
                await client.do_handshake()
            await expect_broken(client.do_handshake, "transient send failure")
            await expect_broken(client.receive_some, "transient send failure")
            nursery.cancel_scope.cancel()
        await aclose_all(client, server)


async def _check_data_flows(client: AnyStream, server: AnyStream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"ping")
        assert await server.receive_some() == b"ping"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, b"pong")
        assert await client.receive_some() == b"pong"
