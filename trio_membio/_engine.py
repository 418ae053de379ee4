"""The sans-I/O TLS engine: an ``ssl.SSLObject`` between two memory BIOs.

Theory of operation
===================

The engine never touches a socket and never awaits. Ciphertext from the peer is
fed in with :meth:`TLSEngine.receive_data` (and the end of the transport with
:meth:`TLSEngine.receive_eof`); ciphertext for the peer is taken out with
:meth:`TLSEngine.data_to_send`. In between, each operation (handshake, read,
write, close_notify, unwrap) calls the SSLObject exactly once (a read may call
it a few times to drain every decryptable record) and reports what it needs
next:

- ``do_handshake()`` / ``unwrap()`` return True when finished, False when they
  need more ciphertext from the peer;
- ``read()`` returns plaintext, ``b""`` for a clean close_notify, or None when
  it needs more ciphertext;
- ``write()`` returns how many plaintext bytes it consumed, or None when it
  needs more ciphertext first (a TLS 1.2 renegotiation).

After any of them, ``bytes_to_send`` says whether ciphertext is waiting to go
out (``output_bio.pending`` is the same test, cheaper, for hot paths; the BIO is
only ever read through ``data_to_send``). Sending it is the caller's job, and
so is deciding *when*: the engine owns only the byte-level rules, which are:

1. No application data before an explicit handshake. Letting OpenSSL run the
   handshake implicitly inside SSL_read/SSL_write skips Python's hostname
   check (bpo-30141), so read() and write() refuse until do_handshake() has
   finished.
2. A write that could not finish must be retried with the same bytes, as
   OpenSSL requires; write() checks that it is.
3. On any TLS error the fatal alert OpenSSL queued stays in the outgoing BIO,
   so the caller can still send it, and the error is raised. From then on
   every operation raises that same error: the engine stays failed.
4. The end of the transport is never written into the incoming BIO. Instead,
   when OpenSSL asks for more ciphertext after the transport ended, the engine
   raises :class:`TLSTruncationError`. This detects truncation whatever the
   context's ``OP_IGNORE_UNEXPECTED_EOF`` says, and a real close_notify is
   still seen as a clean end because it is processed before anyone asks for
   more bytes.
5. TLS 1.3 session tickets (trio issue #819, openssl/openssl#7948): OpenSSL's
   server queues NewSessionTicket messages at the very end of its handshake.
   Sending them then can deadlock a client that only writes over a transport
   without buffering, so the server engine holds them back and releases them
   in front of the first thing it sends after the handshake: data,
   close_notify, or an alert (OpenSSL numbered the tickets first, so nothing
   sent after them would decrypt without them). They are never dropped, so a
   client that reads can resume the session.
6. close_notify must not eat unread data. CPython's unwrap() runs a second
   SSL_shutdown that reads incoming records and fails on application data,
   which a TLS 1.3 peer may still be sending after our close_notify; the
   engine keeps that data aside so read() still returns it (a half-close).
7. During a TLS 1.2 renegotiation, SSL_write must not meet application data:
   OpenSSL accepts it only inside SSL_read and otherwise fails the
   connection. Before each write on TLS 1.2, decryptable application data is
   read out and kept aside for read(), as in rule 6.
"""

from __future__ import annotations

import ssl
import sys
from typing import Final, NoReturn

from ._client_hello import ClientHelloReader

__all__ = ["TLSEngine", "TLSTruncationError"]

_TLS_1_3: Final = "TLSv1.3"
# Read size when setting application data aside: one TLS record's plaintext.
_SET_ASIDE_CHUNK: Final = 16384
_TRUNCATED_DATA: Final = (
    "the peer closed the transport without a TLS close_notify; the data may be truncated"
)


class TLSTruncationError(ssl.SSLEOFError):
    """The transport ended without a TLS close_notify: the data may be cut short.

    A subclass of :exc:`ssl.SSLEOFError`, so code that already recognises
    OpenSSL's "EOF occurred in violation of protocol" keeps working.
    """


