"""Hypothesis profiles, and the fixtures several test modules share.

Hypothesis profiles: pick one with HYPOTHESIS_PROFILE (default "ci").

- ``ci``: derandomized (the same examples on every run), few examples, no
  deadline, failing examples printed as a reproduction blob, no "explain"
  phase (see below). The default, so that the plain test run stays fast and
  deterministic.
- ``dev``: hypothesis's defaults (100 random examples, saved to .hypothesis/).
- ``fuzz``: a campaign: 10,000 random examples per property, no deadline, no
  "explain" phase; failures are saved to the example database (.hypothesis/)
  and replayed first on the next run. ``nox -s fuzz`` uses it.

HYPOTHESIS_MAX_EXAMPLES=N overrides the profile's number of examples, to fit
a campaign into the time at hand.

Each property test runs its examples under trio's autojump clock with a
virtual deadline, so hypothesis's wall-clock deadline is off everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from .cli_harness import write_pems

# The explain phase reruns a failing example hundreds of times to say which
# parts matter; with a TLS conversation per example that takes many minutes.
_NO_EXPLAIN = [phase for phase in Phase if phase is not Phase.explain]

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=30,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
    phases=_NO_EXPLAIN,
)
settings.register_profile("dev", deadline=None)
settings.register_profile(
    "fuzz",
    max_examples=10_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
    phases=_NO_EXPLAIN,
)
_profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if "HYPOTHESIS_MAX_EXAMPLES" in os.environ:
    # A time-boxed campaign: the profile's settings with fewer (or more) examples.
    settings.register_profile(
        f"{_profile}-sized",
        parent=settings.get_profile(_profile),
        max_examples=int(os.environ["HYPOTHESIS_MAX_EXAMPLES"]),
    )
    _profile = f"{_profile}-sized"
settings.load_profile(_profile)


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, str]:
    """PEM files for the command-line tests (see cli_harness.write_pems)."""
    return write_pems(tmp_path)
