"""serve_tls_over_tcp's handshake deadline, over real loopback sockets.

The autojump clock works with real sockets here: on loopback, a connect or a
send is complete in the kernel when the call returns, so whenever every task
is blocked, nothing is in flight and the clock may jump to the next deadline.
The test therefore takes no real time, however long the deadline.
"""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio
import trio.testing

from trio_membio import MemoryBIOStream, serve_tls_over_tcp

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
            listeners = await nursery.start(
                partial(
                    serve_tls_over_tcp,
                    echo_once,
                    0,
                    server_context(),
                    host="127.0.0.1",
                    handshake_timeout=HANDSHAKE_TIMEOUT,
                )
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
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

    warnings = [record for record in caplog.records if record.name == "trio_membio"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "TLS handshake with 127.0.0.1:" in warnings[0].getMessage()
    assert f"timed out after {HANDSHAKE_TIMEOUT} seconds" in warnings[0].getMessage()
