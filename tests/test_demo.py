"""The main job: `python -m trio_membio demo`."""

from __future__ import annotations

import io
import re
import runpy
import subprocess
import sys

import pytest
import trio

from trio_membio._cli import main, main_async
from trio_membio._cli._demo import run_demo

from .cli_harness import TIMEOUT, Captured


async def test_demo_in_process() -> None:
    out = io.StringIO()
    with trio.fail_after(30):
        await run_demo(out)
    text = out.getvalue()
    assert "protocol  TLSv1.3" in text
    assert "ALPN      demo/1" in text
    assert "names DNS:localhost" in text
    assert "client  sent 1,048,576 bytes, then send_eof()" in text
    assert "'server: got 1048576 bytes, bye'" in text
    assert "server  closed after echoing 1,048,576 bytes" in text


def test_demo_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_membio", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "client  closed" in result.stdout
    assert result.stderr == ""


def test_cli_rejects_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_module_entry_point(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["trio_membio", "demo"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("trio_membio", run_name="__main__")
    assert info.value.code == 0
    assert "client  closed" in capsys.readouterr().out


async def test_demo_trace() -> None:
    captured = Captured()
    with trio.fail_after(TIMEOUT):
        status = await main_async(["demo", "--trace"], console=captured.console)
    assert status == 0
    assert "client  closed" in captured.out.getvalue()
    lines = captured.err.getvalue().splitlines()
    for side in ("client", "server"):
        pattern = rf"\[ *\d+\.\d{{6}}\] {side}: SSLObject -> outgoing BIO: \d+ bytes \(handshake\)"
        assert any(re.fullmatch(pattern, line) for line in lines), lines[:20]
    assert all(re.match(r"\[ *\d+\.\d{6}\] (client|server): ", line) for line in lines)


def test_demo_without_trace_prints_no_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    captured = capsys.readouterr()
    assert "client  closed" in captured.out
    assert captured.err == ""
