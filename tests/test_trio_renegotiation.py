"""trio's own renegotiation tests, run against MemoryBIOStream.

trio ships its test suite in the wheel (``trio._tests.test_ssl``). Its
renegotiation tests talk to ``PyOpenSSLEchoStream``, a transport whose
``receive_some()`` drops the bytes it was about to return when it is
cancelled. The old adapter cancelled a transport receive of its own when a
receive that had to send was done, so those bytes vanished and both tests
hung. They must pass: the stream cancels no transport call whose data
matters (issue 12, symptom 5). The tests look ``SSLStream`` up in their
module at call time, so rebinding it runs them against our class.
"""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing

import trio_membio

trio_suite = pytest.importorskip("trio._tests.test_ssl", reason="trio ships its tests")


@pytest.fixture(params=["tls13", "tls12"])
def client_ctx(request: pytest.FixtureRequest) -> ssl.SSLContext:
    """The client context trio's fixture of the same name builds."""
    context = ssl.create_default_context()
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    trio_suite.TRIO_TEST_CA.configure_trust(context)
    if request.param == "tls12":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


@pytest.fixture
def ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trio_suite, "SSLStream", trio_membio.MemoryBIOStream)


@pytest.mark.usefixtures("ours")
async def test_trio_renegotiation_simple(client_ctx: ssl.SSLContext) -> None:
    with trio.fail_after(30):
        await trio_suite.test_renegotiation_simple(client_ctx)


@pytest.mark.usefixtures("ours")
async def test_trio_renegotiation_randomized(
    client_ctx: ssl.SSLContext, autojump_clock: trio.testing.MockClock
) -> None:
    # trio's test drives the clock itself (it sleeps for minutes of virtual
    # time): it needs the MockClock it asks for, and no virtual deadline; the
    # per-test timeout turns a hang into a failure.
    await trio_suite.test_renegotiation_randomized(autojump_clock, client_ctx)
