"""The main job: `python -m trio_membio demo`."""

from __future__ import annotations

import io
import runpy
import subprocess
import sys

import pytest
import trio

from trio_membio._cli import main
from trio_membio._cli._demo import run_demo


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
