"""
Messages a worker could loop on for ever, and records that must not be lost or leak.

The consumer redelivers without limit (the worker counts deliveries itself), so every
message the worker cannot handle must still end in a record and a `term`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from klavi_async import CancelRequest, ErrorKind, RetryPolicy, deterministic_idempotency_key
from klavi_async._cli import _fleetcmds as nats_cli
from klavi_async._rows import Row, parse_row
from klavi_async.nats import (
    DEAD_SUBJECT,
    REQUESTS_STREAM,
    REQUESTS_SUBJECT,
    RESULTS_STREAM,
    RESULTS_SUBJECT,
    Action,
    CancelWorker,
    Poison,
    _request,
    decide,
    enqueue,
    parse_request,
    request_message,
)
from klavi_async.testing import KlaviEmulator

from ..conftest import CNPJ, CNPJ_BARE, CPF, CPF_BARE, LeakGuard
from .conftest import NatsServer
from .helpers import emulator_client, queue_empty, records, stored, wait_for_records
from .test_cli import run as run_cli
from .test_decide import failed

DOCUMENTS = (CPF, CPF_BARE, CNPJ, CNPJ_BARE)


@contextlib.asynccontextmanager
async def running(worker: CancelWorker) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def settle_all(js: JetStreamContext, worker: CancelWorker, records_expected: int) -> None:
    """Run *worker* until the queue is empty and the records are there."""
    async with running(worker):
        await wait_for_records(js, records_expected, timeout=15)
        while not await queue_empty(js):
            await asyncio.sleep(0.02)


def test_deep_nesting_is_bad_json_not_a_recursion_error() -> None:
    for data in (b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        poison = parse_request(data)
        assert isinstance(poison, Poison)
        assert poison.reason == "bad_json"


async def test_a_deeply_nested_message_is_dead_lettered_not_redelivered(
    js: JetStreamContext,
) -> None:
    await js.publish(REQUESTS_SUBJECT, b"[" * 100_000)
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, ack_wait=1.0, retry_delay=0.1)
        await settle_all(js, worker, 1)
    [(record, _)] = await records(js, DEAD_SUBJECT)
    assert record["reason"] == "bad_json"
    assert worker.stats.dead == 1
    assert worker.stats.unsettled == 0


async def test_a_dead_letter_that_would_outgrow_max_payload_is_clipped(
    nc: NATS, js: JetStreamContext
) -> None:
    # 800 KB of 'é' is 2.4 MB once JSON escapes it: far over the server's 1 MiB limit.
    data = json.dumps({"payment_id": "p1", "consent_id": "é" * 400_000}, ensure_ascii=False)
    assert len(data.encode()) < nc.max_payload < len(json.dumps({"c": "é" * 400_000}))
    await js.publish(REQUESTS_SUBJECT, data.encode())
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, ack_wait=1.0, retry_delay=0.1)
        await settle_all(js, worker, 1)
    [(record, raw)] = await records(js, DEAD_SUBJECT)
    assert record["reason"] == "missing_field"
    assert record["consent_id"].startswith("é" * 100)
    assert len(raw) < 2_000
    assert worker.stats.unsettled == 0


def test_every_value_a_poison_keeps_is_clipped_and_masked() -> None:
    cases = [
        {"payment_id": CPF},
        {"payment_id": "p1", "consent_id": CPF},
        {"payment_id": "p2", "consent_id": CNPJ},
        {"cancelled_by": "", "payment_id": "p3", "idempotency_key": CPF_BARE},
        {"payment_id": CNPJ_BARE, "idempotency_key": "k" * 500, "consent_id": "c" * 500},
    ]
    for body in cases:
        poison = parse_request(json.dumps(body).encode())
        assert isinstance(poison, Poison)
        record = decide(1, 10, poison, 1.0, ref="KLAVI_CANCEL:1").record
        text = json.dumps(record, ensure_ascii=False)
        assert not any(document in text for document in DOCUMENTS), text
        for name in ("payment_id", "consent_id", "idempotency_key"):
            value = getattr(poison, name)
            assert value is None or len(value) <= 120
    masked = parse_request(json.dumps({"payment_id": "p1", "consent_id": CPF}).encode())
    assert isinstance(masked, Poison)
    assert masked.consent_id == "***.982.247-**"


async def test_documents_in_the_wrong_fields_never_reach_a_dead_letter(
    js: JetStreamContext, leak_guard: LeakGuard
) -> None:
    cases = [
        {"payment_id": CPF},
        {"payment_id": "p1", "consent_id": CPF},
        {"payment_id": "p2", "cancelled_by": "x", "consent_id": CNPJ},
        {"cancelled_by": "", "payment_id": "p3", "idempotency_key": CPF_BARE},
    ]
    for body in cases:
        await js.publish(REQUESTS_SUBJECT, json.dumps(body).encode())
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, retry_delay=0.1)
        await settle_all(js, worker, len(cases))
    dead = await records(js, DEAD_SUBJECT)
    assert len(dead) == len(cases)
    for _, raw in dead:
        assert not any(document.encode() in raw for document in DOCUMENTS), raw


async def test_a_worker_failing_on_a_message_dead_letters_it(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(data: bytes) -> CancelRequest | Poison:
        raise KeyError(CPF)  # a bug whose text holds what the message held

    monkeypatch.setattr(_request, "parse_request", broken)
    await js.publish(REQUESTS_SUBJECT, b'{"payment_id": "p1"}')
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, ack_wait=1.0, retry_delay=0.1)
        await settle_all(js, worker, 1)
    [(record, raw)] = await records(js, DEAD_SUBJECT)
    assert record["reason"] == "worker_error"
    assert "KeyError" in record["message"]
    assert record["source"].startswith("KLAVI_CANCEL:")
    assert CPF.encode() not in raw
    assert worker.stats.dead == 1
    assert worker.stats.unsettled == 0


async def test_a_record_over_the_streams_size_limit_becomes_a_minimal_dead_letter(
    js: JetStreamContext,
) -> None:
    await js.update_stream(
        StreamConfig(
            name=RESULTS_STREAM,
            subjects=[f"{RESULTS_SUBJECT}.>", f"{DEAD_SUBJECT}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=120.0,
            max_msgs_per_subject=1,
            max_msg_size=300,  # a result record is larger; a minimal dead letter is not
        )
    )
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        payment_id = emu.add_payment()
        await enqueue(js, [CancelRequest(payment_id, CPF)])
        worker = CancelWorker(client, js, ack_wait=1.0, retry_delay=0.1)
        await settle_all(js, worker, 1)
    assert await records(js, RESULTS_SUBJECT) == []
    [(record, _)] = await records(js, DEAD_SUBJECT)
    assert record["reason"] == "record_too_large"
    assert record["source"].startswith("KLAVI_CANCEL:1:")  # and the time it was stored
    assert worker.stats.dead == 1
    assert worker.stats.unsettled == 0


async def test_a_record_over_max_payload_becomes_a_minimal_dead_letter(
    nc: NATS, js: JetStreamContext
) -> None:
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, ack_wait=1.0, retry_delay=0.1)
        async with running(worker):
            while not (await js.streams_info())[0].state.consumer_count:
                await asyncio.sleep(0.02)
            # The limit the server announced, lowered once the consumer exists (its config
            # is larger): the client refuses a larger publish itself, as with 1 MiB.
            announced, nc._max_payload = nc._max_payload, 250
            try:
                await enqueue(js, [CancelRequest(emu.add_payment(), CPF)])
                await wait_for_records(js, 1, timeout=10)
            finally:
                nc._max_payload = announced
    [(record, _)] = await records(js, DEAD_SUBJECT)
    assert record["reason"] == "record_too_large"
    assert worker.stats.unsettled == 0


def test_a_non_final_record_is_named_by_its_message_not_by_the_bare_key() -> None:
    key = deterministic_idempotency_key("pay-1", CPF)
    result = failed(ErrorKind.SERVER_ERROR, idempotency_key=key, http_status=503)
    last = decide(3, 3, result, 1.0, ref="KLAVI_CANCEL:42")
    assert last.action is Action.TERM
    assert last.msg_id == f"{key}:unsettled:KLAVI_CANCEL:42"
    # Stable across the message's redeliveries (a worker died before terming it).
    assert decide(4, 3, result, 1.0, ref="KLAVI_CANCEL:42").msg_id == last.msg_id
    # A final record keeps the bare key: a crash before the ack is de-duplicated.
    final = failed(ErrorKind.NOT_CANCELLABLE, idempotency_key=key, retryable=False)
    assert decide(3, 3, final, 1.0, ref="KLAVI_CANCEL:42").msg_id == key


async def test_a_request_enqueued_again_after_a_non_final_record_gets_its_final_record(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [503, 503])  # both allowed deliveries of the first message fail
        request = CancelRequest(payment_id, CPF)
        body, _ = request_message(request)
        await js.publish(REQUESTS_SUBJECT, body)
        async with emulator_client(emu, retry=RetryPolicy.disabled()) as client:
            worker = CancelWorker(client, js, max_deliver=2, retry_delay=0.05)
            async with running(worker):
                await wait_for_records(js, 1)
                [(first, _)] = await records(js, RESULTS_SUBJECT)
                assert (first["ok"], first["deliveries"]) == (False, 2)
                # Enqueued again later (past the request stream's duplicate window: no
                # header here stands for that); this time the cancel succeeds.
                await js.publish(REQUESTS_SUBJECT, body)
                while worker.stats.ok < 1:
                    await asyncio.sleep(0.02)
        # The final record replaced the non-final one on the request's subject.
        found = [record for record, _ in await records(js, RESULTS_SUBJECT)]
        assert [(r["ok"], r["deliveries"]) for r in found] == [(True, 1)]
        assert worker.stats.duplicates == 0
        assert emu.effects[payment_id] == 1
        assert await stored(js) == 1


# -- enqueue: what was read is published, and counted, however the input ends ----------


def failing_after(requests: list[CancelRequest]) -> Iterator[CancelRequest]:
    yield from requests
    raise OSError("the input went away")


async def test_enqueue_publishes_what_was_read_when_the_input_fails(
    js: JetStreamContext,
) -> None:
    requests = [CancelRequest(f"pay-{i}", CPF) for i in range(3)]
    with pytest.raises(OSError, match="went away"):
        await enqueue(js, failing_after(requests))
    assert await stored(js, REQUESTS_STREAM) == 3


async def test_run_enqueue_prints_the_counts_when_it_fails(
    nats_server: NatsServer,
    js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def rows(path: str) -> Iterator[Row]:
        for line in (1, 2):
            yield parse_row(line, {"payment_id": f"pay-{line}", "cancelled_by": CPF})
        raise OSError("the disk went away")

    monkeypatch.setattr(nats_cli, "read_rows", rows)
    assert await nats_cli.run_enqueue("in.csv", nats_server.url) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("published 2, dropped as duplicates 0, rejected 0")
    assert "stopped by OSError" in captured.err
    assert await stored(js, REQUESTS_STREAM) == 2


async def test_enqueue_goes_on_past_a_csv_field_over_the_limit(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    path = tmp_path / "in.csv"
    rows = [f"pay-{i},{CPF}" for i in range(10)]
    rows.insert(5, "pay-big," + "9" * 200_000)
    path.write_text("payment_id,cancelled_by\n" + "\n".join(rows) + "\n")
    result = run_cli("enqueue", str(path), "--nats-url", nats_server.url)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("published 10, dropped as duplicates 0, rejected 1")
    assert "row 6 not published: the row is not valid CSV" in result.stderr
    assert await stored(js, REQUESTS_STREAM) == 10