class TLSEngine:
    """One TLS connection as a synchronous state machine over two memory BIOs.

    Args:
        ssl_context: The context that creates the :class:`ssl.SSLObject`.
        server_side: True for the server end of the connection.
        server_hostname: The name to send in SNI and to check the peer's
            certificate against (client side). Hostname checking is decided by
            ``ssl_context.check_hostname``; the engine makes sure OpenSSL never
            runs a handshake implicitly, which would skip it (bpo-30141).
        session: A :class:`ssl.SSLSession` from an earlier connection to
            resume (client side).
    """

    __slots__ = (
        "_client_certificate_requested",
        "_client_hello",
        "_close_notify_received",
        "_close_notify_sent",
        "_failure",
        "_handshake_complete",
        "_held_output",
        "_incoming",
        "_outgoing",
        "_pending_write",
        "_renegotiation_possible",
        "_transport_ended",
        "_unread_plaintext",
        "output_bio",
        "ssl_object",
    )

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        #: The outgoing BIO, for testing ``output_bio.pending`` (nonzero
        #: exactly when bytes_to_send is). Take bytes out with data_to_send().
        self.output_bio: ssl.MemoryBIO = self._outgoing
        self.ssl_object: ssl.SSLObject = ssl_context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
        self._handshake_complete = False
        self._failure: ssl.SSLError | None = None
        self._transport_ended = False
        self._close_notify_received = False
        self._close_notify_sent = False
        # Server-side TLS 1.3 session tickets waiting for our first write
        # (rule 5). None once released.
        self._held_output: bytes | None = None
        # The bytes of a write OpenSSL asked us to retry (rule 2).
        self._pending_write: bytes | None = None
        # Plaintext decrypted but not yet returned (rules 6 and 7).
        self._unread_plaintext = b""
        # TLS 1.2 and lower: the peer may start a renegotiation (rule 7).
        self._renegotiation_possible = False
        # Server side: the reader of the client's first bytes, then the SNI
        # name it found ("" for none); None on the client side.
        self._client_hello: ClientHelloReader | str | None = (
            ClientHelloReader() if server_side else None
        )
        # Server side: a post-handshake CertificateRequest awaits its answer.
        self._client_certificate_requested = False

    # ------------------------------------------------------------------ state

    @property
    def handshake_complete(self) -> bool:
        """Whether :meth:`do_handshake` has finished."""
        return self._handshake_complete

    @property
    def failure(self) -> ssl.SSLError | None:
        """The TLS error this engine failed with, if any (rule 3)."""
        return self._failure

    @property
    def close_notify_received(self) -> bool:
        """Whether the peer's close_notify has been read."""
        return self._close_notify_received

    @property
    def close_notify_sent(self) -> bool:
        """Whether our close_notify has been queued in the outgoing BIO."""
        return self._close_notify_sent

    @property
    def client_hello_complete(self) -> bool:
        """Whether the client's whole ClientHello has arrived (server side).

        (Or what arrived cannot be read as one; either way the next
        :meth:`do_handshake` is the step that answers it.)
        """
        return isinstance(self._client_hello, str)

    @property
    def requested_server_name(self) -> str | None:
        """The host name the client's ClientHello asked for (SNI), on the server side.

        As sent (IDNA A-labels such as ``xn--fa-hia.de``); None on the client
        side, before the ClientHello has arrived, or if it carried none.
        """
        name = self._client_hello
        return name if isinstance(name, str) and name else None

    @property
    def transport_ended(self) -> bool:
        """Whether :meth:`receive_eof` has been called."""
        return self._transport_ended

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ciphertext that arrived from the peer.

        Raises:
            ValueError: if ``data`` is empty (use :meth:`receive_eof`) or the
                transport has already ended.
        """
        if not data:
            raise ValueError(
                "receive_data() needs bytes; call receive_eof() at the end of the transport"
            )
        if self._transport_ended:
            raise ValueError("receive_data() after receive_eof(): the transport already ended")
        self._incoming.write(data)
        hello = self._client_hello
        if isinstance(hello, ClientHelloReader):
            hello.feed(data)
            if hello.done:
                self._client_hello = hello.server_name or ""

    def receive_eof(self) -> None:
        """Record that the transport ended (the peer will send nothing more)."""
        self._transport_ended = True

    @property
    def buffered_ciphertext(self) -> int:
        """How many received ciphertext bytes OpenSSL has not consumed yet."""
        return self._incoming.pending

    # ----------------------------------------------------------------- output

    @property
    def bytes_to_send(self) -> int:
        """How many ciphertext bytes are waiting to be sent to the peer."""
        pending = self._outgoing.pending
        if pending and self._held_output:
            # Anything queued releases the held tickets ahead of it.
            return pending + len(self._held_output)
        return pending

    def data_to_send(self, max_bytes: int = -1) -> bytes:
        """Take up to ``max_bytes`` of ciphertext for the peer (all if -1).

        Bytes taken out must be sent, in order, before any taken out later.
        """
        if self._held_output is not None and self._outgoing.pending:
            # Held session tickets (rule 5) were encrypted first, so they must
            # go first: whatever comes later, an alert included, uses later
            # record sequence numbers and would not decrypt before them.
            self._release_held_output()
        return self._outgoing.read(max_bytes)

    # ------------------------------------------------------------- operations

    def do_handshake(self) -> bool:
        """Run the TLS handshake as far as the buffered ciphertext allows.

        Returns:
            True once the handshake has finished (and on every call after,
            unless the engine has failed since: then it raises, rule 3),
            False when more ciphertext from the peer is needed.

        Raises:
            ssl.SSLError: the handshake failed; the fatal alert, if OpenSSL
                made one, is waiting in :meth:`data_to_send`.
        """
        self._raise_if_failed()
        if self._handshake_complete:
            return True
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            if self._transport_ended:
                self._fail_truncated("the peer closed the transport during the TLS handshake")
            return False
        except ssl.SSLError as exc:
            self._fail(exc)
        self._handshake_complete = True
        version = self.ssl_object.version()
        self._renegotiation_possible = version != _TLS_1_3
        if self.ssl_object.server_side and version == _TLS_1_3:
            # What the final server step queued is the session tickets (rule 5).
            self._held_output = self._outgoing.read()
        return True

    def read(self, max_bytes: int) -> bytes | None:
        """Decrypt up to ``max_bytes`` of plaintext.

        Every record that is already fully buffered is decrypted, so one call
        can return several records' worth of data.

        Returns:
            The plaintext; ``b""`` once the peer's close_notify has been read;
            None when no plaintext is available until more ciphertext arrives.

        Raises:
            TLSTruncationError: the transport ended without close_notify.
            ssl.SSLError: a bad record, MAC or alert; the fatal alert we answer
                with is waiting in :meth:`data_to_send`.
            RuntimeError: the handshake has not been run (rule 1).
        """
        unread = self._unread_plaintext
        if unread:
            # Authentic plaintext decrypted earlier goes out first, even when
            # a later record failed (rules 6 and 7).
            self._unread_plaintext = unread[max_bytes:]
            return unread[:max_bytes]
        if self._failure is not None or not self._handshake_complete:
            self._check_ready_for_data()
        if self._close_notify_received:
            return b""
        ssl_object = self.ssl_object
        if not self._incoming.pending and not ssl_object.pending():
            # Nothing buffered can be decrypted (OpenSSL keeps at most a partial
            # record): skip the SSL_read that would raise SSLWantReadError.
            if self._transport_ended:
                self._fail_truncated(_TRUNCATED_DATA)
            return None
        try:
            data = ssl_object.read(max_bytes)
        except ssl.SSLWantReadError:
            if self._transport_ended:
                self._fail_truncated(_TRUNCATED_DATA)
            return None
        except ssl.SSLZeroReturnError:
            self._close_notify_received = True
            return b""
        except ssl.SSLError as exc:
            self._fail(exc)
        if not data:
            # CPython returns b"" instead of raising SSLZeroReturnError when
            # only the peer has sent close_notify.
            self._close_notify_received = True
            return b""
        received = len(data)
        if received >= max_bytes or not self._incoming.pending:
            return data
        # More whole records may be waiting: drain them into one result.
        parts = [data]
        self._decrypt_into(parts, max_bytes - received, max_bytes - received)
        return b"".join(parts)

    def write(self, data: bytes | bytearray | memoryview) -> int | None:
        """Encrypt ``data`` into the outgoing BIO.

        Returns:
            How many bytes were consumed (all of them unless OpenSSL stops
            early), or None when OpenSSL needs ciphertext from the peer first
            (a TLS 1.2 renegotiation). After None, call write() again with the
            same bytes once more ciphertext has been fed in.

        Raises:
            ValueError: ``data`` is empty, or differs from a write that must be
                retried (rule 2).
            RuntimeError: the handshake has not been run, or close_notify was
                already sent.
            TLSTruncationError, ssl.SSLError: as for :meth:`read`.
        """
        if self._failure is not None or not self._handshake_complete:
            self._check_ready_for_data()
        if not data:
            # SSL_write of zero bytes means something else to OpenSSL.
            raise ValueError("write() needs at least one byte")
        if self._close_notify_sent:
            raise RuntimeError("cannot write after close_notify was sent")
        pending = self._pending_write
        if pending is not None and pending != data:
            raise ValueError(
                "a write that needed more ciphertext must be retried with the same bytes"
            )
        if self._held_output is not None:
            self._release_held_output()
        if self._renegotiation_possible and (self._incoming.pending or self.ssl_object.pending()):
            # Buffered records, or the rest of one a short read() left inside
            # the SSLObject (rule 7).
            self._set_aside_application_data()
            self._raise_if_failed()
        try:
            written: int = self.ssl_object.write(data)
        except ssl.SSLWantReadError:
            if self._transport_ended:
                self._fail_truncated(
                    "the peer closed the transport in the middle of a TLS renegotiation"
                )
            if pending is None:
                self._pending_write = bytes(data)
            return None
        except ssl.SSLError as exc:
            self._fail(exc)
        self._pending_write = None
        return written

    def send_close_notify(self) -> None:
        """Queue our close_notify without waiting for the peer's.

        After this no more data can be written. On TLS 1.3 the peer may go on
        sending, and :meth:`read` goes on returning it (a half-close).

        Raises:
            ssl.SSLError: OpenSSL refused to shut down.
            RuntimeError: the handshake has not been run.
        """
        self._raise_if_failed()
        if self._close_notify_sent:
            return
        self._check_ready_for_data()
        self._release_held_output()
        ssl_object = self.ssl_object
        # CPython's unwrap() calls SSL_shutdown a second time at once, to look
        # for the peer's close_notify (that is the SSLWantReadError below, and
        # it means ours is queued). That second call reads incoming records,
        # and OpenSSL fails it with APPLICATION_DATA_AFTER_CLOSE_NOTIFY on
        # application data, which a TLS 1.3 peer may legitimately still be
        # sending. So keep what is decrypted but unread, hide the undecrypted
        # ciphertext from it, and put that back afterwards.
        unread = [self._unread_plaintext]
        while ssl_object.pending():
            unread.append(ssl_object.read(ssl_object.pending()))
        self._unread_plaintext = b"".join(unread)
        hidden = self._incoming.read()
        try:
            ssl_object.unwrap()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self._fail(exc)
        else:
            self._close_notify_received = True
        finally:
            if hidden:
                self._incoming.write(hidden)
        self._close_notify_sent = True

    def unwrap(self) -> bool:
        """Run the two-way TLS shutdown as far as buffered ciphertext allows.

        Returns:
            True when both close_notify alerts have been exchanged, False when
            the peer's is still to come.

        Raises:
            TLSTruncationError: the transport ended before the peer's
                close_notify.
            ssl.SSLError: the shutdown failed.
            RuntimeError: the handshake has not been run.
        """
        self._check_ready_for_data()
        self._release_held_output()
        if not self._close_notify_received and (
            self._incoming.pending or self.ssl_object.pending()
        ):
            # SSL_shutdown fails on application data ahead of the peer's
            # close_notify; read it out first, for buffered_plaintext.
            self._set_aside_application_data()
            self._raise_if_failed()
        try:
            self.ssl_object.unwrap()
        except ssl.SSLWantReadError:
            self._close_notify_sent = True
            if self._transport_ended:
                self._fail_truncated(
                    "the peer closed the transport before answering our close_notify"
                )
            return False
        except ssl.SSLError as exc:
            self._fail(exc)
        self._close_notify_sent = True
        self._close_notify_received = True
        return True

    @property
    def buffered_plaintext(self) -> int:
        """Plaintext decrypted ahead of time and not yet returned by read()."""
        return len(self._unread_plaintext)

    def put_back(self, plaintext: bytes) -> None:
        """Return plaintext from :meth:`read` to the engine, to be read again first.

        For a caller that took data out but could not hand it on (its task
        was cancelled before returning it, say): nothing is lost.
        """
        if plaintext:
            self._unread_plaintext = plaintext + self._unread_plaintext

    def return_unsent(self, ciphertext: bytes | memoryview) -> None:
        """Give back the unsent tail of what :meth:`data_to_send` returned.

        It goes out first next time, ahead of anything queued since. (The
        BIO is a FIFO: queued bytes, if any, are taken out and put back behind
        it, a copy that only a partly sent window costs.)
        """
        queued = self._outgoing.read() if self._outgoing.pending else b""
        self._outgoing.write(ciphertext)
        if queued:
            self._outgoing.write(queued)

    def abandon_write(self) -> None:
        """Forget a write that returned None, to write different data instead.

        A write that returned None consumed nothing (OpenSSL stopped in the
        handshake before taking any of it), so this is safe; rule 2 only
        stops a retry with *different* bytes by mistake.
        """
        self._pending_write = None

    def request_client_certificate(self) -> None:
        """Server side, TLS 1.3: queue a CertificateRequest (post-handshake authentication).

        Does nothing while an earlier request still awaits its answer. Then
        call :meth:`client_certificate_received` as ciphertext arrives.

        Raises:
            ssl.SSLError: OpenSSL refused: the client did not offer
                post-handshake authentication, or this is not TLS 1.3. The
                connection is unaffected.
            RuntimeError: the handshake has not been run.
        """
        self._check_ready_for_data()
        if self._client_certificate_requested:
            return
        self.ssl_object.verify_client_post_handshake()
        self._client_certificate_requested = True
        self._release_held_output()
        try:
            self.ssl_object.do_handshake()  # queues the CertificateRequest
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self._fail(exc)

    def client_certificate_received(self) -> bool:
        """Whether the client's answer to :meth:`request_client_certificate` has come.

        Processes the buffered records (application data among them is kept
        for :meth:`read`, as in rule 7). True once the client's certificate
        has been received and verified.

        Raises:
            TLSTruncationError: the transport ended before the answer.
            ssl.SSLError: the client sent no certificate, or a bad one (the
                fatal alert is waiting in :meth:`data_to_send`).
        """
        if self._incoming.pending or self.ssl_object.pending():
            self._set_aside_application_data()
        self._raise_if_failed()
        if self.ssl_object.getpeercert(binary_form=True) is not None:
            self._client_certificate_requested = False
            return True
        if self._transport_ended:
            self._fail_truncated("the peer closed the transport before answering the request")
        return False

    def release_held_output(self) -> None:
        """Queue held TLS 1.3 session tickets now (rule 5), e.g. before closing."""
        self._release_held_output()

    def take_trailing_data(self) -> bytes:
        """Take the received bytes that come after the TLS data (after unwrap)."""
        return self._incoming.read()

    # --------------------------------------------------------------- helpers

    def _set_aside_application_data(self) -> None:
        """Decrypt buffered application records into the kept-aside plaintext.

        During a TLS 1.2 renegotiation OpenSSL accepts application data only
        inside SSL_read: an SSL_write that meets such a record while driving
        the handshake fails the connection (with a misleading SSLEOFError).
        So before a write, whatever is decryptable is read out first (rule 7);
        read() returns it before anything else.
        """
        parts = [self._unread_plaintext]
        self._decrypt_into(parts, sys.maxsize, _SET_ASIDE_CHUNK)
        self._unread_plaintext = b"".join(parts)

    def _decrypt_into(self, parts: list[bytes], limit: int, chunk: int) -> None:
        """Append the plaintext of buffered records to ``parts``, up to ``limit`` bytes.

        Reads at most ``chunk`` bytes at a time, and stops when no whole
        record is left. A close_notify ends it (remembered); so does a bad
        record: the records before it were authentic, so the error is kept
        for the next read() to raise after them.
        """
        ssl_object = self.ssl_object
        incoming = self._incoming
        added = 0
        while added < limit and (incoming.pending or ssl_object.pending()):
            try:
                data = ssl_object.read(min(limit - added, chunk))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._close_notify_received = True
                break
            except ssl.SSLError as exc:
                self._failure = exc
                break
            if not data:
                self._close_notify_received = True
                break
            parts.append(data)
            added += len(data)

    def _release_held_output(self) -> None:
        held = self._held_output
        if held is not None:
            self._held_output = None
            if held:
                # The outgoing BIO is a FIFO we cannot push to the front of; it
                # is empty here in practice, but keep any queued bytes after
                # the tickets.
                queued = self._outgoing.read()
                self._outgoing.write(held)
                if queued:
                    self._outgoing.write(queued)

    def _check_ready_for_data(self) -> None:
        self._raise_if_failed()
        if not self._handshake_complete:
            raise RuntimeError(
                "call do_handshake() until it returns True before reading or writing "
                "application data (an implicit handshake would skip hostname checking, bpo-30141)"
            )

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail_truncated(self, when: str) -> NoReturn:
        self._fail(TLSTruncationError(ssl.SSL_ERROR_EOF, when))

    def _fail(self, exc: ssl.SSLError) -> NoReturn:
        self._failure = exc
        raise exc
