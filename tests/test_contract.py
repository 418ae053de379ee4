"""The behaviour contract (DESIGN.md section 3), promises 3 to 10: one test per promise.

Promises 1 and 2, the handshake's, are in test_contract_handshake.py.

Where trio.SSLStream behaves differently, the docstring says how; these tests
fail on a MemoryBIOStream that behaved like it. A test that guards a fixed bug
says in its docstring what used to happen; interleavings are forced with
fault-injecting transports and wait_all_tasks_blocked, and what used to hang
runs under trio.fail_after with the autojump clock, so a hang fails in
virtual time.
"""

from __future__ import annotations

import ssl
import tracemalloc

import pytest
import trio
import trio.testing

from trio_membio import MemoryBIOStream, TLSTruncationError
from trio_membio._transport import SEND_WINDOW
from trio_membio.testing import handshake, lockstep_tls_stream_pair, memory_tls_stream_pair

from .helpers import (
    FORGED_RECORD,
    HANG,
    HOSTNAME,
    aclose_all,
    client_context,
    receive_exactly,
    server_context,
    tls_pair,
    untrusting_client_context,
)
from .peers import controlled_pha_streams, pha_streams
from .transports import RecordingStream

AnyStream = MemoryBIOStream[trio.abc.Stream]


# ------------------------------------------------------------ 3. send direction


async def test_cancelled_send_breaks_only_the_sending_direction(
    autojump_clock: trio.abc.Clock,
) -> None:
    """trio.SSLStream: the whole stream is broken (trio issue #198)."""
    client, server = lockstep_tls_stream_pair()
    await handshake(client, server)
    with trio.move_on_after(1) as scope:
        await client.send_all(b"x" * 100_000)  # the server is not reading
    assert scope.cancelled_caught
    with pytest.raises(trio.BrokenResourceError, match="earlier send on this stream was cancelled"):
        await client.send_all(b"more")
    # Receiving still works on the client.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, b"still here")
        assert await client.receive_some() == b"still here"
    await client.aclose()
    await server.aclose()


async def test_failed_wait_send_all_might_not_block_breaks_only_sending(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A transport failure in wait_send_all_might_not_block() broke receiving too."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        client, server = tls_pair(lambda: (client_transport, server_transport), version="1.3")
        await handshake(client, server)
        await server.send_all(b"already on its way")

        async def broken() -> None:
            raise trio.BrokenResourceError("send side reset")

        client_transport.send_stream.wait_send_all_might_not_block_hook = broken
        client_transport.send_stream.send_all_hook = broken
        with pytest.raises(trio.BrokenResourceError, match="send side reset"):
            await client.wait_send_all_might_not_block()
        assert await client.receive_some() == b"already on its way"
        with pytest.raises(trio.BrokenResourceError, match="send side reset"):
            await client.send_all(b"x")
        await aclose_all(client, server)


# ------------------------------------------------------------------- 4. aclose


async def test_aclose_does_not_wait_for_a_handshaking_task(autojump_clock: trio.abc.Clock) -> None:
    """trio.SSLStream: aclose waits for the handshake, possibly forever."""
    client, server = memory_tls_stream_pair()
    woke_with: list[type[BaseException]] = []

    async def handshake() -> None:
        try:
            await client.do_handshake()
        except trio.ClosedResourceError as exc:
            woke_with.append(type(exc))

    async def waiting_receiver() -> None:
        try:
            await client.receive_some()
        except trio.ClosedResourceError as exc:
            woke_with.append(type(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handshake)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiting_receiver)
        await trio.testing.wait_all_tasks_blocked()
        before = trio.current_time()
        await client.aclose()
        assert trio.current_time() == before, "aclose() waited"
    assert woke_with == [trio.ClosedResourceError, trio.ClosedResourceError]
    await server.aclose()


async def test_aclose_does_not_wait_for_a_blocked_sender(autojump_clock: trio.abc.Clock) -> None:
    """trio.SSLStream: aclose queues behind the blocked send_all forever."""
    client, server = lockstep_tls_stream_pair()
    await handshake(client, server)
    async with trio.open_nursery() as nursery:

        async def blocked_sender() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"x" * 100_000)

        nursery.start_soon(blocked_sender)
        await trio.testing.wait_all_tasks_blocked()
        before = trio.current_time()
        await client.aclose()
        assert trio.current_time() == before
    await server.aclose()


