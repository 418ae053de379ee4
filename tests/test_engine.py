"""Synchronous tests of the sans-I/O TLSEngine: two engines joined by a byte pump."""

from __future__ import annotations

import functools
import itertools
import random
import ssl
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_membio import TLSEngine, TLSTruncationError

from .helpers import HOSTNAME, TLSVersion, client_context, server_context

VERSIONS: list[TLSVersion] = ["1.2", "1.3"]
EXPECTED_VERSION = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}
WHOLE = (1 << 30,)  # chunk sizes that deliver everything at once

# st.binary alone stays small (hypothesis caps how much it draws), so large
# payloads spanning several 16 KiB records are drawn as a seed and a length.
PAYLOADS = st.one_of(
    st.binary(min_size=1, max_size=100_000),
    st.tuples(st.integers(min_value=0), st.integers(min_value=16_385, max_value=100_000)).map(
        lambda seed_and_size: random.Random(seed_and_size[0]).randbytes(seed_and_size[1])
    ),
)


@functools.cache
def shared_contexts(version: TLSVersion) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A (client, server) context pair, made once: loading the CA store is slow."""
    return client_context(version), server_context(version)


def make_pair(
    version: TLSVersion = "1.3",
    *,
    client_ctx: ssl.SSLContext | None = None,
    server_ctx: ssl.SSLContext | None = None,
    server_hostname: str = HOSTNAME,
    session: ssl.SSLSession | None = None,
) -> tuple[TLSEngine, TLSEngine]:
    shared_client_ctx, shared_server_ctx = shared_contexts(version)
    client = TLSEngine(
        client_ctx or shared_client_ctx, server_hostname=server_hostname, session=session
    )
    server = TLSEngine(server_ctx or shared_server_ctx, server_side=True)
    return client, server


def pieces(data: bytes, sizes: Iterator[int]) -> Iterator[bytes]:
    """Cut ``data`` into consecutive pieces whose lengths come from ``sizes``."""
    pos = 0
    while pos < len(data):
        step = next(sizes)
        yield data[pos : pos + step]
        pos += step


def handshake(client: TLSEngine, server: TLSEngine, sizes: Sequence[int] = WHOLE) -> None:
    """Pump ciphertext both ways, running do_handshake after every piece."""
    chunks = itertools.cycle(sizes)
    client_done = client.do_handshake()
    server_done = False
    for _ in range(10):
        for piece in pieces(client.data_to_send(), chunks):
            server.receive_data(piece)
            server_done = server.do_handshake()
        for piece in pieces(server.data_to_send(), chunks):
            client.receive_data(piece)
            client_done = client.do_handshake()
        if client_done and server_done and not client.bytes_to_send:
            return
    raise AssertionError("the handshake did not finish")


def transfer(
    src: TLSEngine, dst: TLSEngine, sizes: Sequence[int] = WHOLE, max_bytes: int = 65536
) -> bytes:
    """Move src's ciphertext to dst piece by piece; return all plaintext dst reads."""
    received = bytearray()
    for piece in pieces(src.data_to_send(), itertools.cycle(sizes)):
        dst.receive_data(piece)
        while data := dst.read(max_bytes):
            received += data
    return bytes(received)


def records(ciphertext: bytes) -> list[bytes]:
    """Split ciphertext into whole TLS records (5-byte header + body)."""
    result = []
    pos = 0
    while pos < len(ciphertext):
        end = pos + 5 + int.from_bytes(ciphertext[pos + 3 : pos + 5], "big")
        assert end <= len(ciphertext), "incomplete record"
        result.append(ciphertext[pos:end])
        pos = end
    return result


def connected(version: TLSVersion = "1.3") -> tuple[TLSEngine, TLSEngine]:
    client, server = make_pair(version)
    handshake(client, server)
    return client, server


# ------------------------------------------------------------------- handshake


@pytest.mark.parametrize("version", VERSIONS)
def test_handshake_completes(version: TLSVersion) -> None:
    client, server = connected(version)
    assert client.handshake_complete
    assert server.handshake_complete
    assert client.ssl_object.version() == EXPECTED_VERSION[version]
    assert server.ssl_object.version() == EXPECTED_VERSION[version]
    assert client.do_handshake() is True  # and on every call after
    assert client.write(b"ping") == 4
    assert transfer(client, server) == b"ping"


