"""
The JetStream commands' errors name the URL and the cause, fast, and never a password:
a server without JetStream, a refused port, refused credentials.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import click
import nats.errors
import pytest
from nats.js.errors import ServiceUnavailableError

from klavi_async._cli._natsconnect import jetstream_errors, mask_url
from klavi_async.nats import WorkerStats, connect

from ..conftest import CPF
from .conftest import NatsServer, quiet_port
from .test_cli import CLI, run

SECRET = "s3cret-pw"


def commands(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "in.csv"
    path.write_text(f"payment_id,cancelled_by\npay-1,{CPF}\n")
    return [["enqueue", str(path)], ["worker"], ["streams"], ["results"]]


def env() -> dict[str, str]:
    return {**os.environ, "KLAVI_TOKEN": "tok-unused", "KLAVI_BASE_URL": "http://127.0.0.1:9"}


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server started without -js, as happens."""
    server = NatsServer(tmp_path / "plain", jetstream=False)
    server.store.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_server_without_jetstream_says_so(plain_server: NatsServer, tmp_path: Path) -> None:
    url = plain_server.url.replace("nats://", f"nats://operator:{SECRET}@")
    shown = plain_server.url.replace("nats://", "nats://***@")
    for command in commands(tmp_path):
        result = run(*command, "--nats-url", url, env=env())
        assert result.returncode == 1, (command, result.stderr)
        assert (
            f"klavi-async: error: NATS at {shown} has no JetStream: start nats-server with -js"
            in result.stderr
        ), command
        assert "ServiceUnavailableError" not in result.stderr
        assert "Traceback" not in result.stderr
        assert SECRET not in result.stdout + result.stderr


def test_a_refused_connection_names_the_url(tmp_path: Path) -> None:
    port = quiet_port()
    url = f"nats://operator:{SECRET}@127.0.0.1:{port}"
    for command in commands(tmp_path):
        result = run(*command, "--nats-url", url, env=env())
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.endswith(
            f"klavi-async: error: cannot connect to NATS at nats://***@127.0.0.1:{port}: "
            "connection refused\n"
        ), command
        assert SECRET not in result.stdout + result.stderr


async def test_a_refused_connection_fails_at_once() -> None:
    url = f"nats://127.0.0.1:{quiet_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await connect(url, first_timeout=60)  # before: TimeoutError after its first_timeout
    assert time.monotonic() - started < 30  # at once, not the 60 s (room for a busy machine)
    seen: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        seen.append(exc)

    with pytest.raises(ConnectionRefusedError):
        await connect(url, error_cb=error_cb)
    assert [type(exc) for exc in seen] == [ConnectionRefusedError]


def test_refused_credentials_are_said_without_showing_them(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "auth", options=("--user", "operator", "--pass", "right-pw"))
    server.store.mkdir()
    server.start()
    try:
        url = server.url.replace("nats://", f"nats://operator:{SECRET}@")
        result = run("results", "--nats-url", url)
        assert result.returncode == 1
        assert result.stderr == (
            f"klavi-async: error: cannot connect to NATS at "
            f"{server.url.replace('nats://', 'nats://***@')}: Authorization Violation\n"
        )
        good = server.url.replace("nats://", "nats://operator:right-pw@")
        result = run("streams", "--nats-url", good)
        assert result.returncode == 0, result.stderr
        assert "right-pw" not in result.stdout + result.stderr
    finally:
        server.stop()


async def test_refused_credentials_fail_at_once(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "auth", options=("--user", "operator", "--pass", "right-pw"))
    server.store.mkdir()
    server.start()
    try:
        url = server.url.replace("nats://", f"nats://operator:{SECRET}@")
        started = time.monotonic()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await connect(url, first_timeout=60)
        assert time.monotonic() - started < 30  # at once, not the 60 s
    finally:
        server.stop()


