"""The benchmark suite runs (``--quick``) and writes complete JSON.

These tests check the structure of the results only, never a timing: which
implementation is faster is what the benchmarks are for, not a property the
test suite can rely on (the machine is shared and noisy).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"

ALL = frozenset(
    {"membio", "trio_ssl", "anyio", "asyncio", "blocking", "plain_trio", "floor", "pump"}
)
#: Which implementations each workload must report (anyio: unless not installed).
APPLIES: dict[str, frozenset[str]] = {
    "bulk-tcp": ALL,
    "bulk-tcp-2proc": ALL - {"pump"},
    "bulk-memory": frozenset({"membio", "trio_ssl", "anyio", "plain_trio", "floor", "pump"}),
    "ping-pong": ALL,
    "handshake-full": ALL,
    "handshake-resumed": frozenset({"membio", "trio_ssl", "blocking", "floor", "pump"}),
    "idle-memory": frozenset({"membio", "trio_ssl", "anyio", "plain_trio", "floor"}),
    "send-peak-1MiB": frozenset({"membio", "trio_ssl", "anyio"}),
    "send-peak-64MiB": frozenset({"membio", "trio_ssl", "anyio"}),
}


def run_bench(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(output), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    document: dict[str, Any] = json.loads(output.read_text())
    return document, completed.stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    tmp_path = tmp_path_factory.mktemp("bench")
    chart = tmp_path / "ratios.png"
    document, stdout = run_bench(tmp_path, "--chart", str(chart))
    return document, stdout, chart


def check_numbers(entry: dict[str, Any], rounds: int) -> None:
    assert len(entry["rounds"]) == rounds
    assert all(value > 0 for value in entry["rounds"])
    assert entry["min"] <= entry["median"] <= entry["max"]
    ratio = entry["ratio"]
    assert ratio is not None
    assert len(ratio["rounds"]) == rounds
    assert all(value > 0 for value in ratio["rounds"])
    assert ratio["min"] <= ratio["median"] <= ratio["max"]


def check_document(document: dict[str, Any], workloads: set[str]) -> None:
    assert document["quick"] is True
    rounds = document["rounds"]
    assert rounds == 2
    for name in ("python", "trio", "openssl", "trio_membio"):
        assert document["versions"][name]
    assert document["date"]
    assert document["versions"]["cpus"] >= 1
    # The commit measured; None only outside a git checkout (an sdist).
    commit = document["commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit), commit
    assert document["baseline"] == "trio_ssl"
    assert set(document["implementations"]) == ALL
    anyio_missing = "anyio" in document["unavailable"]
    assert anyio_missing == (document["versions"]["anyio"] is None)

    assert set(document["workloads"]) == workloads
    for name, workload in document["workloads"].items():
        results, skipped = workload["results"], workload["skipped"]
        assert workload["unit"]
        assert isinstance(workload["higher_is_better"], bool)
        assert set(results) | set(skipped) == ALL, name
        assert not set(results) & set(skipped), name
        expected = APPLIES[name] - ({"anyio"} if anyio_missing else set())
        assert set(results) == expected, name
        for entry in results.values():
            check_numbers(entry, rounds)
        assert results["trio_ssl"]["ratio"]["rounds"] == [1.0] * rounds

    # Every TLS implementation negotiated the same TLS 1.3 suite.
    assert document["ciphers_equal"] is True
    negotiated = document["negotiated"]
    assert {"membio", "trio_ssl"} <= set(negotiated)
    suites = {tuple(pair) for pairs in negotiated.values() for pair in pairs}
    assert len(suites) == 1
    ((cipher, version),) = suites
    assert cipher.startswith("TLS_")
    assert version == "TLSv1.3"


def test_quick_run_reports_every_workload(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    document, stdout, _ = quick_run
    check_document(document, set(APPLIES))
    for name in APPLIES:
        assert f"{name}: " in stdout
    assert "total time:" in stdout


def test_quick_run_writes_a_chart_or_says_why_not(
    quick_run: tuple[dict[str, Any], str, Path],
) -> None:
    _, stdout, chart = quick_run
    if "matplotlib is not installed" in stdout:
        assert not chart.exists()
    else:
        assert chart.read_bytes().startswith(b"\x89PNG")


def test_without_anyio_the_suite_reports_it_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked" / "anyio"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("anyio blocked by the test")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(blocker.parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    only = ["bulk-memory", "idle-memory", "handshake-resumed"]
    document, stdout = run_bench(tmp_path, "--only", *only, env=env)
    assert document["unavailable"] == {"anyio": "not installed"}
    assert document["versions"]["anyio"] is None
    check_document(document, set(only))
    for name in ("bulk-memory", "idle-memory"):
        assert document["workloads"][name]["skipped"]["anyio"] == "not installed"
    assert "anyio" in stdout


@pytest.mark.parametrize(
    ("workload", "amount"),
    [("ping-pong", "50"), ("handshake-full", "3"), ("bulk-memory", "1"), ("bulk-tcp", "1")],
)
def test_bench_one_runs_a_single_workload(workload: str, amount: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH.parent / "bench_one.py"), workload, "membio", amount],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    name, _, value = completed.stdout.strip().rpartition(": ")
    assert name == f"{workload} membio"
    assert float(value.replace(",", "")) > 0


def test_bench_ab_alternates_two_implementations() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCH.parent / "bench_ab.py"),
            "ping-pong",
            "membio",
            "floor",
            "3",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["round 1", "round 2", "round 3"]
    per_round = sorted(float(line.rpartition(" ")[2]) for line in lines[:3])
    assert lines[3].startswith(f"ping-pong membio/floor: median {per_round[1]:.3f} ")


def test_bench_one_rejects_an_unknown_workload() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH.parent / "bench_one.py"), "no-such-workload", "membio"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "WORKLOAD" in completed.stderr


def test_profile_breakdown_charges_each_sample_to_one_layer(tmp_path: Path) -> None:
    run = "<module> (bench_one.py:50);run (trio/_core/_run.py:2532)"
    profile = tmp_path / "profile.txt"
    profile.write_text(
        "\n".join(
            [
                # OpenSSL: native code under SSLObject.read
                f"{run};TLSEngine.read (trio_membio/_engine.py:312);"
                "SSLObject.read (ssl.py:921);EVP_DecryptUpdate (libcrypto.so.3) 50",
                # a system call made from the socket fast path
                f"{run};SocketFastPath.try_send (trio_membio/_socket_fast_path.py:68);"
                "write (libc.so.6) 30",
                # this package's Python
                f"{run};MemoryBIOStream.send_all (trio_membio/_stream.py:400) 10",
                # trio's scheduler
                f"{run};unrolled_run (trio/_core/_run.py:2744) 8",
                # the benchmark's own code
                "<module> (bench_one.py:50);Verifier.feed (bench_common.py:141) 2",
                # startup is left out
                "<module> (bench_one.py:1);_find_and_load (<frozen importlib._bootstrap>:1176) 99",
            ]
        )
        + "\n"
    )
    completed = subprocess.run(
        [sys.executable, str(BENCH.parent / "profile_breakdown.py"), str(profile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == f"{profile}: 100 samples"
    assert [line.split() for line in lines[1:]] == [
        ["50.0%", "OpenSSL"],
        ["30.0%", "system", "calls"],
        ["10.0%", "trio_membio"],
        ["8.0%", "trio"],
        ["2.0%", "the", "benchmark"],
    ]


OFFLOAD_LABELS = {"rsa2048": "RSA-2048", "rsa4096": "RSA-4096", "ecdsa": "ECDSA P-256"}


@pytest.mark.parametrize(
    ("client", "certs"),
    [
        # The default load client over every certificate; the other over one (the test's time).
        ("threads", tuple(OFFLOAD_LABELS)),
        ("trio", ("rsa2048",)),
        # Compiled from benchmarks/storm_client.c (.ci/run installs cc); epoll: Linux only.
        pytest.param(
            "c",
            ("rsa2048",),
            marks=pytest.mark.skipif(sys.platform != "linux", reason="storm_client.c uses epoll"),
        ),
    ],
)
def test_handshake_offload_quick_run_reports_every_row(
    tmp_path: Path, client: str, certs: tuple[str, ...]
) -> None:
    """Issue 14's storm benchmark: every certificate, mode and metric, positive numbers.

    The targets' verdicts are measurements: their presence is checked, never their value.
    """
    output = tmp_path / "offload.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCH.parent / "bench_handshake_offload.py"),
            "--quick",
            "--window",
            "0.2",
            "--warmup",
            "0.05",
            "--clients",
            "4",
            "--client",
            client,
            "--certs",
            *certs,
            "--json",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    document: dict[str, Any] = json.loads(output.read_text())
    assert document["benchmark"] == "handshake-offload"
    assert document["quick"] is True
    assert document["modes"] == ["inline", "offload"]
    assert document["client"] == client
    rounds = document["rounds"]
    assert rounds == 2
    metrics = {
        "handshakes_per_s": "handshakes/s",
        "probe_p50_ms": "probe p50",
        "probe_p99_ms": "probe p99",
        "loop_cpu_us": "loop CPU/handshake",
        "process_cpu_us": "process CPU/handshake",
        "server_cores": "server process CPU",
        "load_cores": "load client CPU",
        "load_cpu_us": "load client CPU/handshake",
        "ceiling_per_s": "CPU ceiling",
    }
    targets = {
        "rsa2048": {"handshakes_per_s", "probe_p50_ms", "loop_cpu_us"},
        "rsa4096": {"handshakes_per_s"},
        "ecdsa": {"handshakes_per_s"},
    }
    labels = {cert: OFFLOAD_LABELS[cert] for cert in certs}
    assert set(document["certs"]) == set(labels)
    for cert, entry in document["certs"].items():
        assert entry["clients"] == 4
        assert len(entry["rounds"]) == rounds
        for measured in entry["rounds"]:
            for mode in ("inline", "offload"):
                assert measured[mode]["probe"]["version"] == "TLSv1.3"
                assert measured[mode]["server"]["handshakes"] > 0
            assert measured["inline"]["server"]["offloaded_steps"] == 0
            if cert == "rsa4096":  # about 4 ms a step: well above the policy's threshold
                assert measured["offload"]["server"]["offloaded_steps"] > 0
        assert set(entry["metrics"]) == set(metrics)
        for item in entry["metrics"].values():
            for key in ("inline", "offload", "ratio"):
                summary = item[key]
                assert len(summary["rounds"]) == rounds
                assert all(value > 0 for value in summary["rounds"])
                assert summary["min"] <= summary["median"] <= summary["max"]
        assert {target["metric"] for target in entry["targets"]} == targets[cert]
        assert all(isinstance(target["met"], bool) for target in entry["targets"])
        table = completed.stdout.split(f"{labels[cert]}, 4 clients", 1)[1].split("\n\n", 1)[0]
        for title in metrics.values():
            assert f"\n{title} (" in table, (cert, title)
        assert "\noffload's CPU ceiling / inline's handshakes/s: " in table
        assert "\noffload mode: steps run in the worker threads per handshake " in table