async def test_aclose_sends_close_notify_once_without_waiting_for_reply(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = memory_tls_stream_pair()
    await handshake(client, server)
    transport = client.transport_stream
    before = trio.current_time()
    await client.aclose()
    await client.aclose()  # idempotent
    assert trio.current_time() == before
    assert await server.receive_some() == b""  # a clean close_notify
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await transport.send_all(b"x")  # the transport is closed too
    await server.aclose()


async def test_aclose_bounded_when_the_transport_never_takes_close_notify(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = lockstep_tls_stream_pair()
    await handshake(client, server)
    before = trio.current_time()
    await client.aclose()  # the server never reads, so close_notify cannot go out
    assert trio.current_time() - before <= 1.0
    await server.aclose()


async def test_cancelled_aclose_still_closes_the_transport() -> None:
    client, server = memory_tls_stream_pair()
    await handshake(client, server)
    with trio.CancelScope() as scope:
        scope.cancel()
        await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.transport_stream.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()
    await server.aclose()


# ------------------------------------------------------------------- 5. alerts


async def test_local_failure_sends_the_fatal_alert_first(autojump_clock: trio.abc.Clock) -> None:
    """trio.SSLStream drops the alert; the peer learns nothing until EOF."""
    client, server = memory_tls_stream_pair(client_context=untrusting_client_context())
    with trio.fail_after(10):  # without the alert, the server would wait forever
        await _handshakes_fail_with_the_alert(client, server)
    await client.aclose()
    await server.aclose()


async def _handshakes_fail_with_the_alert(client: AnyStream, server: AnyStream) -> None:
    async with trio.open_nursery() as nursery:

        async def client_side() -> None:
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.do_handshake()
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)

        async def server_side() -> None:
            with pytest.raises(trio.BrokenResourceError) as info:
                await server.do_handshake()
            # The server saw the client's alert, not an EOF: the client has
            # not closed its transport.
            assert isinstance(info.value.__cause__, ssl.SSLError)
            assert not isinstance(info.value.__cause__, ssl.SSLEOFError)
            assert "unknown ca" in str(info.value.__cause__).lower()

        nursery.start_soon(client_side)
        nursery.start_soon(server_side)


# ---------------------------------------------------------------- 6. half-close


async def test_send_eof_tls13_keeps_receiving() -> None:
    client, server = memory_tls_stream_pair(tls_version="1.3")
    await handshake(client, server)
    await client.send_all(b"request")
    await client.send_eof()
    assert await server.receive_some() == b"request"
    assert await server.receive_some() == b""
    await server.send_all(b"response")
    assert await client.receive_some() == b"response"
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"late")
    await client.send_eof()  # again: nothing happens
    await server.aclose()
    assert await client.receive_some() == b""
    await client.aclose()


async def test_send_eof_with_unread_data_loses_nothing() -> None:
    client, server = memory_tls_stream_pair(tls_version="1.3")
    await handshake(client, server)
    await server.send_all(b"first part, ")
    await server.send_all(b"second part")
    assert await client.receive_some(5) == b"first"  # the rest stays buffered
    await client.send_eof()
    received = b""
    while data := await client.receive_some():
        received += data
        if received.endswith(b"second part"):
            await server.aclose()
    assert received == b" part, second part"
    await client.aclose()


async def test_send_eof_half_closes_tls12_too() -> None:
    # Generic HalfCloseableStream code must work whatever version the peer
    # chose; an OpenSSL peer keeps sending after our close_notify.
    client, server = memory_tls_stream_pair(tls_version="1.2")
    await handshake(client, server)
    assert client.version() == "TLSv1.2"
    await client.send_eof()
    assert await server.receive_some() == b""
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"after eof")
    await server.send_all(b"still flowing")
    assert await client.receive_some() == b"still flowing"
    await server.aclose()
    assert await client.receive_some() == b""
    await client.aclose()


# ------------------------------------------------------- 7. all decrypted data


