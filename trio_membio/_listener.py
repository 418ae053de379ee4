"""MemoryBIOListener: a trio Listener that wraps accepted streams in TLS."""

from __future__ import annotations

import ssl
from typing import Generic, TypeVar

import trio

from ._stream import MemoryBIOStream

__all__ = ["MemoryBIOListener"]

TransportStream = TypeVar("TransportStream", bound=trio.abc.Stream)


class MemoryBIOListener(
    trio.abc.Listener[MemoryBIOStream[TransportStream]], Generic[TransportStream]
):
    """Accepts connections from ``transport_listener`` and wraps them in TLS.

    A drop-in for :class:`trio.SSLListener`. :meth:`accept` returns as soon as
    the transport connection is accepted; the handshake runs on the stream's
    first use (or its ``do_handshake()``), so a slow or silent client never
    blocks the accept loop. :func:`serve_tls_over_tcp` adds a handshake
    deadline on top.

    Args:
        transport_listener: The listener whose connections carry the TLS.
        ssl_context: The server-side context for every accepted connection.
        https_compatible: Passed to each :class:`MemoryBIOStream`.
    """

    def __init__(
        self,
        transport_listener: trio.abc.Listener[TransportStream],
        ssl_context: ssl.SSLContext,
        *,
        https_compatible: bool = False,
    ) -> None:
        self.transport_listener = transport_listener
        self._ssl_context = ssl_context
        self._https_compatible = https_compatible

    async def accept(self) -> MemoryBIOStream[TransportStream]:
        """Accept the next connection and wrap it, without handshaking.

        Raises:
            trio.ClosedResourceError: the listener was closed.
            OSError: as the transport listener raises it.
            ssl.SSLError: the context cannot serve (it is a client-side
                one); the accepted connection is closed.
        """
        transport_stream = await self.transport_listener.accept()
        try:
            return MemoryBIOStream(
                transport_stream,
                self._ssl_context,
                server_side=True,
                https_compatible=self._https_compatible,
            )
        except BaseException:
            # A context that cannot serve (a client-side one, say).
            await trio.aclose_forcefully(transport_stream)
            raise

    async def aclose(self) -> None:
        """Close the transport listener."""
        await self.transport_listener.aclose()
