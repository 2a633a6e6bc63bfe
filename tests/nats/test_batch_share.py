"""
A process that is not a worker shares its account's rate limit: `shared_rate_limit`
(the library) and `cancel-batch --nats-url` (the CLI), against a real nats-server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from klavi_async import ClientCredentials, KlaviClient
from klavi_async.nats import shared_rate_limit
from klavi_async.nats._sharedlimit import BUCKET
from klavi_async.nats._streams import _Said

from ..conftest import CPF
from ..test_cli_process import batch_of_40, cli_env, emulator_in_thread, records
from .conftest import NatsServer
from .test_cli import run_without_nats

CREDENTIALS = ClientCredentials("access-key-of-the-batch", "secret-key-of-the-batch")
BASE = "http://127.0.0.1:9"  # never called: the limiter is driven by the bucket alone
ELDER = {"rate": 90.0, "accepted": 80.0, "wanting": True, "up": 60.0}


async def test_a_client_takes_its_part_on_entry_and_gives_it_back_on_exit(
    js: JetStreamContext,
) -> None:
    kv = await js.create_key_value(bucket=BUCKET, ttl=10.0)
    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:
        await kv.put(f"{client.account}.worker", json.dumps(ELDER).encode())
        async with shared_rate_limit(client, js) as shared:
            assert shared
            stats = client.rate_limit_stats()
            assert stats is not None and (stats.fleet_size, stats.fleet_part) == (2, 40.0)
            assert stats.allowed_rate == 40.0  # before its first request
            assert len(await kv.keys()) == 2
        assert await kv.keys() == [f"{client.account}.worker"]  # its report deleted


async def test_a_client_naming_no_account_adapts_alone_and_says_so(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    async def token() -> str:
        return "a-token-of-some-account"

    caplog.set_level(logging.WARNING, logger="klavi_async")
    async with (
        KlaviClient(token, base_url=BASE) as client,
        shared_rate_limit(client, js, who="batch") as shared,
    ):
        assert not shared
    assert "this batch adapts alone" in caplog.text
    assert "a-token-of-some-account" not in caplog.text


async def test_cancel_batch_shares_the_limit_with_the_fleet(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    kv = await js.create_key_value(bucket=BUCKET, ttl=10.0)
    with emulator_in_thread() as emu:
        credentials = ClientCredentials(emu.access_key, emu.secret_key)
        async with KlaviClient(credentials, base_url=emu.url) as same_account:
            elder = f"{same_account.account}.worker"
        await kv.put(elder, json.dumps(ELDER).encode())
        ids, out, command = batch_of_40(emu, tmp_path, concurrency=8)
        process = await asyncio.create_subprocess_exec(
            *command, "--nats-url", nats_server.url, env=cli_env(emu),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 120)
        stderr = err.decode()
        assert process.returncode == 0, stderr
        assert f"rate limit shared through NATS at {nats_server.url}" in stderr
        assert "1 other client on this account; this batch's part 40/s" in stderr
        assert sorted(r["payment_id"] for r in records(out) if r["ok"]) == sorted(ids)
        assert await kv.keys() == [elder]  # the batch's report deleted as it ended


async def test_a_broker_gone_mid_batch_changes_nothing_the_batch_does(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    # Killed with the batch under way: every row still ends ok, the exit status is 0,
    # and the reconnect attempts (every 0.25 s) are one line, not one each.
    with emulator_in_thread() as emu:
        ids, out, command = batch_of_40(emu, tmp_path, concurrency=2)
        command += ["--rate-limit", "20", "--no-adaptive"]  # two seconds of batch
        process = await asyncio.create_subprocess_exec(
            *command, "--nats-url", nats_server.url, env=cli_env(emu),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            while not out.exists() or not out.read_text().count("\n"):
                await asyncio.sleep(0.02)  # under way: a line written
        nats_server.stop()
        _, err = await asyncio.wait_for(process.communicate(), 120)
        stderr = err.decode()
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert stderr.count("NATS connection error") <= 1
        assert sorted(r["payment_id"] for r in records(out) if r["ok"]) == sorted(ids)
        assert stderr.index("NATS disconnected") < stderr.index("items 40:")  # under way


def test_cancel_batch_with_an_unreachable_broker_sends_nothing(tmp_path: Path) -> None:
    with emulator_in_thread() as emu:
        ids, out, command = batch_of_40(emu, tmp_path, concurrency=8)
        done = subprocess.run(
            [*command, "--nats-url", "nats://user:pw@127.0.0.1:1"],
            env=cli_env(emu),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert "cannot connect to NATS at nats://***@127.0.0.1:1" in done.stderr
        assert "nothing was sent" in done.stderr and "pw" not in done.stderr
        assert not out.exists()
        assert all(emu.status_of(p) != "CANCELED" for p in ids)


def test_cancel_batch_with_nats_url_but_no_nats_py_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"payment_id,cancelled_by\npay-1,{CPF}\n")
    out = str(tmp_path / "out.jsonl")
    done = run_without_nats("cancel-batch", str(source), "--out", out, "--nats-url", "nats://x")
    assert done.returncode == 2
    assert "--nats-url needs nats-py: pip install 'klavi-async[nats]'" in done.stderr


async def test_connection_errors_are_said_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="klavi_async")
    said = _Said()
    for _ in range(3):
        said.error(ConnectionRefusedError())
    await said.reconnected()
    said.error(TimeoutError())
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "NATS connection error: ConnectionRefusedError",
        "NATS reconnected",
        "NATS connection error: TimeoutError",
    ]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 2