async def test_receive_some_returns_every_buffered_record() -> None:
    """trio.SSLStream returns one record (at most 16 KiB) per call."""
    client, server = memory_tls_stream_pair()
    await handshake(client, server)
    for _ in range(4):
        await client.send_all(b"r" * 16384)  # four full records
    data = await server.receive_some()
    assert len(data) == 65536
    await client.send_all(b"s" * 40000)
    assert await server.receive_some(1000) == b"s" * 1000  # max_bytes still rules
    assert len(await server.receive_some()) == 39000


async def test_cancelled_receive_keeps_plaintext_while_answering_the_peer(
    autojump_clock: trio.abc.Clock,
) -> None:
    """receive_some() cancelled while sending a PHA reply dropped the plaintext it decrypted."""
    with trio.fail_after(HANG):
        transport, client, server = await controlled_pha_streams()
        server.ssl_object.verify_client_post_handshake()
        await server.send_all(b"important-1")
        await server.send_all(b"important-2")
        transport.send_gate = trio.Event()  # the client's transport stops taking data
        got: bytes | bytearray = b""
        with trio.move_on_after(1):
            got = await client.receive_some()  # must send the reply: it waits and is cancelled
        transport.send_gate.set()
        rest = await receive_exactly(client, len(b"important-1important-2") - len(got))
        assert got + rest == b"important-1important-2"
        await aclose_all(client, server)


