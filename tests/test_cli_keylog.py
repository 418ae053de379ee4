"""Key logging in the command line: ``--keylog FILE`` and SSLKEYLOGFILE (issue 15).

``serve`` and ``connect`` run against each other in this process, each with
its own key log; both sides must log the same secrets for the same
connection, in the NSS key log format Wireshark reads (one
``LABEL <client random> <secret>`` line per secret).
"""

from __future__ import annotations

import re
import ssl
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_membio._cli._common import apply_keylog

from .cli_harness import TIMEOUT, Captured, running_serve
from .cli_harness import run_connect as run_cli_connect

HEX = re.compile(r"[0-9a-f]+")

TLS13_LABELS = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
}


#: What connect sends: the HTTP server answers it and closes (so that
#: connect ends on TLS 1.2 too, which has no half-close).
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


async def run_connect(*arguments: str, data: bytes = REQUEST) -> tuple[int, Captured]:
    return await run_cli_connect(*arguments, stdin=data)


def read_keylog(path: Path) -> dict[str, dict[str, str]]:
    """{client random: {label: secret}}, checking the format of every line."""
    connections: dict[str, dict[str, str]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue  # OpenSSL may write a comment header
        label, client_random, secret = line.split(" ")
        assert len(client_random) == 64, line  # 32 bytes in hex
        assert HEX.fullmatch(client_random), line
        assert HEX.fullmatch(secret), line
        connections.setdefault(client_random, {})[label] = secret
    return connections


async def session(tmp_path: Path, *, version: str, server_log: str, client_log: str) -> str:
    """Serve and connect once, each with a key log; return connect's stderr."""
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve(
            "--mode", "http", "--ca-out", ca_path, f"--tls{version}", "--keylog", server_log
        ) as (port, _):
            status, client = await run_connect(
                f"127.0.0.1:{port}", "--cafile", ca_path, "--keylog", client_log
            )
    assert status == 0, client.err.getvalue()
    assert client.stdout.get_data_nowait().startswith(b"HTTP/1.1 200 ")  # it really ran
    return client.err.getvalue()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_both_sides_log_the_same_secrets(tmp_path: Path, version: str) -> None:
    server_log, client_log = tmp_path / "server.keys", tmp_path / "client.keys"
    err = await session(
        tmp_path, version=version, server_log=str(server_log), client_log=str(client_log)
    )
    assert f"logging TLS secrets to {client_log} (--keylog)" in err

    client_secrets, server_secrets = read_keylog(client_log), read_keylog(server_log)
    assert len(client_secrets) == 1  # one connection
    assert client_secrets == server_secrets  # same client random, same secrets
    (labels,) = client_secrets.values()
    if version == "1.3":
        assert set(labels) == TLS13_LABELS
        assert all(len(secret) in (64, 96) for secret in labels.values())  # SHA-256/384
    else:
        assert set(labels) == {"CLIENT_RANDOM"}
        assert len(labels["CLIENT_RANDOM"]) == 96  # the 48-byte master secret


async def test_the_log_is_appended_to(tmp_path: Path) -> None:
    client_log = tmp_path / "client.keys"
    client_log.write_text("# kept\n")
    for _ in range(2):
        await session(
            tmp_path, version="1.3", server_log=str(tmp_path / "s"), client_log=str(client_log)
        )
    assert client_log.read_text().startswith("# kept\n")
    assert len(read_keylog(client_log)) == 2  # two connections, two client randoms


async def test_sslkeylogfile_is_honoured_and_keylog_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_environment = tmp_path / "environment.keys"
    monkeypatch.setenv("SSLKEYLOGFILE", str(from_environment))
    ca_path = str(tmp_path / "ca.pem")
    with trio.fail_after(TIMEOUT):
        async with running_serve("--mode", "http", "--ca-out", ca_path) as (port, server):
            status, client = await run_connect(f"127.0.0.1:{port}", "--cafile", ca_path)
            assert status == 0, client.err.getvalue()
            assert f"to {from_environment} (SSLKEYLOGFILE)" in client.err.getvalue()
            assert f"to {from_environment} (SSLKEYLOGFILE)" in server.err.getvalue()
            # --keylog overrides the variable.
            explicit = tmp_path / "explicit.keys"
            status, client = await run_connect(
                f"127.0.0.1:{port}", "--cafile", ca_path, "--keylog", str(explicit)
            )
            assert status == 0, client.err.getvalue()
    # Server and first client both appended to the variable's file: one
    # connection seen from both sides, then the server's half of the second.
    environment_secrets = read_keylog(from_environment)
    explicit_secrets = read_keylog(explicit)
    assert len(environment_secrets) == 2
    assert len(explicit_secrets) == 1
    assert explicit_secrets.items() <= environment_secrets.items()


async def test_without_keylog_or_variable_nothing_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSLKEYLOGFILE", "")  # set but empty: ignored, as ssl does
    ca_path = str(tmp_path / "ca.pem")
    async with running_serve("--mode", "http", "--ca-out", ca_path) as (port, server):
        status, client = await run_connect(f"127.0.0.1:{port}", "--cafile", ca_path)
    assert status == 0, client.err.getvalue()
    assert "TLS secrets" not in client.err.getvalue() + server.err.getvalue()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca.pem"]  # noqa: ASYNC240


async def test_an_unwritable_keylog_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "no such directory" / "keys"
    status, client = await run_connect("127.0.0.1:1", "--insecure", "--keylog", str(missing))
    assert status == 1
    assert client.err.getvalue() == (
        f"trio_membio: error: cannot write the TLS key log --keylog {missing}: "
        f"No such file or directory: {missing}\n"
    )


def logged_to(context: ssl.SSLContext) -> str | None:
    # typeshed says str; the ssl module gives None until a file is set.
    return context.keylog_filename


def test_python_dash_e_ignores_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    apply_keylog(context, None, Captured().console)
    assert context.keylog_filename == str(tmp_path / "keys")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    monkeypatch.setattr(sys, "flags", type("Flags", (), {"ignore_environment": 1})())
    apply_keylog(context, None, Captured().console)
    assert logged_to(context) is None
    apply_keylog(context, str(tmp_path / "explicit"), Captured().console)
    assert context.keylog_filename == str(tmp_path / "explicit")
