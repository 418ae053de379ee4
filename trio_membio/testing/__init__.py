"""Test kit for code that uses trio_membio: TLS stream pairs, faults, schedules.

Theory of operation
===================

Testing a protocol over TLS usually needs a connected pair of TLS streams, and
then the ways the network misbehaves: ciphertext arriving in odd pieces or
late, a flipped byte, a connection cut mid-record, a peer that stops
answering, a task cancelled at the worst moment. This package provides each
of those as plain data, so that a property-based test can generate them:

- :func:`memory_tls_stream_pair` / :func:`lockstep_tls_stream_pair` build a
  (client, server) pair of :class:`~trio_membio.MemoryBIOStream` over trio's
  in-memory transports with throwaway certificates; :func:`handshake` runs
  both handshakes at once. :func:`tls_engine_pair` does the same for the
  sans-I/O :class:`~trio_membio.TLSEngine`.
- every stream of those pairs runs over a :class:`FaultyStream`, which
  applies a :class:`FaultPlan` (chunking, delays, corrupted bytes, an early
  end, hangs, injected errors) deterministically;
- :class:`TaskSchedule` and :class:`CancelPoint` describe interleavings and
  cancellations;
- :mod:`trio_membio.testing.strategies` has hypothesis strategies for all of
  them, and :func:`run_in_virtual_time` runs an ``async def`` property's
  examples each in its own ``trio.run`` on an autojump clock.

This is a runtime module: it does not import pytest, and imports cryptography
(and, in ``strategies``, hypothesis) only when they are needed. Both come
with ``pip install 'trio-membio[test]'``. See docs/testing.md.
"""

from __future__ import annotations

from ._faults import FaultyStream as FaultyStream
from ._pairs import DEFAULT_HOSTNAME as DEFAULT_HOSTNAME
from ._pairs import TLSStreamPair as TLSStreamPair
from ._pairs import TLSVersion as TLSVersion
from ._pairs import handshake as handshake
from ._pairs import lockstep_tls_stream_pair as lockstep_tls_stream_pair
from ._pairs import memory_tls_stream_pair as memory_tls_stream_pair
from ._pairs import throwaway_contexts as throwaway_contexts
from ._pairs import tls_engine_pair as tls_engine_pair
from ._plan import Corruption as Corruption
from ._plan import FaultPlan as FaultPlan
from ._plan import OperationRecord as OperationRecord
from ._plan import Outcome as Outcome
from ._plan import random_chunks as random_chunks
from ._schedule import CancelPoint as CancelPoint
from ._schedule import Pause as Pause
from ._schedule import TaskSchedule as TaskSchedule
from ._virtual_time import DEFAULT_VIRTUAL_TIMEOUT as DEFAULT_VIRTUAL_TIMEOUT
from ._virtual_time import run_in_virtual_time as run_in_virtual_time

__all__ = [
    "DEFAULT_HOSTNAME",
    "DEFAULT_VIRTUAL_TIMEOUT",
    "CancelPoint",
    "Corruption",
    "FaultPlan",
    "FaultyStream",
    "OperationRecord",
    "Outcome",
    "Pause",
    "TLSStreamPair",
    "TLSVersion",
    "TaskSchedule",
    "handshake",
    "lockstep_tls_stream_pair",
    "memory_tls_stream_pair",
    "random_chunks",
    "run_in_virtual_time",
    "throwaway_contexts",
    "tls_engine_pair",
]
