"""trio_membio: a structured-concurrency TLS stream for trio, built on memory BIOs."""

from __future__ import annotations

from ._engine import TLSEngine as TLSEngine
from ._engine import TLSTruncationError as TLSTruncationError
from ._errors import HalfCloseNotSupportedError as HalfCloseNotSupportedError
from ._errors import NeedHandshakeError as NeedHandshakeError
from ._stream import MemoryBIOStream as MemoryBIOStream

__version__ = "0.1.0"

__all__ = [
    "HalfCloseNotSupportedError",
    "MemoryBIOStream",
    "NeedHandshakeError",
    "TLSEngine",
    "TLSTruncationError",
]
