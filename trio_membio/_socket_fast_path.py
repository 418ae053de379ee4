"""Direct socket I/O for the common transport, trio.SocketStream.

Most of the cost of a small TLS message over trio is not cryptography: it is
the layers each byte passes through. A :class:`trio.SocketStream` adds a
conflict detector, error translation and a scheduler round trip per call on
top of the socket, and a TLS stream calls it at least once per message. When
the transport is exactly a ``trio.SocketStream`` (not a subclass, which may
add behaviour of its own) on a POSIX system, MemoryBIOStream talks to the
socket's file descriptor itself, with the same semantics:

- errors become :exc:`trio.BrokenResourceError` (or ClosedResourceError once
  the socket is closed), as SocketStream translates them;
- a closed socket is never touched: the descriptor is looked up on every call
  (trio's socket reports -1 once closed), so a reused descriptor number can
  never be read from or written to;
- waiting uses :func:`trio.lowlevel.wait_readable` / ``wait_writable``, so
  closing the socket (``SocketStream.aclose``) wakes a waiting task with
  ClosedResourceError, and cancellation works as usual.

Each call reports whether it yielded to the scheduler; the stream then adds
the one checkpoint trio's contract requires only when nothing else was one.
"""

from __future__ import annotations

import errno
import os

import trio

__all__ = ["SocketFastPath", "fast_path_for"]

# Errors that mean "the connection is gone", as trio.SocketStream sees them.
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


class SocketFastPath:
    """send_all / receive_some straight on a SocketStream's descriptor."""

    __slots__ = ("_fileno", "_socket", "socket", "unsent")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._socket = stream.socket
        #: The socket, for :func:`trio.lowlevel.wait_readable` after try_receive().
        self.socket: trio.socket.SocketType = stream.socket
        # Looked up on every call: -1 once the socket is closed.
        self._fileno = stream.socket.fileno
        #: While send_all() waits for room: how much of its data has not gone
        #: out yet. After a cancelled send_all(), the part that never reached
        #: the socket (stale otherwise: only read after a cancellation).
        self.unsent = 0

    def try_receive(self, max_bytes: int) -> bytes | None:
        """Receive what is there without waiting: b"" at end, None if nothing yet."""
        descriptor = self._fileno()
        if descriptor < 0:
            raise trio.ClosedResourceError("the transport socket was closed")
        try:
            return os.read(descriptor, max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _translate(exc) from exc

    def try_send(self, data: bytes | memoryview) -> int:
        """Send what the socket takes now, without waiting; return how much."""
        descriptor = self._fileno()
        if descriptor < 0:
            raise trio.ClosedResourceError("the transport socket was closed")
        try:
            return os.write(descriptor, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if self._socket.did_shutdown_SHUT_WR:
                # Someone called send_eof() on the transport itself.
                raise trio.ClosedResourceError("can't send data after sending EOF") from exc
            raise _translate(exc) from exc

    async def send_all(self, data: bytes) -> bool:
        """Send all of ``data``; return whether it yielded.

        If cancelled while waiting, part of ``data`` may have been sent:
        all but the last :attr:`unsent` bytes.
        """
        sent = self.try_send(data)
        if sent == len(data):
            return False
        with memoryview(data) as view:
            view = view[sent:]
            while view:
                self.unsent = len(view)
                await trio.lowlevel.wait_writable(self._socket)
                view = view[self.try_send(view) :]
        return True


def _translate(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("the transport socket was closed")
    return trio.BrokenResourceError(f"socket error: {exc}")


def fast_path_for(stream: trio.abc.Stream) -> SocketFastPath | None:
    """A fast path for ``stream`` when it is a plain SocketStream on POSIX."""
    if isinstance(stream, trio.SocketStream) and os.name == "posix":
        return SocketFastPath(stream)
    return None
