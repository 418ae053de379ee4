"""The stream's own sender of owed TLS output (transport rule 5), under faults.

On a transport with no try-send, a TLS reply a read queued (a TLS 1.3
post-handshake authentication answer here; a TLS 1.2 renegotiation the same)
goes out from a system task of the stream's own. These tests pin what must
hold around it: it never takes the whole trio.run down, aclose() right after
it still says goodbye properly, and a cancelled aclose() does not wait.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_membio.testing import FaultPlan, FaultyStream

from .helpers import handshake_both
from .peers import pha_streams


class Abort(BaseException):
    """A transport error that is not an Exception (KeyboardInterrupt-like)."""


async def test_aclose_after_a_reply_sends_it_and_close_notify() -> None:
    # aclose() right after the receive that queued the reply: the lane is
    # held by the stream's own sender, which must not make aclose() skip
    # close_notify or close the transport under the reply.
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client, server = pha_streams(client_transport, server_transport)
    await handshake_both(client, server)
    server.ssl_object.verify_client_post_handshake()
    await server.send_all(b"bye")
    assert await client.receive_some() == b"bye"
    await client.aclose()
    assert await server.receive_some() == b""  # close_notify, not truncation
    assert server.getpeercert() is not None  # the reply (our certificate) arrived
    await server.aclose()


async def test_a_base_exception_from_the_transport_does_not_end_the_run() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    faulty = FaultyStream(client_transport)
    client, server = pha_streams(faulty, server_transport)
    await handshake_both(client, server)
    faulty.install(FaultPlan(raise_on_send_at=0, send_error=Abort))
    server.ssl_object.verify_client_post_handshake()
    await server.send_all(b"auth please")
    assert await client.receive_some() == b"auth please"
    await trio.testing.wait_all_tasks_blocked()  # the sender ran and failed
    # Recorded as a write cut short (a BaseException is handled as a
    # cancellation is), for the next call to report.
    with pytest.raises(trio.BrokenResourceError, match="unknown part of it reached the peer"):
        await client.send_all(b"x")
    await client.aclose()
    await server.aclose()


async def test_a_trace_callback_bug_in_the_sender_does_not_end_the_run() -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    armed: list[bool] = []

    def trace(event: object) -> None:
        if armed and getattr(event, "operation", None) == "send":
            raise ValueError("bug in a trace callback")

    client, server = pha_streams(client_transport, server_transport, client_trace=trace)
    await handshake_both(client, server)
    armed.append(True)
    server.ssl_object.verify_client_post_handshake()
    await server.send_all(b"auth please")
    assert await client.receive_some() == b"auth please"
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(trio.BrokenResourceError) as caught:
        await client.send_all(b"x")
    assert isinstance(caught.value.__cause__, ValueError)
    await client.aclose()
    await server.aclose()


async def test_cancelled_aclose_closes_at_once(autojump_clock: trio.abc.Clock) -> None:
    # The transport takes nothing (a hung send): a cancelled aclose() must not
    # spend its close_notify bound anyway.
    client_transport, server_transport = trio.testing.memory_stream_pair()
    faulty = FaultyStream(client_transport)
    client, server = pha_streams(faulty, server_transport)
    await handshake_both(client, server)
    faulty.install(FaultPlan(hang_sent_at=0))
    start = trio.current_time()
    with trio.CancelScope() as scope:
        scope.cancel()
        await client.aclose()
    assert scope.cancelled_caught
    assert trio.current_time() - start < 0.5
    assert faulty.closed
    await server.aclose()
