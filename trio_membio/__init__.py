"""trio_membio: a structured-concurrency TLS stream for trio, built on memory BIOs."""

from __future__ import annotations

from ._engine import TLSEngine as TLSEngine
from ._engine import TLSTruncationError as TLSTruncationError
from ._errors import HalfCloseNotSupportedError as HalfCloseNotSupportedError
from ._errors import NeedHandshakeError as NeedHandshakeError
from ._errors import UnreadDataError as UnreadDataError
from ._highlevel import DEFAULT_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT
from ._highlevel import default_client_context as default_client_context
from ._highlevel import open_tls_over_tcp_listeners as open_tls_over_tcp_listeners
from ._highlevel import open_tls_over_tcp_stream as open_tls_over_tcp_stream
from ._highlevel import serve_tls_over_tcp as serve_tls_over_tcp
from ._listener import MemoryBIOListener as MemoryBIOListener
from ._statistics import ConnectionEnd as ConnectionEnd
from ._statistics import TLSStatistics as TLSStatistics
from ._stream import MemoryBIOStream as MemoryBIOStream
from ._trace import Stage as Stage
from ._trace import TraceCallback as TraceCallback
from ._trace import TraceEvent as TraceEvent
from ._trace import log_trace_event as log_trace_event

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "ConnectionEnd",
    "HalfCloseNotSupportedError",
    "MemoryBIOListener",
    "MemoryBIOStream",
    "NeedHandshakeError",
    "Stage",
    "TLSEngine",
    "TLSStatistics",
    "TLSTruncationError",
    "TraceCallback",
    "TraceEvent",
    "UnreadDataError",
    "default_client_context",
    "log_trace_event",
    "open_tls_over_tcp_listeners",
    "open_tls_over_tcp_stream",
    "serve_tls_over_tcp",
]

# The public names say where to import them from: trio_membio, not the private
# module that defines them (reprs, tracebacks, pickling, documentation).
for _name in __all__:
    _value = globals()[_name]
    if getattr(_value, "__module__", "").startswith("trio_membio."):
        _value.__module__ = __name__
del _name, _value