async def test_a_worker_never_shows_the_password(nats_server: NatsServer) -> None:
    url = nats_server.url.replace("nats://", f"nats://operator:{SECRET}@")
    process = await asyncio.create_subprocess_exec(
        CLI,
        "worker",
        "--nats-url",
        url,
        env=env(),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    first = await asyncio.wait_for(process.stderr.readline(), timeout=30)
    process.terminate()
    rest = await asyncio.wait_for(process.stderr.read(), timeout=30)
    assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    err = (first + rest).decode()
    assert f"worker: consuming {nats_server.url.replace('nats://', 'nats://***@')}" in err
    assert SECRET not in err


def test_an_invalid_url_is_said_plainly() -> None:
    result = run("streams", "--nats-url", "nats://127.0.0.1:99999")
    assert result.returncode == 1
    assert result.stderr == (
        "klavi-async: error: cannot connect to NATS at nats://127.0.0.1:99999: "
        "invalid connect url option\n"
    )
    result = run("results", "--nats-url", "nats://nowhere.invalid:4222")
    assert result.returncode == 1
    assert "cannot connect to NATS at nats://nowhere.invalid:4222: " in result.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:pass@host:4222", "nats://***@host:4222"),
        ("nats://token@host", "nats://***@host"),
        ("tls://u:p@ss@host:4222/x?y=@z", "tls://***@host:4222/x?y=@z"),
        ("user:pass@host:4222", "***@host:4222"),
        ("nats://a:1@h1:4222,nats://h2:4222", "nats://***@h1:4222,nats://h2:4222"),
        ("nats://host:4222", "nats://host:4222"),
        ("nats://host:4222/@", "nats://host:4222/@"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


async def test_a_server_list_connects_to_whichever_node_answers(nats_server: NatsServer) -> None:
    dead = [f"nats://127.0.0.1:{quiet_port()}" for _ in range(2)]
    for url in (
        f"{dead[0]},{nats_server.url},{dead[1]}",
        f" {dead[0]} , {nats_server.url}",  # spaces around each, as people type them
        [dead[0], nats_server.url],
        (nats_server.url,),
    ):
        nc = await connect(url)
        try:
            assert nc.is_connected
            assert nc.connected_url is not None
            assert nc.connected_url.port == nats_server.port
        finally:
            await nc.close()
    # Every server in the list refused: at once, as for one.
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await connect(",".join(dead), first_timeout=60)
    assert time.monotonic() - started < 30  # at once, not the 60 s


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "no NATS server URL given"),
        ("  ", "no NATS server URL given"),
        ([], "no NATS server URL given"),
        (f"nats://u:{SECRET}@h1:4222,,nats://h3:4222", "server 2 is empty"),
        (f"nats://u:{SECRET}@h1:4222,", "server 2 is empty"),
    ],
)
async def test_an_empty_server_list_or_entry_is_a_value_error(url: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        await connect(url)  # type: ignore[arg-type]
    assert SECRET not in str(raised.value)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_server_list_of_other_things_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="must be a str, got bytes"):
        await connect([b"nats://127.0.0.1:4222"])  # type: ignore[list-item]


def test_a_server_list_with_a_hole_is_a_usage_error(tmp_path: Path) -> None:
    url = f"nats://operator:{SECRET}@127.0.0.1:4222,,nats://127.0.0.1:4223"
    for command in commands(tmp_path):
        result = run(*command, "--nats-url", url, env=env())
        assert result.returncode == 2, (command, result.stderr)
        assert "Invalid value for '--nats-url': server 2 is empty" in result.stderr, command
        assert SECRET not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


def test_a_refused_server_list_names_every_url_masked(tmp_path: Path) -> None:
    ports = [quiet_port(), quiet_port()]
    url = f"nats://operator:{SECRET}@127.0.0.1:{ports[0]},nats://127.0.0.1:{ports[1]}"
    result = run("streams", "--nats-url", url, env=env())
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"klavi-async: error: cannot connect to NATS at nats://***@127.0.0.1:{ports[0]},"
        f"nats://127.0.0.1:{ports[1]}: connection refused\n"
    )


async def test_a_frozen_node_is_left_within_fifteen_seconds(nats_server: NatsServer) -> None:
    # nats-py pings every 120 s and drops a connection after 2 unanswered: a node frozen
    # (SIGSTOP, a partition) kept a worker for 4 minutes.  Ours: 5 s, 3 pings.
    nc = await connect(nats_server.url)
    try:
        assert nc.options["ping_interval"] * nc.options["max_outstanding_pings"] <= 15
        overridden = await connect(nats_server.url, ping_interval=60)
        assert overridden.options["ping_interval"] == 60  # the caller's word wins
        await overridden.close()
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            ServiceUnavailableError(code=503, err_code=10008, description="unavailable"),
            "JetStream at nats://***@127.0.0.1:4222 is unavailable for now (a cluster "
            "without a quorum of its nodes, or electing its leaders): try again",
        ),
        (ServiceUnavailableError(), "NATS at nats://***@127.0.0.1:4222 has no JetStream"),
        (nats.errors.TimeoutError(), "no answer from JetStream at nats://***@127.0.0.1:4222"),
        (TimeoutError(), "no answer from JetStream at nats://***@127.0.0.1:4222 in time"),
    ],
)
def test_a_cluster_without_a_quorum_is_told_from_a_server_without_jetstream(
    error: Exception, said: str
) -> None:
    url = f"nats://operator:{SECRET}@127.0.0.1:4222"
    with pytest.raises(click.ClickException) as caught, jetstream_errors(url):
        raise error
    assert caught.value.message.startswith(said)
    assert SECRET not in caught.value.message


def test_the_progress_line_says_what_is_left_to_come_back() -> None:
    stats = WorkerStats(done=3, ok=3)
    assert "left to come back" not in stats.line()
    stats.unsettled = 2
    assert stats.line().endswith(", left to come back 2")