@pytest.mark.parametrize("version", VERSIONS)
def test_untrusted_certificate_is_rejected_with_alert(version: TLSVersion) -> None:
    untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, but trusts no CA
    client, server = make_pair(version, client_ctx=untrusting)
    assert client.do_handshake() is False
    server.receive_data(client.data_to_send())
    assert server.do_handshake() is False
    client.receive_data(server.data_to_send())
    with pytest.raises(ssl.SSLCertVerificationError) as client_error:
        client.do_handshake()
    assert client.failure is client_error.value
    alert = client.data_to_send()
    assert alert, "the fatal alert must stay in the outgoing BIO"
    server.receive_data(alert)
    with pytest.raises(ssl.SSLError) as server_error:
        server.do_handshake()
    assert "ALERT" in (server_error.value.reason or "")  # it received the alert
    assert not server.handshake_complete
    with pytest.raises(ssl.SSLCertVerificationError):
        client.do_handshake()  # the engine stays failed


@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_hostname_is_rejected(version: TLSVersion) -> None:
    client, server = make_pair(version, server_hostname="wrong.example.org")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(client, server)
    assert not client.handshake_complete


@pytest.mark.parametrize("version", VERSIONS)
@settings(derandomize=True, max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=20),
    payload=PAYLOADS,
)
def test_arbitrary_fragmentation(version: TLSVersion, sizes: list[int], payload: bytes) -> None:
    client, server = make_pair(version)
    handshake(client, server, sizes)
    assert client.ssl_object.version() == EXPECTED_VERSION[version]
    assert client.write(payload) == len(payload)
    assert transfer(client, server, sizes) == payload
    backwards = payload[::-1]
    assert server.write(backwards) == len(backwards)
    assert transfer(server, client, sizes) == backwards


# ------------------------------------------------------------------ read/write


def test_no_application_data_before_handshake() -> None:
    client, server = make_pair()
    with pytest.raises(RuntimeError, match="bpo-30141"):
        client.read(100)
    with pytest.raises(RuntimeError, match="bpo-30141"):
        client.write(b"early")
    # Nor with a ClientHello buffered, which OpenSSL would happily answer.
    assert client.do_handshake() is False
    server.receive_data(client.data_to_send())
    with pytest.raises(RuntimeError, match="bpo-30141"):
        server.read(100)
    with pytest.raises(RuntimeError, match="bpo-30141"):
        server.write(b"early")
    assert server.bytes_to_send == 0  # no implicit handshake ran
    assert not server.handshake_complete


@pytest.mark.parametrize("version", VERSIONS)
def test_read_drains_several_records(version: TLSVersion) -> None:
    client, server = connected(version)
    chunks = [bytes([i]) * 10_000 for i in range(4)]
    for chunk in chunks:
        assert client.write(chunk) == 10_000
    ciphertext = client.data_to_send()
    assert len(records(ciphertext)) >= 4
    server.receive_data(ciphertext)
    assert server.read(65536) == b"".join(chunks)
    assert server.read(65536) is None

    for chunk in chunks:
        client.write(chunk)
    server.receive_data(client.data_to_send())
    assert server.read(15000) == chunks[0] + chunks[1][:5000]  # exactly max_bytes
    assert server.read(65536) == chunks[1][5000:] + chunks[2] + chunks[3]


