"""`klavi-async enqueue` and `worker` as real processes, and the CLI without nats-py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from klavi_async import CancelRequest
from klavi_async.nats import REQUESTS_STREAM, RESULTS_SUBJECT, connect, enqueue

from ..conftest import CPF
from ..test_cli_process import cli_env, emulator_in_thread
from .conftest import NatsServer
from .helpers import records, stored, wait_for_records

CLI = str(Path(sys.executable).parent / "klavi-async")
# Runs the CLI with nats-py hidden, as on a machine without the extra.
WITHOUT_NATS = (
    "import sys; sys.modules['nats'] = None\n"
    "from klavi_async._cli import main\n"
    "main(sys.argv[1:])\n"
)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def run_without_nats(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as on a machine without nats-py."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_NATS, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_enqueue_prints_published_and_deduplicated_counts(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    path = tmp_path / "cancels.csv"
    path.write_text(
        "payment_id,cancelled_by,identifier_type\n"
        f"pay-1,{CPF},CPF\n"
        f"pay-2,{CPF},\n"
        ",nobody,\n"
        f"pay-3,{CPF},CPF\n"
    )
    first = run("enqueue", str(path), "--nats-url", nats_server.url)
    assert first.returncode == 1, first.stderr
    assert first.stdout.startswith("published 3, dropped as duplicates 0, rejected 1")
    assert "row 3 not published: missing payment_id" in first.stderr
    assert CPF not in first.stderr
    again = run("enqueue", str(path), "--nats-url", nats_server.url)
    assert again.stdout.startswith("published 0, dropped as duplicates 3, rejected 1")
    assert await stored(js, REQUESTS_STREAM) == 3


def test_enqueue_usage_errors(nats_server: NatsServer, tmp_path: Path) -> None:
    result = run("enqueue", str(tmp_path / "x.txt"), "--nats-url", nats_server.url)
    assert result.returncode == 2
    assert "cannot tell the format" in result.stderr
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("")
    result = run("enqueue", str(jsonl), "--nats-url", "nats://127.0.0.1:1")
    assert result.returncode == 1
    assert "cannot connect to NATS" in result.stderr


def test_worker_without_credentials_is_a_usage_error(nats_server: NatsServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAVI_")}
    result = run("worker", "--nats-url", nats_server.url, env=env)
    assert result.returncode == 2
    assert "KLAVI_" in result.stderr


def test_worker_drains_and_exits_0_on_sigint(nats_server: NatsServer) -> None:
    env = {
        **os.environ,
        "KLAVI_TOKEN": "tok-for-an-idle-worker",
        "KLAVI_BASE_URL": "http://127.0.0.1:9",
    }
    process = subprocess.Popen(
        [CLI, "worker", "--nats-url", nats_server.url, "--progress-interval", "0.1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = ""
    while "worker: done" not in seen:  # consuming, a SIGINT handled, progress printed
        line = process.stderr.readline()
        assert line, seen
        seen += line
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=30)
    err = seen + rest
    assert process.returncode == 0, err
    assert "worker: done 0 (ok 0), in flight 0" in err
    assert "stopped;" in err


def test_without_nats_py_the_commands_print_the_install_hint() -> None:
    for command in ("worker", "enqueue", "streams", "results"):
        result = run_without_nats(command, "--nats-url", "nats://x")
        assert result.returncode == 2
        assert "pip install 'klavi-async[nats]'" in result.stderr
    imported = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['nats'] = None; import klavi_async.nats"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 1
    assert "ImportError: klavi_async.nats needs nats-py: pip install 'klavi-async[nats]'" in (
        imported.stderr
    )


def test_importing_klavi_async_does_not_import_nats() -> None:
    code = "import sys, klavi_async, klavi_async._cli; sys.exit('nats' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0


async def test_a_fleet_with_single_use_tokens_ends_every_payment_ok(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    # Two worker processes at concurrency 16 against tokens that serve one payment each.
    with emulator_in_thread(single_use_tokens=True) as emu:
        requests = [CancelRequest(emu.add_payment(), CPF) for _ in range(120)]
        assert await enqueue(js, requests) == len(requests)
        command = [CLI, "worker", "--nats-url", nats_server.url, "--concurrency", "16"]
        workers = [
            subprocess.Popen(  # noqa: ASYNC220  # started once; the loop waits on NATS
                [*command, "--single-use-tokens"],
                env=cli_env(emu),
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            for process in workers:  # each ready (its signals handled) before any is stopped
                seen = ""
                while "worker: consuming" not in seen:
                    assert process.stderr is not None
                    line = await asyncio.to_thread(process.stderr.readline)
                    assert line, seen  # it exited
                    seen += line
            await wait_for_records(js, len(requests), timeout=60)
        finally:
            for process in workers:
                process.send_signal(signal.SIGINT)
            errors = [process.communicate(timeout=30)[1] for process in workers]
        assert [p.returncode for p in workers] == [0, 0], errors
        found = await records(js, RESULTS_SUBJECT)
        assert sorted(r["payment_id"] for r, _ in found) == sorted(r.payment_id for r in requests)
        assert all(r["ok"] for r, _ in found)
        assert all(emu.effects[r.payment_id] == 1 for r in requests)
        assert not [r for r in emu.records() if r.status == 401]
        assert emu.auth_calls == len(requests)


async def test_enqueue_stops_at_an_open_quote_and_says_where(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    path = tmp_path / "cancels.csv"
    path.write_text(f'payment_id,cancelled_by\npay-1,{CPF}\n"pay-2,{CPF}\npay-3,{CPF}\n')
    done = run("enqueue", str(path), "--nats-url", nats_server.url)
    assert done.returncode == 2
    assert done.stdout.startswith("published 1, dropped as duplicates 0, rejected 0")
    assert "line 3 opens a quote that runs to line 4" in done.stderr
    assert await stored(js, REQUESTS_STREAM) == 1
    path.write_text("")
    empty = run("enqueue", str(path), "--nats-url", nats_server.url)
    assert empty.returncode == 2 and "is empty: a CSV needs a header line" in empty.stderr


@pytest.mark.parametrize("flag", [None, "--no-shared-limit"])
async def test_worker_shares_the_limit_unless_told_not_to(
    nats_server: NatsServer, flag: str | None
) -> None:
    env = {**os.environ, "KLAVI_TOKEN": "tok-of-a-fleet", "KLAVI_BASE_URL": "http://127.0.0.1:9"}
    command = [CLI, "worker", "--nats-url", nats_server.url, "--progress-interval", "0.1"]
    process = await asyncio.create_subprocess_exec(
        *command, *([flag] if flag else []), env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    seen: list[str] = []

    async def read(stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            seen.append(line.decode())

    reader = asyncio.create_task(read(process.stderr))
    try:
        async with asyncio.timeout(60):  # consuming (the bucket is made before), progress
            while not any("worker: done" in line for line in seen):
                await asyncio.sleep(0.05)
        nc = await connect(nats_server.url)
        try:
            names = [info.config.name for info in await nc.jetstream().streams_info()]
        finally:
            await nc.close()
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 60)
        await asyncio.wait_for(reader, 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
    text = "".join(seen)
    assert code == 0, text
    assert ("KV_KLAVI_RATE_SHARES" in names) is (flag is None)
    assert "adapts alone" not in text
