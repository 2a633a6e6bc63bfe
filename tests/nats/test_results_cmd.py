"""
`klavi-async results`: the records and dead letters as JSON lines, a summary by outcome,
and nothing left behind on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import signal
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ClusterInfo, StreamConfig, StreamState

from klavi_async import CancelRequest
from klavi_async._cli import _natsconnect, _streamcmds
from klavi_async.nats import (
    DEAD_SUBJECT,
    RESULTS_STREAM,
    RESULTS_SUBJECT,
    CancelWorker,
    enqueue,
)
from klavi_async.nats._reader import (
    ClusterNotReady,
    ResultsSummary,
    StoredMessage,
    _check_the_end,
    outcome,
    read_results,
    result_line,
)
from klavi_async.testing import KlaviEmulator

from ..conftest import CPF, CPF_BARE
from .conftest import NatsServer
from .helpers import emulator_client, silent_server, wait_for_records
from .test_records import CLI, cli


def record(payment_id: str, **fields: Any) -> dict[str, Any]:
    """A record with the fields a worker publishes (`CancelResult.to_record()` + deliveries)."""
    base: dict[str, Any] = {
        "payment_id": payment_id,
        "ok": True,
        "kind": None,
        "retryable": False,
        "http_status": 200,
        "code": None,
        "message": None,
        "idempotency_key": f"kc1-{payment_id}",
        "interaction_id": None,
        "consent_id": None,
        "attempts": 1,
        "already_cancelled": False,
        "reconciled": False,
        "outcome_unknown": False,
        "payment_status": None,
        "retry_after": None,
        "elapsed": 0.01,
        "deliveries": 1,
    }
    return base | fields


CANCELLED = record("pay-1")
ALREADY = record("pay-2", already_cancelled=True)
REFUSED = record("pay-3", ok=False, kind="not_cancellable", http_status=416)
RETRYABLE = record("pay-4", ok=False, kind="rate_limited", retryable=True, http_status=429)
UNKNOWN = record("pay-5", ok=False, kind="timeout", retryable=True, outcome_unknown=True)
DEAD = {
    "ok": False,
    "kind": "invalid_request",
    "reason": "bad_json",
    "message": "the message is not valid JSON",
    "payment_id": None,
    "consent_id": None,
    "idempotency_key": None,
    "deliveries": 1,
    "source": "KLAVI_CANCEL:7",
}
GARBAGE = b"\xff not json, and a CPF " + CPF.encode()


async def publish_all(js: JetStreamContext) -> list[tuple[str, bytes]]:
    published = [
        *(
            (f"{RESULTS_SUBJECT}.kc1-{r['payment_id']}", json.dumps(r).encode())
            for r in (CANCELLED, ALREADY, REFUSED, RETRYABLE, UNKNOWN)
        ),
        (f"{DEAD_SUBJECT}.KLAVI_CANCEL-7", json.dumps(DEAD).encode()),
        (f"{RESULTS_SUBJECT}.garbage", GARBAGE),
    ]
    for subject, body in published:
        await js.publish(subject, body)
    return published


SUMMARY = [
    "7 messages: cancelled 1, already cancelled 1, failed 1, not final 1, outcome unknown 1, "
    "dead letters 1, unreadable 1",
    "failed by kind: not_cancellable 1",
    "not final by kind: rate_limited 1",
    "dead letters by reason: bad_json 1",
]


async def consumers(js: JetStreamContext) -> int:
    return (await js.stream_info(RESULTS_STREAM)).state.consumer_count


async def test_results_prints_records_dead_letters_and_unreadable_messages(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    published = await publish_all(js)
    code, out, err = await cli("results", "--nats-url", nats_server.url)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["subject"] for line in lines] == [subject for subject, _ in published]
    assert [line["seq"] for line in lines] == list(range(1, 8))
    assert all(datetime.fromisoformat(line["time"]) for line in lines)
    assert [line["outcome"] for line in lines] == [
        "cancelled",
        "already_cancelled",
        "failed",
        "not_final",
        "outcome_unknown",
        "dead_letter",
        "unreadable",
    ]
    assert [line["record"] for line in lines[:6]] == [
        CANCELLED,
        ALREADY,
        REFUSED,
        RETRYABLE,
        UNKNOWN,
        DEAD,
    ]
    raw = lines[6]
    assert set(raw) == {"subject", "seq", "time", "outcome", "record", "raw"}
    assert raw["record"] is None
    assert raw["raw"].startswith("\ufffd not json, and a CPF ")
    assert CPF not in raw["raw"]
    assert CPF_BARE not in out
    assert err.splitlines() == SUMMARY
    assert await consumers(js) == 0  # the reader's consumer is gone
    # The same into a file; stdout stays empty.
    path = tmp_path / "results.jsonl"
    path.write_text("what an earlier export left\n")
    code, out, err = await cli("results", "--nats-url", nats_server.url, "--out", str(path))
    assert code == 0, err
    assert out == ""
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines
    assert err.splitlines() == SUMMARY


async def test_results_of_an_empty_or_missing_stream(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    code, out, err = await cli("results", "--nats-url", nats_server.url)
    assert (code, out) == (0, "")
    assert err.splitlines() == [
        "0 messages: cancelled 0, already cancelled 0, failed 0, not final 0, "
        "outcome unknown 0, dead letters 0, unreadable 0"
    ]
    await js.delete_stream(RESULTS_STREAM)
    code, out, err = await cli("results", "--nats-url", nats_server.url)
    assert (code, out) == (1, "")
    assert f"NATS at {nats_server.url} has no stream {RESULTS_STREAM}" in err
    code, _, err = await cli("results", "--nats-url", nats_server.url, "--out", str(tmp_path))
    assert code == 2
    assert "--out" in err


async def test_results_reads_a_legacy_stream_on_the_bare_subjects(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    # Before one record per request, records were on klavi.cancel.results itself: an
    # operator exports them before replacing the stream.
    await js.delete_stream(RESULTS_STREAM)
    legacy = StreamConfig(name=RESULTS_STREAM, subjects=[RESULTS_SUBJECT, DEAD_SUBJECT])
    await js.add_stream(legacy)
    await js.publish(RESULTS_SUBJECT, json.dumps(CANCELLED).encode())
    await js.publish(RESULTS_SUBJECT, json.dumps(REFUSED).encode())
    await js.publish(DEAD_SUBJECT, json.dumps(DEAD).encode())
    code, out, err = await cli("results", "--nats-url", nats_server.url)
    assert code == 0, err
    found = [(line["subject"], line["outcome"]) for line in map(json.loads, out.splitlines())]
    assert found == [
        (RESULTS_SUBJECT, "cancelled"),
        (RESULTS_SUBJECT, "failed"),
        (DEAD_SUBJECT, "dead_letter"),
    ]


async def test_results_stops_at_what_the_stream_held_when_it_started(
    js: JetStreamContext,
) -> None:
    await publish_all(js)
    seen: list[StoredMessage] = []
    async with contextlib.aclosing(read_results(js)) as reading:
        async for message in reading:
            seen.append(message)
            if len(seen) == 1:  # stored after the start: not part of this reading
                await js.publish(f"{RESULTS_SUBJECT}.late", json.dumps(CANCELLED).encode())
    assert [m.seq for m in seen] == list(range(1, 8))
    assert await consumers(js) == 0
    stop = asyncio.Event()
    stop.set()
    async with contextlib.aclosing(read_results(js, follow=True, stop=stop)) as reading:
        assert [m async for m in reading] == []
    assert await consumers(js) == 0


async def test_results_follow_prints_new_records_until_a_signal(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    await js.publish(f"{RESULTS_SUBJECT}.kc1-pay-1", json.dumps(CANCELLED).encode())
    path = tmp_path / "follow.jsonl"
    process = await asyncio.create_subprocess_exec(
        CLI,
        "results",
        "--nats-url",
        nats_server.url,
        "--follow",
        "--out",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_lines(path, 1)  # it reads: the record before it started
        await js.publish(f"{DEAD_SUBJECT}.KLAVI_CANCEL-9", json.dumps(DEAD).encode())
        await js.publish(f"{RESULTS_SUBJECT}.kc1-pay-2", json.dumps(ALREADY).encode())
        await wait_for_lines(path, 3)
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err
    assert out == b""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["outcome"] for line in lines] == ["cancelled", "dead_letter", "already_cancelled"]
    assert err.decode().splitlines() == [
        "3 messages: cancelled 1, already cancelled 1, failed 0, not final 0, "
        "outcome unknown 0, dead letters 1, unreadable 0",
        "dead letters by reason: bad_json 1",
    ]
    assert await consumers(js) == 0


async def wait_for_lines(path: Path, count: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while lines_in(path) < count:
            await asyncio.sleep(0.02)


def lines_in(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_results_of_a_real_worker(nats_server: NatsServer, js: JetStreamContext) -> None:
    async with KlaviEmulator() as emu:
        requests = [CancelRequest(emu.add_payment(), CPF) for _ in range(3)]
        requests.append(CancelRequest(emu.add_payment("PAYMENT_COMPLETED"), CPF))
        requests.append(CancelRequest(emu.add_payment("CANCELED"), CPF))
        assert await enqueue(js, requests) == 5
        await js.publish("klavi.cancel.requests", b"{not json")
        async with emulator_client(emu) as client:
            worker = CancelWorker(client, js)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            await wait_for_records(js, 6)
            stop.set()
            await asyncio.wait_for(task, timeout=30)
    code, out, err = await cli("results", "--nats-url", nats_server.url)
    assert code == 0, err
    found = Counter(line["outcome"] for line in map(json.loads, out.splitlines()))
    assert found == {"cancelled": 3, "failed": 1, "already_cancelled": 1, "dead_letter": 1}
    assert err.splitlines()[0] == (
        "6 messages: cancelled 3, already cancelled 1, failed 1, not final 0, "
        "outcome unknown 0, dead letters 1, unreadable 0"
    )


def test_outcomes_and_the_summary_of_odd_messages() -> None:
    assert outcome(f"{DEAD_SUBJECT}.x", [1, 2]) == "unreadable"
    assert outcome(f"{RESULTS_SUBJECT}.x", {"ok": False}) == "not_final"
    assert outcome("elsewhere", {"ok": True}) == "cancelled"
    line = result_line(StoredMessage(f"{RESULTS_SUBJECT}.x", 3, None, b"42"))
    assert line == {
        "subject": f"{RESULTS_SUBJECT}.x",
        "seq": 3,
        "time": None,
        "outcome": "unreadable",
        "record": 42,
    }
    deep = result_line(StoredMessage(RESULTS_SUBJECT, 4, None, b"[" * 100_000))
    assert deep["outcome"] == "unreadable"
    assert len(deep["raw"]) < 1100
    summary = ResultsSummary()
    summary.add(line)
    summary.add(result_line(StoredMessage(RESULTS_SUBJECT, 5, None, b'{"ok": false}')))
    assert summary.lines() == [
        "2 messages: cancelled 0, already cancelled 0, failed 0, not final 1, "
        "outcome unknown 0, dead letters 0, unreadable 1",
        "not final by kind: None 1",
    ]


async def test_following_outlives_its_consumer_and_the_server(
    nats_server: NatsServer, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    await js.publish(f"{RESULTS_SUBJECT}.kc1-pay-1", json.dumps(CANCELLED).encode())
    stop = asyncio.Event()
    async with contextlib.aclosing(read_results(js, follow=True, stop=stop)) as reading:
        first = await anext(reading)
        assert first.seq == 1
        # The consumer vanishes (deleted, or lost with a server restart): another one
        # takes over from the next message, none read twice.
        (consumer,) = await js.consumers_info(RESULTS_STREAM)
        await js.delete_consumer(RESULTS_STREAM, consumer.name)
        await js.publish(f"{RESULTS_SUBJECT}.kc1-pay-2", json.dumps(ALREADY).encode())
        second = await asyncio.wait_for(anext(reading), timeout=30)
        assert (second.seq, json.loads(second.data)) == (2, ALREADY)
        stop.set()
        assert [m async for m in reading] == []
    assert "reading the results failed (" in caplog.text  # what nats-py says varies
    assert "); reading again from 2" in caplog.text
    assert await consumers(js) == 0


async def test_results_follow_goes_on_after_a_server_restart(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    await js.publish(f"{RESULTS_SUBJECT}.kc1-pay-1", json.dumps(CANCELLED).encode())
    path = tmp_path / "follow.jsonl"
    process = await asyncio.create_subprocess_exec(
        CLI, "results", "--nats-url", nats_server.url, "--follow", "--out", str(path),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_for_lines(path, 1)
        await asyncio.to_thread(nats_server.restart)
        async with asyncio.timeout(30):
            while True:  # until this test's own connection is back (once: the id)
                try:
                    body = json.dumps(ALREADY).encode()
                    subject = f"{RESULTS_SUBJECT}.kc1-pay-2"
                    await js.publish(subject, body, timeout=1, headers={"Nats-Msg-Id": "pay-2"})
                    break
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.05)
        await wait_for_lines(path, 2)
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [1, 2]
    assert err.decode().splitlines()[-1].startswith("2 messages: cancelled 1, already cancelled 1")


async def test_reading_ends_when_what_was_there_is_gone(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        await js.publish(f"{RESULTS_SUBJECT}.kc1-{n}", json.dumps(CANCELLED).encode())
    bind = js.pull_subscribe_bind
    late: list[int] = []

    async def delete_the_last_then_bind(*args: Any, **kwargs: Any) -> Any:
        # Between the start and the reading: the last record is replaced by a later one.
        await js.delete_msg(RESULTS_STREAM, 3)
        ack = await js.publish(f"{RESULTS_SUBJECT}.kc1-2", json.dumps(REFUSED).encode())
        late.append(ack.seq)
        return await bind(*args, **kwargs)

    monkeypatch.setattr(js, "pull_subscribe_bind", delete_the_last_then_bind)
    async with contextlib.aclosing(read_results(js)) as reading:
        assert [m.seq async for m in reading] == [1, 2]
    assert late == [4]

    async def purge_then_bind(*args: Any, **kwargs: Any) -> Any:
        await js.purge_stream(RESULTS_STREAM)  # expired, say: nothing left to read
        return await bind(*args, **kwargs)

    monkeypatch.setattr(js, "pull_subscribe_bind", purge_then_bind)
    async with contextlib.aclosing(read_results(js)) as reading:
        assert [m async for m in reading] == []
    assert await consumers(js) == 0

    async def bind_then_lose_the_consumer(*args: Any, **kwargs: Any) -> Any:
        sub = await bind(*args, **kwargs)
        (consumer,) = await js.consumers_info(RESULTS_STREAM)
        await js.delete_consumer(RESULTS_STREAM, consumer.name)
        return sub

    await js.publish(f"{RESULTS_SUBJECT}.kc1-9", json.dumps(CANCELLED).encode())
    monkeypatch.setattr(js, "pull_subscribe_bind", bind_then_lose_the_consumer)
    with pytest.raises(nats.errors.Error):  # errors lasting its patience end the reading
        async with contextlib.aclosing(read_results(js, patience=0)) as reading:
            [m async for m in reading]
    lost: list[int] = []

    async def lose_the_first_consumer(*args: Any, **kwargs: Any) -> Any:
        if not lost:  # once: a leader election, say; the reading goes on
            lost.append(1)
            return await bind_then_lose_the_consumer(*args, **kwargs)
        return await bind(*args, **kwargs)

    monkeypatch.setattr(js, "pull_subscribe_bind", lose_the_first_consumer)
    async with contextlib.aclosing(read_results(js)) as reading:
        assert [m.seq async for m in reading] == [5]
    assert lost == [1] and await consumers(js) == 0


async def test_results_interrupted_or_failing_part_way(
    nats_server: NatsServer,
    js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for n in range(300):  # more than one fetch
        await js.publish(f"{RESULTS_SUBJECT}.kc1-{n}", json.dumps(CANCELLED).encode())
    real = _streamcmds.result_line
    calls: list[int] = []

    def interrupted_at_the_first(message: StoredMessage) -> dict[str, Any]:
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)  # handled by the command: it stops reading
        calls.append(message.seq)
        return real(message)

    monkeypatch.setattr(_streamcmds, "result_line", interrupted_at_the_first)
    out = io.StringIO()
    assert await _streamcmds.run_results(nats_server.url, follow=False, out=out) == 130
    assert 0 < len(calls) < 300
    assert len(out.getvalue().splitlines()) == len(calls)
    assert capsys.readouterr().err.startswith(f"{len(calls)} messages: cancelled {len(calls)},")
    monkeypatch.setattr(_streamcmds, "result_line", real)

    async def broken(*args: Any, **kwargs: Any) -> AsyncGenerator[StoredMessage, None]:
        yield StoredMessage(RESULTS_SUBJECT, 1, None, b'{"ok": true}')
        raise nats.errors.ConnectionClosedError

    monkeypatch.setattr(_streamcmds, "read_results", broken)
    assert await _streamcmds.run_results(nats_server.url, follow=False) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "klavi-async: results: stopped by ConnectionClosedError; the summary counts what was read"
    )
    assert err[1].startswith("1 message: cancelled 1,")


async def test_streams_refused_on_creation_says_what_exists(nats_server: NatsServer) -> None:
    code, out, err = await cli("streams", "--nats-url", nats_server.url, "--replicas", "3")
    assert code == 1
    assert "replicas > 1 not supported in non-clustered mode" in err
    assert out.splitlines() == ["KLAVI_CANCEL: missing", "KLAVI_CANCEL_RESULTS: missing"]


async def test_results_out_in_a_missing_directory_is_a_usage_error(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    out = str(tmp_path / "missing" / "results.jsonl")
    code, _, err = await cli("results", "--nats-url", nats_server.url, "--out", out)
    assert code == 2
    assert f"cannot write --out {out}: No such file or directory" in err


async def test_a_server_that_never_answers_is_said_after_the_first_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_natsconnect, "FIRST_TIMEOUT", 0.3)
    async with silent_server() as port:
        with pytest.raises(click.ClickException, match=r"no answer within 0\.3 s"):
            await _natsconnect.open_nats(f"nats://127.0.0.1:{port}")


@pytest.mark.parametrize("patience", [-1.0, float("nan")])
async def test_patience_must_be_a_number_of_seconds(js: JetStreamContext, patience: float) -> None:
    with pytest.raises(ValueError, match="patience must be 0 or more seconds"):
        async with contextlib.aclosing(read_results(js, patience=patience)) as reading:
            [m async for m in reading]


Fetch = Callable[..., Awaitable[list[Msg]]]


def first_consumer_fetches(
    js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
    fetch: Callable[[Fetch, int, float], Awaitable[list[Msg]]],
) -> list[int]:
    """The reader's first consumer fetches through *fetch* (given the real fetch); the
    list returned grows by one for each consumer the reader binds."""
    bind = js.pull_subscribe_bind
    binds: list[int] = []

    async def bound(*args: Any, **kwargs: Any) -> Any:
        sub = await bind(*args, **kwargs)
        binds.append(1)
        if len(binds) == 1:
            real = sub.fetch

            async def through(batch: int, timeout: float) -> list[Msg]:
                return await fetch(real, batch, timeout)

            sub.fetch = through
        return sub

    monkeypatch.setattr(js, "pull_subscribe_bind", bound)
    return binds


async def test_a_consumer_that_sees_fewer_than_were_stored_is_read_again(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A consumer placed on a replica still catching up (its node just restarted) counts
    # fewer messages than the stream's leader stored: the reading must not end there.
    for n in range(10):
        await js.publish(f"{RESULTS_SUBJECT}.kc1-{n}", json.dumps(CANCELLED).encode())

    async def fetch_four(fetch: Fetch, batch: int, timeout: float) -> list[Msg]:
        msgs = await fetch(4, timeout=timeout)
        for msg in msgs:  # as the lagging replica says: nothing after these
            msg._metadata = dataclasses.replace(msg.metadata, num_pending=0)
        return msgs

    binds = first_consumer_fetches(js, monkeypatch, fetch_four)
    async with contextlib.aclosing(read_results(js)) as reading:
        assert [m.seq async for m in reading] == list(range(1, 11))
    assert len(binds) == 2 and await consumers(js) == 0


async def test_the_end_is_checked_with_the_streams_leader(js: JetStreamContext) -> None:
    for n in range(3):
        await js.publish(f"{RESULTS_SUBJECT}.kc1-{n}", json.dumps(CANCELLED).encode())
    await _check_the_end(js, 3, 3)  # nothing after 3: the end
    await js.delete_msg(RESULTS_STREAM, 2)
    await _check_the_end(js, 1, 2)  # 2 was deleted (a record replaced): the end too
    with pytest.raises(ClusterNotReady, match="holds 3"):
        await _check_the_end(js, 1, 3)


async def test_a_stream_without_a_leader_is_asked_again(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # During an election a cluster answers a stream's info with no leader and an empty
    # state: that is not "no records".
    for n in range(3):
        await js.publish(f"{RESULTS_SUBJECT}.kc1-{n}", json.dumps(CANCELLED).encode())
    real = js.stream_info
    asked: list[str] = []

    async def leaderless_first(name: str, *args: Any, **kwargs: Any) -> Any:
        info = await real(name, *args, **kwargs)
        asked.append(name)
        if len(asked) == 1:
            empty = StreamState(messages=0, bytes=0, first_seq=0, last_seq=0, consumer_count=0)
            return dataclasses.replace(info, state=empty, cluster=ClusterInfo(name="c"))
        return info

    monkeypatch.setattr(js, "stream_info", leaderless_first)
    async with contextlib.aclosing(read_results(js)) as reading:
        assert [m.seq async for m in reading] == [1, 2, 3]
    assert len(asked) == 2


async def test_read_again_after_the_rest_was_deleted_it_ends_at_once(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broker error after the first record, and the others replaced meanwhile: the new
    # consumer (from 2) finds nothing, and the leader holds nothing after 1 either.
    for n in range(3):
        await js.publish(f"{RESULTS_SUBJECT}.kc1-{n}", json.dumps(CANCELLED).encode())

    async def first_only(fetch: Fetch, batch: int, timeout: float) -> list[Msg]:
        msgs = await fetch(1, timeout=timeout)
        for seq in (2, 3):
            await js.delete_msg(RESULTS_STREAM, seq)
        (consumer,) = await js.consumers_info(RESULTS_STREAM)
        await js.delete_consumer(RESULTS_STREAM, consumer.name)
        return msgs

    binds = first_consumer_fetches(js, monkeypatch, first_only)
    async with contextlib.aclosing(read_results(js, patience=5)) as reading:
        assert [m.seq async for m in reading] == [1]
    assert len(binds) == 2 and await consumers(js) == 0