async def test_failed_send_of_a_receive_reply_keeps_plaintext(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A failed send of a PHA reply made receive_some() raise and drop the plaintext.

    The plaintext comes first; then both directions report the failed send
    (the peer waits for that reply: nothing more can be relied on).
    """
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        client, server = pha_streams(client_transport, server_transport)
        await handshake(client, server)
        server.ssl_object.verify_client_post_handshake()
        await server.send_all(b"record-1 ")
        await server.send_all(b"record-2 ")

        async def broken() -> None:
            raise trio.BrokenResourceError("send side reset")

        client_transport.send_stream.send_all_hook = broken
        assert await receive_exactly(client, 18) == b"record-1 record-2 "
        with pytest.raises(trio.BrokenResourceError, match="send side reset"):
            await client.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError, match="send side reset"):
            await client.receive_some()
        await aclose_all(client, server)


async def test_tls12_send_over_a_forged_record_keeps_earlier_plaintext(
    autojump_clock: trio.abc.Clock,
) -> None:
    """TLS 1.2 send_all() meeting a forged record lost the data set aside and the real error."""
    with trio.fail_after(HANG):
        client_transport, server_transport = trio.testing.memory_stream_pair()
        client, server = tls_pair(lambda: (client_transport, server_transport), version="1.2")
        await handshake(client, server)
        await server.send_all(b"authentic")
        await server_transport.send_all(FORGED_RECORD)
        # Both records arrive in one transport read; only the first is decrypted.
        assert await client.receive_some(1) == b"a"
        with pytest.raises(trio.BrokenResourceError, match=r"(?i)bad record mac"):
            await client.send_all(b"hello")  # sets the rest aside, then meets the forgery
        assert await client.receive_some() == b"uthentic"
        with pytest.raises(trio.BrokenResourceError, match=r"(?i)bad record mac"):
            await client.receive_some()
        await aclose_all(client, server)


# ---------------------------------------------------------- 8. bounded send_all


async def test_send_all_memory_is_bounded(autojump_clock: trio.abc.Clock) -> None:
    client_transport, server_transport = trio.testing.lockstep_stream_pair()
    recording = RecordingStream(client_transport)
    client = MemoryBIOStream(recording, client_context(), server_hostname=HOSTNAME)
    server = MemoryBIOStream(server_transport, server_context(), server_side=True)
    await handshake(client, server)
    payload = bytes(16 * 1024 * 1024)
    received = 0

    async def drain() -> None:
        nonlocal received
        while received < len(payload):
            received += len(await server.receive_some())

    # tracemalloc cannot see ciphertext inside OpenSSL's outgoing BIO: sample
    # it, with the chunk in flight, at every transport send.
    held = 0
    send_to_transport = recording.send_all

    async def send_all_sampling(data: bytes | bytearray | memoryview) -> None:
        nonlocal held
        held = max(held, len(data) + client._engine.bytes_to_send)
        await send_to_transport(data)

    recording.send_all = send_all_sampling  # type: ignore[method-assign]
    tracemalloc.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]
            await client.send_all(payload)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert received == len(payload)
    assert recording.largest_send <= SEND_WINDOW
    assert 0 < held <= SEND_WINDOW, f"{held} bytes of ciphertext held at once"
    # Both ends' transient buffers included, far below the 16 MiB payload.
    assert peak < 1024 * 1024, f"peak extra memory {peak} bytes"


# ------------------------------------------------------------ 9. ragged EOF


@pytest.mark.parametrize("https_compatible", [False, True])
async def test_transport_eof_without_close_notify(https_compatible: bool) -> None:
    client, server = memory_tls_stream_pair(https_compatible=https_compatible)
    await handshake(client, server)
    await server.send_all(b"partial")
    await server.transport_stream.aclose()  # no close_notify
    assert await client.receive_some() == b"partial"
    if https_compatible:
        assert await client.receive_some() == b""
        assert await client.receive_some() == b""
    else:
        with pytest.raises(trio.BrokenResourceError, match="truncated") as info:
            await client.receive_some()
        assert isinstance(info.value.__cause__, TLSTruncationError)
    await client.aclose()


@pytest.mark.parametrize("https_compatible", [False, True])
async def test_transport_eof_during_handshake(https_compatible: bool) -> None:
    client, server = memory_tls_stream_pair(https_compatible=https_compatible)
    await client.transport_stream.aclose()  # before sending a ClientHello
    if https_compatible:
        assert await server.receive_some() == b""  # trio.SSLStream's policy
    else:
        with pytest.raises(trio.BrokenResourceError, match="during the TLS handshake") as info:
            await server.receive_some()
        assert isinstance(info.value.__cause__, TLSTruncationError)
    with pytest.raises(trio.BrokenResourceError):
        await server.do_handshake()
    await server.aclose()


# --------------------------------------------------------- 10. corrupt input


@pytest.mark.parametrize("offset", [0, 5, 30, 100])
async def test_corrupted_record_raises_and_alerts(
    offset: int, autojump_clock: trio.abc.Clock
) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    recording = RecordingStream(client_transport)
    client = MemoryBIOStream(recording, client_context(), server_hostname=HOSTNAME)
    server = MemoryBIOStream(server_transport, server_context(), server_side=True)
    await handshake(client, server)
    recording.corrupt_at = recording.bytes_sent + offset
    payload = bytes(range(256)) * 4
    await client.send_all(payload)
    received = b""

    async def receive_until_error() -> None:
        nonlocal received
        while True:
            received += await server.receive_some()

    with pytest.raises(trio.BrokenResourceError) as info:
        await receive_until_error()
    assert isinstance(info.value.__cause__, ssl.SSLError)
    assert payload.startswith(received), "altered plaintext was returned"
    # The client is told: the server's alert arrives (the server has not
    # closed its transport, so without the alert this would hang).
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as client_info:
        await client.receive_some()
    cause = client_info.value.__cause__
    assert isinstance(cause, ssl.SSLError)
    assert not isinstance(cause, ssl.SSLEOFError)
    await client.aclose()
    await server.aclose()


# ------------------------------------------------------------------ helpers


async def test_two_senders_conflict_but_send_and_receive_do_not(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = lockstep_tls_stream_pair()
    await handshake(client, server)
    # The lockstep transport detects conflicts too: the message says ours did.
    ours = pytest.RaisesExc(trio.BusyResourceError, match="on this MemoryBIOStream")
    with trio.fail_after(10), pytest.RaisesGroup(ours):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"a")
            nursery.start_soon(client.send_all, b"b")
    client, server = memory_tls_stream_pair()
    await handshake(client, server)

    async def ping_pong(stream: AnyStream, name: bytes) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, name * 50_000)
            got = b""
            while len(got) < 50_000:
                got += await stream.receive_some()
        assert set(got) == {(b"c" if name == b"s" else b"s")[0]}

    with trio.fail_after(10):  # a false conflict or a deadlock would hang here
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ping_pong, client, b"c")
            nursery.start_soon(ping_pong, server, b"s")
