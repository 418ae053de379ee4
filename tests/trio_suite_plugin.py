"""A pytest plugin: trio's own test_ssl.py, run against MemoryBIOStream.

Loaded with ``-p tests.trio_suite_plugin`` by tests/test_trio_suite.py, in a
pytest run over ``--pyargs trio._tests.test_ssl`` (trio ships its tests in the
wheel). trio's tests look ``SSLStream`` and ``SSLListener`` up in their
module's globals when they run, so rebinding the globals after collection
runs every one of them against our classes.
"""

from __future__ import annotations

import pytest

import trio_membio


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Imported here: only once pytest has collected trio's tests.
    import trio._tests.test_ssl as trio_suite

    # setattr: the module's own annotations say trio's classes; replacing
    # them is the point.
    setattr(trio_suite, "SSLStream", trio_membio.MemoryBIOStream)  # noqa: B010
    setattr(trio_suite, "SSLListener", trio_membio.MemoryBIOListener)  # noqa: B010
