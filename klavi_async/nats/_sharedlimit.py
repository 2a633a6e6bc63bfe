"""
A fleet's shared rate limit through the broker: every worker's report in a JetStream
key-value bucket, every worker watching the bucket and dividing what it hears
(`_division`), then giving its client's limiter its part.

The key is `<account fingerprint>.<worker id>`: workers of one Klavi account hear each
other, never the key itself.  The bucket keeps reports in memory for `REPORT_TTL`
seconds, so a crashed worker's report is gone for a later joiner; a watch starts with
every report there, so a joiner takes its part before its first request.  A worker
hears its own report through the watch too: not hearing it for `GONE` seconds means the
watch broke (a broker restart), and it is started again.  Whatever fails (no JetStream
key-value, no permission, a callable token source that names no account), the worker
adapts alone, as without a fleet, and says so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from .. import KlaviClient, RateLimitStats
from ._division import BEAT, GONE, Division, Report
from ._lanes import cancel_until_done, raise_if_cancelled

__all__ = [
    "BUCKET",
    "SharedLimit",
    "parse_report",
    "report_body",
    "Reporter",
    "shared_rate_limit",
]

logger = logging.getLogger("klavi_async.nats")

BUCKET: Final = "KLAVI_RATE_SHARES"
REPORT_TTL: Final = 10.0
"""Seconds a report stays in the bucket unless put again (every `BEAT`)."""
_MOST: Final = 1e6
"""The highest number a report may hold (a `RateLimit`'s highest rate): above, none."""
_FIRST_WATCH: Final = 2.0
"""Seconds a start waits for the watch's reports there before going on without them."""
_START: Final = 2.0
"""Seconds a start gives the bucket, and its first report, before going on without."""
_SECONDS: Final = 3
"""Seconds over which a report tells the share of answers Klavi refused."""
_CALMEST: Final = 3600.0
"""The longest calm a report tells (seconds since Klavi last refused the member)."""


class Reporter:
    """What a limiter says to its fleet, beat after beat (it keeps what the last ones saw)."""

    def __init__(self, now: float) -> None:
        self._started = now
        self._waits = self._throttles = 0
        self._refused_at = -math.inf
        # (accepted, refused) in the second before each of the last beats: every other
        # one is a second apart, so three of them are the last three seconds.
        self._seconds: deque[tuple[float, float]] = deque(maxlen=_SECONDS * 2 - 1)

    def report(self, stats: RateLimitStats, now: float) -> Report:
        wanting = stats.waiting > 0 or stats.waits > self._waits  # calls waited: more
        if stats.throttle_events > self._throttles:
            self._refused_at = now
        self._waits, self._throttles = stats.waits, stats.throttle_events
        self._seconds.appendleft((stats.accepted_rate, stats.throttled_rate))
        seconds = list(self._seconds)[::2]
        refused = sum(bad for _, bad in seconds)
        share = refused / max(sum(ok for ok, _ in seconds) + refused, 1.0)
        calm = min(now - self._refused_at, _CALMEST)
        uptime = now - self._started
        return Report(stats.allowed_rate, stats.accepted_rate, wanting, uptime, share, calm)


def report_body(report: Report) -> bytes:
    """A report as it is put in the bucket; `parse_report` reads it back."""
    body = {"rate": report.rate, "accepted": report.accepted, "wanting": report.wanting}
    body |= {"up": round(report.uptime, 3), "refused": report.refused}
    body |= {"calm": round(report.calm, 3)}
    return json.dumps(body).encode()


def parse_report(data: bytes) -> Report | None:
    """A member's report, or None for anything not one (hostile, garbled, absurd)."""
    try:
        raw = json.loads(data)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    rate, accepted = _number(raw.get("rate"), _MOST), _number(raw.get("accepted"), _MOST)
    uptime = _number(raw.get("up"), math.inf)  # a worker may run for years
    # Neither (or null) from an earlier version: nothing refused, the limit in sight, as
    # it read; a longer calm than ours is ours.
    refused = _number(_given(raw.get("refused")), 1.0)
    calm = _number(_given(raw.get("calm")), math.inf)
    calm = None if calm is None else min(calm, _CALMEST)
    wanting = raw.get("wanting")
    if None in (accepted, uptime, refused, calm) or not isinstance(wanting, bool):
        return None
    if rate is None and raw.get("rate") is not None:
        return None
    return Report(rate, accepted, wanting, uptime, refused, calm)  # type: ignore[arg-type]


def _given(value: object) -> object:
    return 0 if value is None else value


def _number(value: object, most: float) -> float | None:
    """*value* as a float from 0 to *most* (NaN never is); else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)  # a 400-digit int overflows
    except OverflowError:
        return None
    return number if 0 <= number <= most and number != math.inf else None


class SharedLimit:
    """
    One worker's part in its fleet's division: `start()`, then reports every `BEAT`
    until `stop()`.  `start()` returns False when the worker adapts alone.
    """

    def __init__(
        self,
        js: JetStreamContext,
        client: KlaviClient,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        who: str = "worker",
    ) -> None:
        self._js, self._client, self._clock = js, client, clock
        self._enabled = enabled
        self._who = who  # what the warnings call this process
        self._kv: KeyValue | None = None
        self._key = ""
        self._prefix = ""
        self.division: Division | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._heard_self = -math.inf  # when the watch last brought our own report
        self._reporter: Reporter | None = None  # made by start()
        self._away = False  # the last report could not be put: the broker is away
        self._rewatched = False  # the watch was started again and has not been heard since
        self._stopping = False

    async def start(self) -> bool:
        if not self._enabled or self._client.rate_limit_stats() is None:
            return False  # off, or a client without a limiter (`rate_limit=None`)
        account = self._client.account
        if account is None:
            logger.warning(
                "rate limit not shared with the fleet: the client's token source names no "
                "account (give ClientCredentials); this %s adapts alone",
                self._who,
            )
            return False
        try:
            async with asyncio.timeout(_START):  # a slow broker must not hold the worker
                self._kv = await self._bucket()
            raise_if_cancelled()
        except Exception as exc:  # no key-value on this broker, no permission: alone
            logger.warning(
                "rate limit not shared with the fleet (the bucket %s: %s); this %s adapts alone",
                BUCKET,
                type(exc).__name__,
                self._who,
            )
            return False
        self._prefix = f"{account}."
        me = uuid.uuid4().hex[:12]
        self._key = self._prefix + me
        self.division = Division(me, self._clock)
        self._heard_self = self._clock()
        self._reporter = Reporter(self._heard_self)  # its uptime from now
        self._stopping = False
        first = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.create_task(self._watch(first))]
        with contextlib.suppress(TimeoutError):  # go on without: it reports as it comes
            async with asyncio.timeout(_FIRST_WATCH):
                await asyncio.shield(first)
        with contextlib.suppress(TimeoutError):  # reported at the next beat then
            async with asyncio.timeout(_START):
                await self._report()
        raise_if_cancelled()
        self._tasks.append(asyncio.create_task(self._beat()))
        return True

    async def stop(self) -> None:
        """Stop reporting and take our report out: the others take back its part now."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        # A swallowed cancel (see `cancel_until_done`) once kept a worker from exiting on
        # SIGINT; the flag ends the loops at their next turn as well.
        await cancel_until_done(tasks)
        if self._kv is not None and self._key:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._kv.delete(self._key)

    async def _bucket(self) -> KeyValue:
        try:
            return await self._js.key_value(BUCKET)
        except BucketNotFoundError:
            config = KeyValueConfig(
                bucket=BUCKET, history=1, ttl=REPORT_TTL, storage=StorageType.MEMORY
            )
            return await self._js.create_key_value(config=config)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(BEAT)
            if self._stopping:  # a cancel swallowed (see `stop`)
                return
            if self._clock() - self._heard_self >= GONE:  # the watch broke: again
                # Once until it is heard again: a broker away for an hour is one line.
                log = logger.debug if self._rewatched else logger.warning
                log("rate limit shares: the watch went silent; watching again")
                self._rewatched = True
                self._heard_self = self._clock()
                for task in self._tasks[:1]:
                    task.cancel()
                self._tasks[:1] = [asyncio.create_task(self._watch(None))]
            try:
                await self._report()
            except Exception:  # a bug here must not end the reports: told, and on
                logger.exception("rate limit shares: a report failed")

    async def _report(self) -> None:
        division, reporter = self.division, self._reporter
        stats = self._client.rate_limit_stats()
        if division is None or reporter is None or stats is None:
            return
        report = reporter.report(stats, self._clock())
        try:
            if self._away:  # a restarted broker lost the bucket (kept in memory): again
                self._kv = await self._bucket()
            await self._kv.put(self._key, report_body(report))  # type: ignore[union-attr]
        except Exception as exc:  # the broker is away: no new part on stale reports
            logger.debug("rate limit shares: could not report (%s)", type(exc).__name__)
            self._away = True
            return
        if self._away:  # the others were not silent: this worker could not hear them
            self._away = False
            division.touch()
        division.heard(division.me, report)
        self._give(division)  # a member gone silent

    def _give(self, division: Division) -> None:
        # A change of members is given to the limiter at once: the others hear a joiner
        # within milliseconds of its first report, not at their next beat.
        part = division.part()
        part = None if part is None else min(part, _MOST)  # liars may sum past it
        self._client.share_rate_limit(part, fleet_size=division.size)

    async def _watch(self, first: asyncio.Future[None] | None) -> None:
        division, kv = self.division, self._kv
        if division is None or kv is None:  # not started
            return
        try:
            watcher = await _open_watch(kv, self._prefix + "*")
        except Exception as exc:
            logger.debug("rate limit shares: no watch (%s)", type(exc).__name__)
            return
        try:
            async for entry in watcher:
                if self._stopping:
                    return
                if entry is None:  # every report there has come
                    if first is not None and not first.done():
                        first.set_result(None)
                    continue
                try:
                    self._hear(division, entry.key[len(self._prefix) :], entry)
                except Exception:  # a bug here must not end the watch: told, and on
                    logger.exception("rate limit shares: a report could not be heard")
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _hear(self, division: Division, who: str, entry: Any) -> None:
        if entry.operation in ("DEL", "PURGE"):
            division.left(who)
        elif who == division.me:
            self._heard_self, self._rewatched = self._clock(), False
            return  # our own is taken as we put it
        elif (report := parse_report(entry.value or b"")) is not None:
            division.heard(who, report)
        self._give(division)


async def _open_watch(kv: KeyValue, keys: str) -> KeyValue.KeyWatcher:
    # A cancel while the watch is being made (its subscription is, by then) must not
    # leave it behind on the connection: it is stopped once made, within a bound.
    opening = asyncio.ensure_future(kv.watch(keys))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(2.0):
                await (await opening).stop()  # type: ignore[no-untyped-call]
        raise


@contextlib.asynccontextmanager
async def shared_rate_limit(
    client: KlaviClient, js: JetStreamContext, *, who: str = "process"
) -> AsyncIterator[bool]:
    """
    Share *client*'s rate limit with every client of its Klavi account that shares it
    through this broker (`CancelWorker`s do, by default), for the length of the block.

    On entry *client* reports to the bucket and takes its part of what the others hold,
    before its first request; the others give theirs up within milliseconds.  On exit its
    report is deleted and the others take its part back.  Yields True when shared, False
    when *client* adapts alone (no account, no key-value on the broker, no permission,
    no limiter), which is logged once, naming this process as *who*.  One block per
    client (in two it is counted twice); a fixed cap is counted and keeps its cap.
    """
    sharing = SharedLimit(js, client, who=who)
    try:
        yield await sharing.start()
    finally:
        await sharing.stop()
