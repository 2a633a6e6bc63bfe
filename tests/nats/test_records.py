"""
One record per request, enforced by the server: the publishing rules of `Settler`
against a real nats-server (a final record replaces a non-final one, nothing else
replaces anything), whatever the duplicate window.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from klavi_async.nats import (
    DEAD_SUBJECT,
    REQUESTS_STREAM,
    REQUESTS_SUBJECT,
    RESULTS_STREAM,
    RESULTS_SUBJECT,
    CancelWorker,
    LegacyStreamError,
    ensure_streams,
)
from klavi_async.nats._settle import Settler, WorkerStats
from klavi_async.testing import KlaviEmulator

from ..conftest import CPF
from .conftest import NatsServer
from .helpers import emulator_client, records, stored

CLI = str(Path(sys.executable).parent / "klavi-async")


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    process = await asyncio.create_subprocess_exec(
        CLI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, out.decode(), err.decode()


SUBJECT = f"{RESULTS_SUBJECT}.kc1-0123"
FINAL = {"payment_id": "pay-1", "ok": True, "retryable": False, "outcome_unknown": False}
REFUSED = {"payment_id": "pay-1", "ok": False, "retryable": False, "outcome_unknown": False}
NOT_FINAL = {"payment_id": "pay-1", "ok": False, "retryable": True, "outcome_unknown": False}
UNKNOWN = {"payment_id": "pay-1", "ok": False, "retryable": False, "outcome_unknown": True}


def settler(js: JetStreamContext) -> Settler:
    return Settler(js, WorkerStats(), ack_wait=5.0, retry_delay=0.1)


async def on_subject(js: JetStreamContext) -> list[dict[str, Any]]:
    return [record for record, _ in await records(js, RESULTS_SUBJECT)]


@pytest.mark.parametrize(
    ("first", "second", "kept"),
    [
        (NOT_FINAL, FINAL, FINAL),  # a final outcome replaces a non-final one
        (UNKNOWN, REFUSED, REFUSED),
        (FINAL, NOT_FINAL, FINAL),  # never the other way round
        (FINAL, REFUSED, FINAL),  # the first final outcome stands
        (NOT_FINAL, UNKNOWN, NOT_FINAL),
    ],
)
async def test_the_subject_keeps_one_record(
    js: JetStreamContext,
    first: dict[str, Any],
    second: dict[str, Any],
    kept: dict[str, Any],
) -> None:
    one = settler(js)
    assert await one.publish(SUBJECT, "id-1", first) == "stored"
    # Another worker, with another de-duplication id (or after the window).
    two = settler(js)
    assert await two.publish(SUBJECT, "id-2", second) == "stored"
    assert await on_subject(js) == [kept]
    assert await stored(js) == 1
    assert two.stats.duplicates == (0 if kept is second else 1)


async def test_a_tiny_duplicate_window_does_not_let_a_second_record_in(
    js: JetStreamContext,
) -> None:
    await ensure_streams(js, duplicate_window=0.1)  # the server's least
    first, late = settler(js), settler(js)
    assert await first.publish(SUBJECT, "kc1-0123", FINAL) == "stored"
    await asyncio.sleep(0.3)  # the window passing is the point
    assert await late.publish(SUBJECT, "kc1-0123", FINAL) == "stored"
    assert late.stats.duplicates == 1
    assert await stored(js) == 1


async def test_something_unreadable_on_the_subject_is_replaced_by_a_final_record(
    js: JetStreamContext,
) -> None:
    await js.publish(SUBJECT, b"\xff not json")
    assert await settler(js).publish(SUBJECT, "id", FINAL) == "stored"
    assert await on_subject(js) == [FINAL]
    info = await js.stream_info(RESULTS_STREAM)
    assert info.state.messages == 1


async def test_records_of_different_requests_do_not_meet(js: JetStreamContext) -> None:
    one = settler(js)
    for n in range(5):
        record = {**FINAL, "payment_id": f"pay-{n}"}
        assert await one.publish(f"{RESULTS_SUBJECT}.kc1-{n}", f"id-{n}", record) == "stored"
    assert one.stats.duplicates == 0
    assert sorted(r["payment_id"] for r in await on_subject(js)) == [f"pay-{n}" for n in range(5)]


async def test_a_legacy_results_stream_is_refused_not_purged(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    # A results stream from before one record per request: its records share one subject,
    # and setting one message per subject would have the server delete all but the last.
    await js.delete_stream(RESULTS_STREAM)
    legacy = StreamConfig(
        name=RESULTS_STREAM, subjects=[RESULTS_SUBJECT, DEAD_SUBJECT], duplicate_window=120.0
    )
    await js.add_stream(legacy)
    for n in range(3):
        await js.publish(RESULTS_SUBJECT, b'{"ok": true, "n": %d}' % n)
    with pytest.raises(LegacyStreamError, match="delete all but the last"):
        await ensure_streams(js)
    env = {
        **os.environ,
        "KLAVI_TOKEN": "tok-for-a-worker-that-never-starts",
        "KLAVI_BASE_URL": "http://127.0.0.1:9",
    }
    code, _, err = await cli("worker", "--nats-url", nats_server.url, env=env)
    assert code == 1, err
    assert "predates one record per request" in err
    assert "Traceback" not in err
    path = tmp_path / "in.csv"
    path.write_text(f"payment_id,cancelled_by\npay-1,{CPF}\n")
    code, out, err = await cli("enqueue", str(path), "--nats-url", nats_server.url)
    assert code == 1
    assert "predates one record per request" in err
    assert out.startswith("published 0,")
    info = await js.stream_info(RESULTS_STREAM)
    assert info.state.messages == 3  # nothing deleted
    assert info.config.subjects == [RESULTS_SUBJECT, DEAD_SUBJECT]


async def test_a_stream_made_again_does_not_give_a_dead_letter_an_old_ones_subject(
    js: JetStreamContext,
) -> None:
    # Deleted and made again, the requests stream numbers its messages from 1 again: a
    # new poison message must not be taken for the old one's dead letter.
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        for text in (b"{first, not json", b"{second, not json"):
            await js.publish(REQUESTS_SUBJECT, text)
            worker = CancelWorker(client, js, ack_wait=5.0, retry_delay=0.1)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            while worker.stats.dead < 1:
                await asyncio.sleep(0.02)
            stop.set()
            await task
            await js.delete_stream(REQUESTS_STREAM)
            await ensure_streams(js)
    dead = [record for record, _ in await records(js, DEAD_SUBJECT)]
    assert len(dead) == 2
    assert [r["source"].split(":")[:2] for r in dead] == [[REQUESTS_STREAM, "1"]] * 2
    assert dead[0]["source"] != dead[1]["source"]