def test_read_returns_none_when_it_needs_more_ciphertext() -> None:
    client, server = connected()
    assert server.read(100) is None  # nothing delivered yet
    client.write(b"a whole record")
    (record,) = records(client.data_to_send())
    server.receive_data(record[: len(record) // 2])
    assert server.read(100) is None  # half a record
    server.receive_data(record[len(record) // 2 :])
    assert server.read(100) == b"a whole record"
    assert server.read(100) is None


def test_return_unsent_goes_out_first_and_keeps_the_order() -> None:
    client, server = connected()
    client.write(b"first record")
    taken = client.data_to_send()
    assert client.output_bio.pending == 0
    client.return_unsent(memoryview(taken)[3:])  # the socket took only 3 bytes
    assert client.output_bio.pending == client.bytes_to_send == len(taken) - 3
    client.write(b" and more")
    # The peer decrypts both records: any reordering would fail the record MAC.
    server.receive_data(taken[:3] + client.data_to_send())
    assert server.read(100) == b"first record and more"
    # A window taken from a longer queue: its tail goes back ahead of the rest.
    client.write(b"one")
    client.write(b"two")
    window = client.data_to_send(10)  # part of the first record only
    client.return_unsent(window[4:])  # 4 bytes went out
    server.receive_data(window[:4] + client.data_to_send())
    assert server.read(100) == b"onetwo"


# ------------------------------------------------------------------ truncation


@pytest.mark.parametrize("version", VERSIONS)
def test_eof_without_close_notify_is_truncation(version: TLSVersion) -> None:
    client, server = connected(version)
    client.write(b"some data")
    assert transfer(client, server) == b"some data"
    server.receive_eof()
    with pytest.raises(TLSTruncationError) as first:
        server.read(100)
    assert isinstance(first.value, ssl.SSLEOFError)
    assert server.failure is first.value
    with pytest.raises(TLSTruncationError) as second:
        server.read(100)
    assert second.value is first.value
    with pytest.raises(TLSTruncationError):
        server.write(b"more")


@pytest.mark.parametrize("version", VERSIONS)
def test_eof_after_close_notify_is_clean(version: TLSVersion) -> None:
    client, server = connected(version)
    client.write(b"last words")
    client.send_close_notify()
    assert client.close_notify_sent
    server.receive_data(client.data_to_send())
    server.receive_eof()
    assert server.read(100) == b"last words"
    assert server.read(100) == b""
    assert server.close_notify_received
    assert server.read(100) == b""
    assert server.failure is None


def test_eof_during_handshake_is_truncation() -> None:
    client, server = make_pair()
    client.do_handshake()
    server.receive_data(client.data_to_send())
    assert server.do_handshake() is False
    flight = server.data_to_send()
    client.receive_data(flight[: len(flight) // 2])
    assert client.do_handshake() is False
    client.receive_eof()
    with pytest.raises(TLSTruncationError):
        client.do_handshake()
    with pytest.raises(TLSTruncationError):
        client.do_handshake()


# ------------------------------------------------------------ corrupted record


@pytest.mark.parametrize("version", VERSIONS)
def test_corrupted_record_fails_the_engine(version: TLSVersion) -> None:
    client, server = connected(version)
    client.write(b"genuine data")
    (record,) = records(client.data_to_send())
    assert record[0] == 23  # application_data
    tampered = bytearray(record)
    tampered[len(tampered) // 2] ^= 0x01
    server.receive_data(tampered)
    with pytest.raises(ssl.SSLError) as error:
        server.read(100)
    assert not isinstance(error.value, TLSTruncationError)
    assert server.failure is error.value
    assert server.data_to_send(), "the fatal alert must be waiting to go out"
    for operation in (
        lambda: server.read(100),
        lambda: server.write(b"reply"),
        server.send_close_notify,
        server.unwrap,
    ):
        with pytest.raises(ssl.SSLError) as again:
            operation()
        assert again.value is error.value


@pytest.mark.parametrize("server_wrote_first", [True, False], ids=["after-write", "no-write"])
@pytest.mark.parametrize("version", VERSIONS)
def test_fatal_alert_is_readable_by_the_peer(version: TLSVersion, server_wrote_first: bool) -> None:
    # Rule 3 keeps the fatal alert so that the peer learns why the connection
    # died: the peer must be able to decrypt it and see the alert.
    client, server = connected(version)
    if server_wrote_first:
        server.write(b"hello")
        assert transfer(server, client) == b"hello"
    client.write(b"genuine data")
    tampered = bytearray(client.data_to_send())
    tampered[len(tampered) // 2] ^= 0x01
    server.receive_data(tampered)
    with pytest.raises(ssl.SSLError):
        server.read(100)
    client.receive_data(server.data_to_send())
    with pytest.raises(ssl.SSLError) as error:
        client.read(100)
    assert error.value.reason == "SSLV3_ALERT_BAD_RECORD_MAC"  # the alert, received


# ------------------------------------------------------------- session tickets


def resume_ticketed_session(
    client: TLSEngine, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> tuple[TLSEngine, TLSEngine]:
    """A new pair, handshaken, resuming the session ``client`` holds (which
    must carry a ticket by now)."""
    session = client.ssl_object.session
    assert session is not None
    assert session.has_ticket
    resumed_client, resumed_server = make_pair(
        client_ctx=client_ctx, server_ctx=server_ctx, session=session
    )
    handshake(resumed_client, resumed_server)
    return resumed_client, resumed_server


def test_tls13_session_tickets_held_until_first_write() -> None:
    client_ctx, server_ctx = client_context("1.3"), server_context("1.3")
    client, server = make_pair(client_ctx=client_ctx, server_ctx=server_ctx)
    handshake(client, server)
    assert server.bytes_to_send == 0  # the tickets are held back
    assert server.write(b"x") == 1
    ciphertext = server.data_to_send()
    # The tickets (one record each) come first, then the data record.
    assert len(records(ciphertext)) == server_ctx.num_tickets + 1
    assert server_ctx.num_tickets > 0
    client.receive_data(ciphertext)
    assert client.read(100) == b"x"
    resumed_client, resumed_server = resume_ticketed_session(client, client_ctx, server_ctx)
    assert resumed_client.ssl_object.session_reused
    assert resumed_server.ssl_object.session_reused


def test_tls13_session_tickets_go_out_before_close_notify() -> None:
    client_ctx, server_ctx = client_context("1.3"), server_context("1.3")
    client, server = make_pair(client_ctx=client_ctx, server_ctx=server_ctx)
    handshake(client, server)
    assert server.bytes_to_send == 0
    session = client.ssl_object.session
    assert session is None or not session.has_ticket
    server.send_close_notify()
    ciphertext = server.data_to_send()
    assert len(records(ciphertext)) == server_ctx.num_tickets + 1
    client.receive_data(ciphertext)
    assert client.read(100) == b""
    resumed_client, _ = resume_ticketed_session(client, client_ctx, server_ctx)
    assert resumed_client.ssl_object.session_reused


# ------------------------------------------------------------------ write retry


def test_write_retry_must_use_the_same_bytes() -> None:
    client, server = connected("1.2")
    # A write only has to be retried when SSL_write wants to read, which needs a
    # TLS 1.2 renegotiation, and Python's ssl module exposes no way to start one
    # (no SSL_renegotiate). So the state such a write leaves behind is set
    # directly, to exercise write()'s check of rule 2.
    client._pending_write = b"abc"
    with pytest.raises(ValueError, match="same bytes"):
        client.write(b"abd")
    assert client.bytes_to_send == 0  # the wrong write was not encrypted
    assert client.write(bytearray(b"abc")) == 3  # the right retry goes through
    assert transfer(client, server) == b"abc"
    assert client.write(b"anything") == 8  # and the retry obligation is gone


# ----------------------------------------------------------------- shutdown


@pytest.mark.parametrize("version", VERSIONS)
def test_unwrap_and_trailing_data(version: TLSVersion) -> None:
    client, server = connected(version)
    assert client.unwrap() is False
    assert client.close_notify_sent
    assert client.unwrap() is False  # the server's close_notify has not arrived
    server.receive_data(client.data_to_send())
    assert server.read(100) == b""
    assert server.unwrap() is True
    client.receive_data(server.data_to_send() + b"TRAILING")
    assert client.unwrap() is True
    assert client.close_notify_received
    assert client.take_trailing_data() == b"TRAILING"


def test_tls13_half_close() -> None:
    client, server = connected("1.3")
    client.send_close_notify()
    server.receive_data(client.data_to_send())
    assert server.read(100) == b""
    assert server.write(b"still talking") == 13
    assert transfer(server, client) == b"still talking"
    with pytest.raises(RuntimeError, match="after close_notify"):
        client.write(b"no more")


@pytest.mark.parametrize("partly_read", [False, True], ids=["unread", "partly-read"])
def test_tls13_half_close_keeps_received_data(partly_read: bool) -> None:
    # send_close_notify() promises that on TLS 1.3 read() goes on returning
    # what the peer sends; that must include what has already been received
    # (still ciphertext in the incoming BIO, or a record read only in part).
    client, server = connected("1.3")
    server.write(b"already on its way")
    client.receive_data(server.data_to_send())
    expected = b"already on its way"
    if partly_read:
        assert client.read(8) == b"already "
        expected = b"on its way"
    client.send_close_notify()
    assert client.failure is None
    assert client.read(100) == expected
    server.receive_data(client.data_to_send())
    assert server.read(100) == b""


# ------------------------------------------------------------- argument checks


def test_argument_checks() -> None:
    client, server = connected()
    with pytest.raises(ValueError, match="receive_eof"):
        server.receive_data(b"")
    with pytest.raises(ValueError, match="needs at least one byte"):
        client.write(b"")
    server.receive_eof()
    assert server.transport_ended
    with pytest.raises(ValueError, match="after receive_eof"):
        server.receive_data(b"late")
