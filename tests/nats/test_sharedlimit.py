"""
`_sharedlimit`: a fleet's reports in a key-value bucket on a real nats-server, and the
worker adapting alone when the bucket cannot be had.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from klavi_async import ClientCredentials, KlaviClient, RateLimitStats
from klavi_async.nats import CancelWorker, _division, shared_rate_limit
from klavi_async.nats._division import Report
from klavi_async.nats._sharedlimit import (
    BUCKET,
    Reporter,
    SharedLimit,
    parse_report,
    report_body,
)

from .conftest import NatsServer

CREDENTIALS = ClientCredentials("access-key-of-the-fleet", "secret-key-of-the-fleet")
BASE = "http://127.0.0.1:9"  # never called: the limiters are driven by hand


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll *condition* until it holds (a bound, not a pace: it returns as soon as it does)."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


def stats(client: KlaviClient) -> RateLimitStats:
    snapshot = client.rate_limit_stats()
    assert snapshot is not None
    return snapshot


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"rate": 50, "accepted": 40.5, "wanting": true, "up": 3}', Report(50, 40.5, True, 3)),
        (b'{"rate": null, "accepted": 0, "wanting": false, "up": 9}', Report(None, 0, False, 9)),
        (b'{"rate": 1, "accepted": 0, "wanting": false, "up": 3e9}', Report(1, 0, False, 3e9)),
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"rate": "50", "accepted": 1, "wanting": true, "up": 1}', None),
        (b'{"rate": 50, "accepted": -1, "wanting": true, "up": 1}', None),
        (b'{"rate": 50, "accepted": 1e7, "wanting": true, "up": 1}', None),
        (b'{"rate": 50, "accepted": NaN, "wanting": true, "up": 1}', None),
        (b'{"rate": Infinity, "accepted": 1, "wanting": true, "up": 1}', None),
        (b'{"rate": 50, "accepted": 1, "wanting": 1, "up": 1}', None),
        (b'{"rate": 50, "accepted": 1, "wanting": true, "up": ' + b"9" * 400 + b"}", None),
        (b'{"rate": 50, "accepted": true, "wanting": true, "up": 1}', None),
        (b'{"accepted": 1, "wanting": true}', None),
        (b'{"rate": 9, "accepted": 8, "wanting": true, "up": 5, "refused": 0.2, "calm": 0.5}',
         Report(9, 8, True, 5, 0.2, 0.5)),
        (b'{"rate": 9, "accepted": 8, "wanting": true, "up": 5, "refused": 1.5}', None),
        (b'{"rate": 9, "accepted": 8, "wanting": true, "up": 5, "calm": -1}', None),
        (b'{"rate": 9, "accepted": 8, "wanting": true, "up": 5, "calm": 1e9, "refused": null}',
         Report(9, 8, True, 5, 0.0, 3600.0)),
        (b'{"rate": 9, "accepted": 8, "wanting": true, "up": 5, "calm": "x"}', None),
    ],
)  # fmt: skip
def test_a_report_is_read_strictly(data: bytes, expected: Report | None) -> None:
    assert parse_report(data) == expected


def test_a_report_tells_the_share_refused_over_three_seconds_and_the_calm() -> None:
    def stats(accepted: float, throttled: float, events: int) -> RateLimitStats:
        return RateLimitStats(
            allowed_rate=100.0, throttle_events=events, wait_time=0.0, waits=0,
            engaged=True, accepted_rate=accepted, throttled_rate=throttled,
        )  # fmt: skip

    reporter = Reporter(10.0)
    first = reporter.report(stats(90.0, 10.0, 10), 10.0)
    assert (first.refused, first.calm, first.uptime) == (0.1, 0.0, 0.0)
    for beat in range(1, 5):  # two more seconds, nothing refused
        last = reporter.report(stats(100.0, 0.0, 10), 10.0 + beat * 0.5)
    assert last.refused == pytest.approx(10 / 300)  # the last three seconds (every other beat)
    assert last.calm == 2.0 and last.uptime == 2.0
    last = reporter.report(stats(100.0, 0.0, 10), 12.5)
    assert last.refused == 0.0  # the refusing second is over three seconds old
    assert parse_report(report_body(last)) == last


async def test_two_workers_hear_each_other_and_a_stop_is_heard_at_once(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A member is gone only when its report is deleted here: never for silence.
    monkeypatch.setattr(_division, "GONE", 3600.0)
    async with (
        KlaviClient(CREDENTIALS, base_url=BASE) as one,
        KlaviClient(CREDENTIALS, base_url=BASE) as other,
    ):
        first, second = SharedLimit(js, one), SharedLimit(js, other)
        assert await first.start()
        try:
            assert await second.start()
            await until(lambda: stats(one).fleet_size == 2 and stats(other).fleet_size == 2)
            # Reports carry the account's fingerprint, never its key.
            kv = await js.key_value(BUCKET)
            keys = await kv.keys()
            assert len(keys) == 2 and all(k.startswith(f"{one.account}.") for k in keys)
            assert all("access-key" not in k for k in keys)
            await second.stop()
            await until(lambda: stats(one).fleet_size == 1)  # its report deleted
        finally:
            await first.stop()
            await second.stop()


async def test_a_joiner_takes_its_part_of_what_the_members_hold(js: JetStreamContext) -> None:
    # The member there reports 80 accepted at a rate of 90 (written as a worker would):
    # the joiner takes half before anything else.
    kv = await js.create_key_value(bucket=BUCKET, ttl=10.0)
    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:
        body = {"rate": 90.0, "accepted": 80.0, "wanting": True, "up": 60.0}
        await kv.put(f"{client.account}.elder", json.dumps(body).encode())
        joiner = SharedLimit(js, client)
        assert await joiner.start()
        try:
            assert (stats(client).fleet_size, stats(client).fleet_part) == (2, 40.0)
            assert stats(client).allowed_rate == 40.0
            await kv.delete(f"{client.account}.elder")  # it stops: its part comes back
            await until(lambda: stats(client).fleet_size == 1)
            assert stats(client).fleet_part == 80.0  # what it accepted (none) and the elder
        finally:
            await joiner.stop()


async def test_reports_of_another_account_and_hostile_ones_are_not_heard(
    js: JetStreamContext,
) -> None:
    kv = await js.create_key_value(bucket=BUCKET, ttl=10.0)
    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:
        body = json.dumps({"rate": 90.0, "accepted": 80.0, "wanting": True, "up": 60.0})
        await kv.put("0123456789abcdef.elsewhere", body.encode())
        await kv.put(f"{client.account}.liar", b'{"rate": 1e300, "accepted": -5}')
        await kv.put(f"{client.account}.garbage", b"\xff\xfe")
        shared = SharedLimit(js, client)
        assert await shared.start()
        try:
            assert stats(client).fleet_size == 1 and stats(client).fleet_part is None
            assert stats(client).engaged is False  # nothing divided: its own limiter's
        finally:
            await shared.stop()


async def test_without_an_account_or_a_bucket_the_worker_adapts_alone(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    async def token() -> str:
        return "a-token"

    caplog.set_level(logging.WARNING, "klavi_async.nats")
    async with KlaviClient(token, base_url=BASE) as client:
        assert client.account is None
        assert not await SharedLimit(js, client).start()
    assert "names no account" in caplog.text

    class NoKeyValue:  # a broker without key-value, or an account without the permission
        async def key_value(self, bucket: str) -> None:
            raise PermissionError("denied")

    caplog.clear()
    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:
        refused = SharedLimit(NoKeyValue(), client)  # type: ignore[arg-type]
        assert not await refused.start()
        await refused.stop()
        assert stats(client).fleet_size is None
    assert "not shared with the fleet (the bucket" in caplog.text
    assert "PermissionError" in caplog.text and "access-key" not in caplog.text

    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:
        assert not await SharedLimit(js, client, enabled=False).start()
    async with KlaviClient(CREDENTIALS, base_url=BASE, rate_limit=None) as client:
        assert not await SharedLimit(js, client).start()  # no limiter: nothing to share


async def test_a_worker_without_a_shared_limit_makes_no_bucket(js: JetStreamContext) -> None:
    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:
        worker = CancelWorker(client, js, shared_limit=False)
        stop = asyncio.Event()
        stop.set()
        await worker.run(stop)
    assert f"KV_{BUCKET}" not in [info.config.name for info in await js.streams_info()]


async def test_a_broker_restart_loses_the_bucket_and_the_workers_make_it_again(
    nats_server: NatsServer, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "klavi_async.nats")
    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:
        shared = SharedLimit(js, client)
        assert await shared.start()
        try:
            nats_server.stop()  # the bucket is kept in memory: gone with the server

            def rewatches() -> list[logging.LogRecord]:
                return [r for r in caplog.records if "watching again" in r.getMessage()]

            await until(lambda: len(rewatches()) >= 2, seconds=20)  # away a while
            nats_server.start()

            async def reported() -> bool:
                try:
                    kv = await js.key_value(BUCKET)
                    return len(await kv.keys()) == 1
                except Exception:
                    return False

            async with asyncio.timeout(20):
                while not await reported():
                    await asyncio.sleep(0.1)
            assert "could not report" in caplog.text  # while the server was away
            # Said once while it was away (a broker away for an hour is one line).
            assert [r.levelno for r in rewatches()][:2] == [logging.WARNING, logging.DEBUG]
            assert stats(client).fleet_size == 1
        finally:
            await shared.stop()


async def test_an_idle_worker_hearing_a_member_come_and_go_keeps_reporting(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    # A part of 0 (an idle worker's) once killed the watch and the reports, silently.
    kv = await js.create_key_value(bucket=BUCKET, ttl=10.0)
    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:
        client.share_rate_limit(50.0, fleet_size=1)  # throttled once, idle since
        shared = SharedLimit(js, client)
        assert await shared.start()
        try:
            key = next(k for k in await kv.keys() if k.startswith(f"{client.account}."))
            body = json.dumps({"rate": 50, "accepted": 50, "wanting": True, "up": 30})
            await kv.put(f"{client.account}.busy", body.encode())
            await until(lambda: stats(client).fleet_size == 2)
            await kv.delete(f"{client.account}.busy")
            await until(lambda: stats(client).fleet_size == 1)
            first = (await kv.get(key)).revision or 0
            async with asyncio.timeout(5):
                while ((await kv.get(key)).revision or 0) <= first:
                    await asyncio.sleep(0.05)
        finally:
            await shared.stop()
    assert "watch went silent" not in caplog.text
    assert "Traceback" not in caplog.text


async def test_a_stop_ends_the_reports_even_when_a_cancel_is_swallowed(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nats-py awaits `asyncio.wait_for`, which (Python 3.11) can swallow a cancel that
    # comes with the answer: a worker then never exited on SIGINT.
    inside = asyncio.Event()

    async def swallowing(self: SharedLimit) -> None:
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):  # the answer came with the cancel
            await asyncio.sleep(0.2)

    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:
        shared = SharedLimit(js, client)
        assert await shared.start()
        monkeypatch.setattr(SharedLimit, "_report", swallowing)
        async with asyncio.timeout(10):
            await inside.wait()
            await shared.stop()
        assert shared._tasks == []
    leftover = [t for t in asyncio.all_tasks() if "SharedLimit" in repr(t)]
    assert leftover == []


async def test_a_cancel_while_entering_leaves_no_watch_behind(
    nc: NATS, js: JetStreamContext
) -> None:
    # Cancelled 1-10 ms in: the block ends cancelled, and a watch's subscription made
    # by then is stopped.
    await js.create_key_value(bucket=BUCKET, ttl=10.0)
    before = len(nc._subs)
    async with KlaviClient(CREDENTIALS, base_url=BASE) as client:

        async def enter() -> None:
            async with shared_rate_limit(client, js):
                await asyncio.Event().wait()

        for attempt in range(20):
            task = asyncio.create_task(enter())
            await asyncio.sleep(0.001 * (attempt % 10 + 1))
            task.cancel()
            # A cancel nats-py swallowed while the bucket was looked up once let the
            # start go on and the block wait for ever.
            async with asyncio.timeout(30):
                await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled()
    await until(lambda: len(nc._subs) == before)
