"""The command line with real standard streams and signals.

One subprocess smoke test per command runs the real ``python -m
trio_membio``; in process, connect reads and writes real pipes and serve
stops on a real SIGTERM.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_membio._cli import Console, main_async

from .cli_harness import (
    TIMEOUT,
    Captured,
    WatchedText,
    python_module,
    read_until,
    run_connect,
    running_serve,
    started_process,
)


async def test_serve_stops_on_sigterm_in_process(tmp_path: Path) -> None:
    captured = Captured()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            statuses: list[int] = []

            async def serve(task_status: trio.TaskStatus[object]) -> None:
                statuses.append(
                    await main_async(
                        ["serve", "--ca-out", str(tmp_path / "ca.pem")],
                        console=captured.console,
                        task_status=task_status,
                    )
                )
                done.set()

            await nursery.start(serve)
            signal.raise_signal(signal.SIGTERM)
            await done.wait()
    assert statuses == [0]
    assert "trio_membio: SIGTERM received, server stopped" in captured.err.getvalue()


@pytest.fixture
def pipes() -> Iterator[tuple[io.BufferedReader, io.BufferedWriter, io.BufferedReader]]:
    """(stdin, stdout, what was written to stdout) as files on pipes.

    stdin holds an HTTP/1.0 request (answered, then the connection closes).
    """
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    os.write(stdin_write, b"GET /bytes/10 HTTP/1.0\r\n\r\n")
    os.close(stdin_write)
    with (
        open(stdin_read, "rb") as stdin,
        open(stdout_write, "wb") as stdout,
        open(stdout_read, "rb") as result,
    ):
        yield stdin, stdout, result


async def test_real_standard_streams_in_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pipes: tuple[io.BufferedReader, io.BufferedWriter, io.BufferedReader],
) -> None:
    """connect's own stdin/stdout (worker-thread reads and writes), through pipes."""
    stdin, stdout, result = pipes
    # Patched here, not in the fixture: pytest resets sys.stdout between phases.
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stdout", stdout)
    ca_path = str(tmp_path / "ca.pem")
    err = WatchedText()
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path, "--mode", "http") as (port, _):
            status = await main_async(
                ["connect", f"localhost:{port}", "--cafile", ca_path],
                console=Console(out=io.StringIO(), err=err),
            )
    monkeypatch.undo()
    stdout.close()  # the pipe's writing end, so that the reader sees the end
    assert status == 0, err.getvalue()
    response = result.read()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\n" + bytes(range(10)))


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_serve_subprocess(tmp_path: Path, stop: signal.Signals) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        command = python_module("serve", "--port", "0", "--ca-out", ca_path)
        async with started_process(command) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            out = bytearray()
            await read_until(process.stdout, b"(TLS, echo)\n", out)
            match = re.search(rb"listening on 127\.0\.0\.1:(\d+) \(TLS, echo\)\n", out)
            assert match, out
            status, client = await run_connect(
                f"localhost:{int(match[1])}", "--cafile", ca_path, stdin=b"ping"
            )
            assert status == 0, client.err.getvalue()
            assert client.received == b"ping"
            await read_until(process.stdout, b"conn 1: closed", out)
            process.send_signal(stop)
            err = bytearray()
            await read_until(process.stderr, b"server stopped\n", err)
            assert await process.wait() == 0
    assert f"trio_membio: {stop.name} received, server stopped" in err.decode()
    assert b"Traceback" not in err


async def test_connect_subprocess(tmp_path: Path) -> None:
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--ca-out", ca_path) as (port, _):
            result = await trio.run_process(
                python_module("connect", f"localhost:{port}", "--cafile", ca_path),
                stdin=b"hello, subprocess\n",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert result.stdout == b"hello, subprocess\n"
    assert "protocol   TLSv1.3" in err
    assert "closed: sent 18 bytes, received 18 bytes (close_notify received)" in err
