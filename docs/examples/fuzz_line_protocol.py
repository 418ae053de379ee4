"""Fuzz your own line-based protocol over TLS with trio_membio.testing.

The protocol under test is a tiny line echo: the client sends lines ending in
b"\\n"; the server answers each with b"echo: <line>\\n", and answers b"quit"
with b"bye\\n" and closes. The protocol code (LineReader, serve_lines, chat)
is what you would write anyway; the rest checks it under a TLS pair whose
ciphertext is cut up, delayed and corrupted, as hypothesis chooses:

1. However the ciphertext is fragmented and delayed, in either direction and
   during the handshake too, the client gets exactly the expected replies.
2. With one ciphertext byte changed after the handshake, the server never
   acts on a line the client did not send, and the conversation ends: with
   trio.BrokenResourceError (TLS detected the change), or at the client's read
   timeout. The timeout matters: a changed length field can make a record
   look longer than what was sent, and then only more bytes or the end of the
   connection can tell, as with any protocol over TCP.

Each example runs in its own trio.run under the autojump clock, so delays and
the timeout cost no real time, and with derandomize=True every run draws the
same examples. In a test suite the two test_ functions are ordinary
(synchronous) pytest tests; here main() calls them. Needs the test extra:
``pip install 'trio-membio[test]'``. See docs/testing.md.

Run it with ``python docs/examples/fuzz_line_protocol.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_membio import MemoryBIOStream
from trio_membio.testing import (
    Corruption,
    FaultPlan,
    FaultyStream,
    TLSVersion,
    handshake,
    memory_tls_stream_pair,
)
from trio_membio.testing.strategies import fault_plans, tls_versions

Stream = MemoryBIOStream[FaultyStream]
EXAMPLES = 25
#: The client's read timeout, in (virtual) seconds.
READ_TIMEOUT = 30.0

# --------------------------------------------------- the protocol under test


class LineReader:
    """Cuts a byte stream into lines; None at a clean end of stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def readline(self) -> bytes | None:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some()
            if not data:
                if self._buffer:
                    raise ValueError("the stream ended in the middle of a line")
                return None
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line


async def serve_lines(stream: trio.abc.Stream, handled: list[bytes]) -> None:
    """The server: echo every line until b"quit"."""
    reader = LineReader(stream)
    while (line := await reader.readline()) is not None:
        handled.append(line)
        if line == b"quit":
            await stream.send_all(b"bye\n")
            break
        await stream.send_all(b"echo: " + line + b"\n")
    await stream.aclose()


async def chat(stream: trio.abc.Stream, lines: list[bytes], one_write: bool) -> list[bytes]:
    """The client: send the lines and b"quit", return the replies up to b"bye"."""
    request = [line + b"\n" for line in [*lines, b"quit"]]
    for chunk in [b"".join(request)] if one_write else request:
        await stream.send_all(chunk)
    reader = LineReader(stream)
    replies = []
    while (reply := await reader.readline()) is not None:
        replies.append(reply)
        if reply == b"bye":
            break
    return replies


# ------------------------------------------------------------- the harness


def run(conversation: Callable[[], Awaitable[None]]) -> None:
    """Run one example under the autojump clock, failing on a hang."""

    async def main() -> None:
        with trio.fail_after(3600):  # virtual seconds: a hang fails, quickly
            await conversation()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


lines_strategy = st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=6)


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None)
@given(
    version=tls_versions(),
    client_faults=fault_plans(max_chunk=200, max_delay=0.1),
    server_faults=fault_plans(max_chunk=200, max_delay=0.1),
    lines=lines_strategy,
    one_write=st.booleans(),
)
def test_replies_survive_any_fragmentation(
    version: TLSVersion,
    client_faults: FaultPlan,
    server_faults: FaultPlan,
    lines: list[bytes],
    one_write: bool,
) -> None:
    """Property 1: fragmentation and delays never change the conversation."""

    async def conversation() -> None:
        client, server = memory_tls_stream_pair(
            tls_version=version,
            client_faults=client_faults,
            server_faults=server_faults,
        )
        handled: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_lines, server, handled)
            replies = await chat(client, lines, one_write)
        await client.aclose()
        assert replies == [b"echo: " + line for line in lines] + [b"bye"]
        assert handled == [*lines, b"quit"]

    run(conversation)


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None)
@given(
    lines=st.lists(
        st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b"!")),
        min_size=1,
        max_size=6,
    ),
    offset=st.integers(min_value=0, max_value=2000),
    xor=st.integers(min_value=1, max_value=255),
)
def test_a_changed_byte_never_reaches_the_protocol(
    lines: list[bytes], offset: int, xor: int
) -> None:
    """Property 2: a corrupted byte is detected, never acted on."""

    async def conversation() -> None:
        client, server = memory_tls_stream_pair()
        await handshake(client, server)
        # Offsets count from here: byte `offset` of the client's requests.
        client.transport_stream.install(FaultPlan(corrupt_sent=(Corruption(offset, xor),)))
        handled: list[bytes] = []
        outcome = "completed"

        async def server_side() -> None:
            try:
                await serve_lines(server, handled)
            except trio.BrokenResourceError:
                await server.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_side)
            try:
                with trio.fail_after(READ_TIMEOUT):
                    replies = await chat(client, lines, one_write=False)
            except trio.BrokenResourceError:
                outcome = "broken"
            except trio.TooSlowError:
                outcome = "timed out"
            # Whether the changed byte was in the conversation (and not, say,
            # in the close_notify that aclose() sends next).
            changed_in_conversation = bool(client.transport_stream.faults)
            await client.aclose()  # the server then sees the end, if it waited
        sent = [*lines, b"quit"]
        assert handled == sent[: len(handled)], "the server acted on a line nobody sent"
        if changed_in_conversation:
            assert outcome != "completed"
        else:
            assert outcome == "completed"
            assert replies == [b"echo: " + line for line in lines] + [b"bye"]

    run(conversation)


def main() -> None:
    """Check both properties."""
    test_replies_survive_any_fragmentation()
    print(f"fragmented and delayed ciphertext: {EXAMPLES} examples, replies intact")
    test_a_changed_byte_never_reaches_the_protocol()
    print(f"one changed ciphertext byte: {EXAMPLES} examples, detected, never acted on")


if __name__ == "__main__":
    main()
