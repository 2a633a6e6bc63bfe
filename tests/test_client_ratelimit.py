"""
`KlaviClient(rate_limit=...)`: the client's one rate limiter on every request it sends.

Timing is checked two ways: with an injected clock and sleep (exact slots, no waiting),
and on the wire against the server's arrival times, only ever as lower bounds (a slow
machine makes arrivals later, never earlier), so nothing here can flake on load.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from klavi_async import (
    CancelFailed,
    CancelRequest,
    ClientCredentials,
    ErrorKind,
    KlaviClient,
    RateLimit,
    RateLimitedError,
    RateLimitStats,
    RetryPolicy,
)
from klavi_async._events import RateLimitWait, subscribed
from klavi_async._ratelimit import RateLimiter
from klavi_async._ratequeue import _CATCH_UP
from klavi_async._transport import Response, TransportFailure
from klavi_async.testing import KlaviEmulator

from .conftest import CPF, TOKEN, ServerFactory
from .fakes import CANCEL, Reply, ScriptedKlavi, Sent, json_response, mock_client
from .test_ratelimit import VirtualLoop, run as run_virtual

NO_BACKOFF = RetryPolicy(initial_backoff=0, jitter=False)

Answer = Callable[[Sent], "Response | TransportFailure | Awaitable[Response | TransportFailure]"]


def timed_client(
    loop: asyncio.AbstractEventLoop, answer: Answer, **kwargs: Any
) -> tuple[KlaviClient, list[tuple[float, Sent]]]:
    """A mock-transport client on *loop*'s (virtual) clock; the list gets (time, request)."""
    sends: list[tuple[float, Sent]] = []

    async def handler(sent: Sent) -> Response | TransportFailure:
        sends.append((loop.time(), sent))
        reply = answer(sent)
        if inspect.isawaitable(reply):
            reply = await reply
        return reply

    kwargs.setdefault("retry", NO_BACKOFF)
    client, _ = mock_client(handler, clock=loop.time, **kwargs)
    return client, sends


def ok(_: Sent) -> Response:
    return json_response(200, {"status": "CANCELED"})


def throttled(retry_after: str | None = None) -> Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return json_response(429, {"message": "slow down"}, **headers)


def scripted(*replies: Response | TransportFailure, latency: float = 0.0) -> Answer:
    """Answer with *replies* in turn, then 200; each after *latency* seconds (virtual)."""
    queue = list(replies)

    async def answer(_: Sent) -> Response | TransportFailure:
        if latency:
            await asyncio.sleep(latency)
        return queue.pop(0) if queue else json_response(200, {})

    return answer


def ids(sends: list[tuple[float, Sent]]) -> list[str]:
    return [sent.url.rsplit("/", 2)[-2] for _, sent in sends]


# -- the argument -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate_limit", "engaged", "allowed"),
    [
        (RateLimit(), False, None),
        (RateLimit(max_rate=80.0, min_rate=5.0), True, 80.0),
        (50.0, True, 50.0),
        (20, True, 20.0),
        (0.5, True, 0.5),
    ],
)
async def test_the_rate_limit_argument_forms(
    rate_limit: RateLimit | float, engaged: bool, allowed: float | None
) -> None:
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9", rate_limit=rate_limit) as klavi:
        stats = klavi.rate_limit_stats()
    assert stats == RateLimitStats(
        allowed_rate=allowed, throttle_events=0, wait_time=0.0, waits=0, engaged=engaged
    )


async def test_the_default_is_adaptive_and_unthrottled() -> None:
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9") as klavi:
        stats = klavi.rate_limit_stats()
    assert stats is not None and not stats.engaged and stats.allowed_rate is None


async def test_rate_limit_none_has_no_limiter_and_no_stats() -> None:
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9", rate_limit=None) as klavi:
        assert klavi.rate_limit_stats() is None


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (True, TypeError, "rate_limit must be a RateLimit, a number"),
        (False, TypeError, "got bool"),
        ("10", TypeError, "got str"),
        ([10], TypeError, "got list"),
        (0, ValueError, "rate_limit must be between 0.001 and 1,000,000 requests per second"),
        (-5.0, ValueError, "rate_limit must be between"),
        (1e7, ValueError, "rate_limit must be between"),
        (math.nan, ValueError, "between"),
        (math.inf, ValueError, "between"),
    ],
)
def test_a_bad_rate_limit_is_refused(value: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        KlaviClient(TOKEN, base_url="http://127.0.0.1:9", rate_limit=value)  # type: ignore[arg-type]


# -- Retry-After pauses the whole client --------------------------------------------------


@pytest.mark.parametrize("rate_limit", [RateLimit(min_rate=500.0), 1000.0], ids=["adaptive", "cap"])
async def test_a_run_of_refusals_holds_every_call_of_the_client(
    serve: ServerFactory, rate_limit: RateLimit | float
) -> None:
    # Eight 429s in a row: the server refuses whatever is sent.  Nothing more goes out
    # until the Retry-After has passed since the first refusal; then one probe, and once
    # it is accepted, the rest.
    pause = 0.4
    fake = ScriptedKlavi()
    throttle = Reply(429, {"message": "slow down"}, headers={"Retry-After": f"{pause}"})
    fake.on(CANCEL, *[throttle] * 8)
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=NO_BACKOFF, rate_limit=rate_limit) as klavi:
        burst = [
            asyncio.create_task(klavi.cancel_payment(f"pay-{i}", cancelled_by=CPF))
            for i in range(8)
        ]
        while (stats := klavi.rate_limit_stats()) is None or stats.throttle_events < 8:
            await asyncio.sleep(0.002)
        held = klavi.rate_limit_stats()
        first_refused = fake.cancels()[0].time  # the first 429 left the server after this
        others = [
            asyncio.create_task(klavi.cancel_payment(f"pay-{i}", cancelled_by=CPF))
            for i in range(8, 16)
        ]
        results = await asyncio.gather(*burst, *others)
        stats = klavi.rate_limit_stats()
    assert all(r.ok for r in results)
    assert held is not None and held.engaged
    arrivals = [s.time for s in fake.cancels()]
    assert len(arrivals) == 24  # eight 429s, their eight retries, eight others
    # Nothing reached the server inside the pause (5 ms: the client reads its clock a
    # little after the server).
    assert min(arrivals[8:]) >= first_refused + pause - 0.005
    assert stats is not None and stats.throttle_events == 8 and stats.wait_time > 0


# -- a fixed cap ---------------------------------------------------------------------------


def test_a_fixed_cap_spaces_requests_exactly() -> None:
    async def main(loop: VirtualLoop) -> None:
        client, sends = timed_client(loop, ok, rate_limit=10.0)
        async with client:
            results = await asyncio.gather(
                *(client.cancel_payment(f"pay-{i}", cancelled_by=CPF) for i in range(5))
            )
            stats = client.rate_limit_stats()
        assert all(r.ok for r in results)
        assert [round(t, 9) for t, _ in sends] == [0.0, 0.1, 0.2, 0.3, 0.4]
        assert stats is not None and stats.allowed_rate == 10.0 and stats.engaged
        assert stats.waits == 4 and stats.wait_time == pytest.approx(0.1 + 0.2 + 0.3 + 0.4)

    run_virtual(main)


async def test_a_fixed_cap_spaces_requests_on_the_wire(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, rate_limit=50.0) as klavi:
        requests = [CancelRequest(f"pay-{i}", CPF) for i in range(10)]
        results = [r async for r in klavi.cancel_many(requests, concurrency=10)]
    assert all(r.ok for r in results)
    arrivals = sorted(s.time for s in fake.cancels())
    # Ten sends, nine intervals of 20 ms (a head that wakes late may take its slot up to
    # _CATCH_UP back; the server stamps a request when its loop gets to it).
    assert arrivals[-1] - arrivals[0] >= 9 / 50 - _CATCH_UP - 0.01


def test_a_fixed_cap_is_not_lowered_by_throttles() -> None:
    async def main(loop: VirtualLoop) -> None:
        client, sends = timed_client(loop, scripted(throttled("0.5")), rate_limit=10.0)
        async with client:
            for i in range(3):
                assert (await client.cancel_payment(f"pay-{i}", cancelled_by=CPF)).ok
            stats = client.rate_limit_stats()
        # The 429 paused the client 0.5 s; the retry and the next ones then went at 10/s.
        assert [round(t, 9) for t, _ in sends] == [0.0, 0.5, 0.6, 0.7]
        assert stats is not None and stats.allowed_rate == 10.0 and stats.throttle_events == 1

    run_virtual(main)


# -- the adaptive rate and the stats -----------------------------------------------------


def test_stats_after_a_run_of_refusals() -> None:
    async def main(loop: VirtualLoop) -> None:
        replies = [json_response(200, {}) for _ in range(20)] + [throttled("1")] * 8
        answer = scripted(*replies, latency=0.01)  # 100 answers a second
        client, sends = timed_client(loop, answer, rate_limit=RateLimit(min_rate=2.0))
        async with client:
            results = await asyncio.gather(
                *(client.cancel_payment(f"pay-{i}", cancelled_by=CPF) for i in range(20)),
            )
            burst = [
                asyncio.create_task(client.cancel_payment(f"pay-{i}", cancelled_by=CPF))
                for i in range(20, 40)
            ]
            results += await asyncio.gather(*burst)
            stats = client.rate_limit_stats()
        assert all(r.ok for r in results)
        assert stats is not None and stats.engaged and stats.throttle_events == 8
        assert stats.waits >= 1 and stats.wait_time > 0
        first_refused = sends[20][0] + 0.01  # the first 429's answer
        # The burst of twenty went before any answer; after it, nothing in the pause.
        assert all(t >= first_refused + 1.0 - 1e-9 for t, _ in sends[40:])

    run_virtual(main)


def test_a_share_of_429s_lowers_the_rate_and_success_grows_it_again() -> None:
    async def main(loop: VirtualLoop) -> None:
        # 100 answers a second for 1.5 s, then one 429 in every five for a second (a rate
        # that is too high for the server, which answers the rest): the rate drops to
        # 0.7 x the accepted rate, and grows again once the 429s stop.
        throttling = (1.5, 2.5)
        count = itertools.count()

        async def answer(_: Sent) -> Response:
            await asyncio.sleep(0.01)
            if throttling[0] <= loop.time() < throttling[1] and next(count) % 5 == 0:
                return throttled()
            return json_response(200, {})

        client, _ = timed_client(loop, answer, rate_limit=RateLimit(min_rate=5.0))
        async with client:
            for i in range(150):
                await client.cancel_payment(f"warm-{i}", cancelled_by=CPF)
            assert client.rate_limit_stats().engaged is False  # type: ignore[union-attr]
            requests = (CancelRequest(f"pay-{i}", CPF) for i in range(100))
            async for result in client.cancel_many(requests, concurrency=4):
                assert result.ok
            lowered = client.rate_limit_stats()
            requests = (CancelRequest(f"more-{i}", CPF) for i in range(1500))
            async for result in client.cancel_many(requests, concurrency=16):
                assert result.ok
            later = client.rate_limit_stats()
        assert lowered is not None and lowered.engaged and lowered.allowed_rate is not None
        assert lowered.throttle_events >= 3
        assert later is not None and later.allowed_rate is not None
        assert later.allowed_rate > lowered.allowed_rate

    run_virtual(main)


def test_a_lone_429_changes_nothing_but_its_own_call() -> None:
    # One 429 among accepted answers says nothing about the server's rate: its call waits
    # out the Retry-After (capped by the policy), and every other call goes at once.
    async def main(loop: VirtualLoop) -> None:
        answer = scripted(throttled("86400"), latency=0.005)
        policy = RetryPolicy(initial_backoff=0, jitter=False, max_retry_after=2.0)
        client, sends = timed_client(loop, answer, rate_limit=RateLimit(), retry=policy)
        async with client:
            first = asyncio.create_task(client.cancel_payment("pay-0", cancelled_by=CPF))
            await asyncio.sleep(0.1)
            started = loop.time()
            for i in range(1, 400):
                assert (await client.cancel_payment(f"pay-{i}", cancelled_by=CPF)).ok
            elapsed = loop.time() - started
            assert (await first).ok
            stats = client.rate_limit_stats()
        assert ids(sends).count("pay-0") == 2
        retried = [t for t, sent in sends if "pay-0/" in sent.url][1]
        assert retried == pytest.approx(2.005)  # the Retry-After capped at max_retry_after
        assert elapsed == pytest.approx(399 * 0.005)  # nobody else waited
        assert stats is not None and not stats.engaged and stats.throttle_events == 1

    run_virtual(main)


# -- no request bypasses the limiter ---------------------------------------------------


def test_no_request_bypasses_the_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Retries, the 401 replay, reconciliation reads and status reads all take slots; status
    reads queue first, then retries and replays, then first requests.
    """
    acquired: list[float] = []
    priorities: list[int] = []
    original = RateLimiter.acquire

    async def counted(self: RateLimiter, max_wait: float = math.inf, *, priority: int = 0) -> bool:
        acquired.append(asyncio.get_running_loop().time())
        priorities.append(priority)
        return await original(self, max_wait, priority=priority)

    monkeypatch.setattr(RateLimiter, "acquire", counted)
    seen: Counter[str] = Counter()

    def answer(sent: Sent) -> Response:
        payment = sent.url.rsplit("/", 2)[-2]
        seen[payment] += 1
        if sent.url.endswith("/status"):
            return json_response(200, {"status": "PAYMENT_COMPLETED"})
        if payment in ("pay-retry", "pay-401") and seen[payment] == 1:
            return json_response(503 if payment == "pay-retry" else 401, {})
        if payment == "pay-refused":
            return json_response(416, {"statusCode": "NOPE"})
        return json_response(200, {})

    tokens = iter(["tok-1", "tok-2"])

    async def provider() -> str:
        return next(tokens)

    async def main(loop: VirtualLoop) -> None:
        client, sends = timed_client(loop, answer, token=provider, rate_limit=20.0)
        async with client:
            assert (await client.cancel_payment("pay-retry", cancelled_by=CPF)).ok
            assert (await client.cancel_payment("pay-401", cancelled_by=CPF)).ok
            refused = await client.cancel_payment("pay-refused", cancelled_by=CPF)
            status = await client.get_payment_status("pay-status")
        assert isinstance(refused, CancelFailed) and refused.kind is ErrorKind.NOT_CANCELLABLE
        assert status.status == "PAYMENT_COMPLETED"
        # retry (2), 401 + replay (2), refusal + reconciliation read (2), status read (1)
        assert [sent.method for _, sent in sends] == ["POST"] * 5 + ["GET"] * 2
        assert ids(sends) == ["pay-retry"] * 2 + ["pay-401"] * 2 + ["pay-refused"] * 2 + [
            "pay-status"
        ]
        times = [t for t, _ in sends]
        assert len(acquired) == len(times)  # every send asked for its slot ...
        assert all(a <= t for a, t in zip(acquired, times, strict=True))  # ... before it went
        assert priorities == [0, 1, 0, 1, 0, 2, 2]  # first, retry or replay, status read
        assert [round(b - a, 9) for a, b in itertools.pairwise(times)] == [0.05] * 6

    run_virtual(main)


def test_the_credentials_exchange_takes_no_slot() -> None:
    def answer(sent: Sent) -> Response:
        if sent.url.endswith("/auth"):
            return json_response(200, {"accessToken": "tok-x", "expiresIn": 300})
        return json_response(200, {})

    async def main(loop: VirtualLoop) -> None:
        credentials = ClientCredentials("ak", "sk-secret")
        client, sends = timed_client(loop, answer, token=credentials, rate_limit=1.0)
        async with client:
            assert (await client.cancel_payment("pay-1", cancelled_by=CPF)).ok
            stats = client.rate_limit_stats()
        assert [sent.url.rsplit("/", 1)[-1] for _, sent in sends] == ["auth", "cancel"]
        # At 1/s a slot for /auth would have held the cancel back a whole second.
        assert [t for t, _ in sends] == [0.0, 0.0]
        assert stats is not None and stats.waits == 0

    run_virtual(main)


# -- the deadline rule --------------------------------------------------------------------


def test_a_slot_past_the_deadline_is_rate_limited_and_sends_nothing() -> None:
    async def main(loop: VirtualLoop) -> None:
        policy = RetryPolicy(initial_backoff=0, jitter=False, deadline=0.5)
        client, sends = timed_client(loop, ok, rate_limit=1.0, retry=policy)
        async with client:
            first, second = await asyncio.gather(
                client.cancel_payment("pay-1", cancelled_by=CPF),
                client.cancel_payment("pay-2", cancelled_by=CPF),
            )
            with pytest.raises(RateLimitedError) as raised:
                await client.get_payment_status("pay-3")
        assert first.ok
        assert isinstance(second, CancelFailed)
        assert second.kind is ErrorKind.RATE_LIMITED and second.retryable
        assert second.http_status is None and not second.outcome_unknown
        assert second.retry_after == pytest.approx(1.0)  # the slot it would need, 1 s away
        assert second.attempts == 0 and second.history == ()  # no request was sent
        assert "rate limit" in second.message and "deadline" in second.message
        assert raised.value.retry_after == pytest.approx(1.0)
        assert raised.value.http_status is None
        assert ids(sends) == ["pay-1"]  # nothing else was sent
        assert loop.time() == 0.0  # and nobody waited for a slot it could not use

    run_virtual(main)


def test_a_hold_past_the_deadline_fails_later_calls_without_sending() -> None:
    async def main(loop: VirtualLoop) -> None:
        policy = RetryPolicy(initial_backoff=0, jitter=False, deadline=2.0)
        client, sends = timed_client(loop, scripted(*[throttled("5")] * 8), retry=policy)
        async with client:
            burst = await asyncio.gather(
                *(client.cancel_payment(f"pay-{i}", cancelled_by=CPF) for i in range(8))
            )
            later = await client.cancel_payment("pay-8", cancelled_by=CPF)
        for first in burst:
            assert isinstance(first, CancelFailed) and first.kind is ErrorKind.RATE_LIMITED
            assert first.http_status == 429 and first.retry_after == 5.0
        assert isinstance(later, CancelFailed) and later.kind is ErrorKind.RATE_LIMITED
        assert later.http_status is None and later.retry_after == pytest.approx(5.0)
        assert "pay-8" not in ids(sends)

    run_virtual(main)


def test_a_call_that_waited_emits_a_rate_limit_wait() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.events: list[Any] = []

        def wants(self, level: int) -> bool:
            return True

        def __call__(self, event: Any) -> None:
            self.events.append(event)

    async def main(loop: VirtualLoop) -> list[Any]:
        recorder = Recorder()
        with subscribed(recorder):
            client, _ = timed_client(loop, ok, rate_limit=4.0)
        async with client:
            await asyncio.gather(
                *(client.cancel_payment(f"pay-{i}", cancelled_by=CPF) for i in range(3))
            )
        return recorder.events

    events = run_virtual(main)
    waits = [e for e in events if isinstance(e, RateLimitWait)]
    assert sorted(round(e.delay, 9) for e in waits) == [0.25, 0.5]
    assert {e.call.payment_id for e in waits} == {"pay-1", "pay-2"}


def test_a_cancelled_call_gives_its_slot_back() -> None:
    async def main(loop: VirtualLoop) -> None:
        client, sends = timed_client(loop, ok, rate_limit=1.0)
        async with client:
            assert (await client.cancel_payment("pay-0", cancelled_by=CPF)).ok
            waiting = asyncio.create_task(client.cancel_payment("pay-1", cancelled_by=CPF))
            await asyncio.sleep(0.5)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert (await client.cancel_payment("pay-2", cancelled_by=CPF)).ok
        assert ids(sends) == ["pay-0", "pay-2"]
        assert [t for t, _ in sends] == [0.0, 1.0]  # pay-2 took the slot pay-1 left

    run_virtual(main)


# -- off ----------------------------------------------------------------------------------


def test_rate_limit_none_never_throttles() -> None:
    async def main(loop: VirtualLoop) -> None:
        first_tries = iter([throttled("3"), throttled("3")])

        def answer(sent: Sent) -> Response:
            if "pay-1/" in sent.url:
                return next(first_tries, None) or json_response(200, {})
            return json_response(200, {})

        client, sends = timed_client(loop, answer, rate_limit=None)
        async with client:
            first = asyncio.create_task(client.cancel_payment("pay-1", cancelled_by=CPF))
            await asyncio.sleep(1.0)  # inside the 429's Retry-After
            others = [client.cancel_payment(f"pay-{i}", cancelled_by=CPF) for i in range(2, 12)]
            results = [*await asyncio.gather(*others), await first]
        assert all(r.ok for r in results)
        # Only the throttled call waited (its retry loop honours Retry-After); the others
        # went at once, inside the pause a limiter would have imposed on them.
        assert [round(t, 9) for t, _ in sends] == [0.0] + [1.0] * 10 + [3.0, 6.0]

    run_virtual(main)


def test_transport_failures_feed_the_limiter_nothing() -> None:
    async def main(loop: VirtualLoop) -> None:
        failure = TransportFailure(ErrorKind.NETWORK, "connect failed", sent=False)
        client, sends = timed_client(loop, scripted(failure, failure))
        async with client:
            assert (await client.cancel_payment("pay-1", cancelled_by=CPF)).ok
            stats = client.rate_limit_stats()
        assert len(sends) == 3
        assert stats == RateLimitStats(
            allowed_rate=None, throttle_events=0, wait_time=0.0, waits=0, engaged=False,
            accepted_rate=1.0,  # the one answer, in the client's first second
        )  # fmt: skip

    run_virtual(main)


def test_a_throttle_whose_body_broke_off_still_counts() -> None:
    async def main(loop: VirtualLoop) -> None:
        cut = Response(
            429, CIMultiDict({"Retry-After": "2"}), b"", cut=(ErrorKind.NETWORK, "broke off")
        )
        client, sends = timed_client(loop, scripted(*[cut] * 8))
        async with client:
            burst = [
                asyncio.create_task(client.cancel_payment(f"pay-{i}", cancelled_by=CPF))
                for i in range(8)
            ]
            await asyncio.sleep(0.5)
            assert (await client.cancel_payment("pay-8", cancelled_by=CPF)).ok
            await asyncio.gather(*burst)
            stats = client.rate_limit_stats()
        assert stats is not None and stats.throttle_events == 8
        assert min(t for t, _ in sends[8:]) >= 2.0  # eight in a row: a hold, waited out

    run_virtual(main)


# -- against the emulator's TPS limit ----------------------------------------------------


async def test_a_batch_against_a_tps_limit_ends_with_no_rate_limited_failure() -> None:
    async with KlaviEmulator(tps_limit=100) as emulator:
        payments = [emulator.add_payment("PAYMENT_PENDING") for _ in range(300)]
        credentials = ClientCredentials(emulator.access_key, emulator.secret_key)
        async with KlaviClient(credentials, base_url=emulator.url) as klavi:
            requests = [CancelRequest(pid, CPF) for pid in payments]
            results = [r async for r in klavi.cancel_many(requests, concurrency=32)]
            stats = klavi.rate_limit_stats()
        cancels = [r for r in emulator.requests if r.route == "cancel"]
        assert all(emulator.effects[pid] == 1 for pid in payments)
    assert len(results) == 300
    assert Counter(r.kind for r in results if isinstance(r, CancelFailed)) == Counter()
    # The first, unthrottled second overfills the window (the 429s tell the client the
    # limit).  The limiter's own share of 429s at a steady limit is at most 5 %, held in
    # virtual time by test_ratelimit's steady-limit simulations; here the emulator shares
    # the client's event loop, and a stall on a busy machine (CI: 5.6 % of 213) sends
    # several paced requests at once, so the wire may show more than the limiter's part.
    later = [r for r in cancels if r.time >= cancels[0].time + 1.0]
    assert sum(r.status == 429 for r in later) / len(later) <= 0.10
    assert stats is not None and stats.engaged and stats.throttle_events >= 1


# -- fault shapes on the wire: a storm, noise, a huge Retry-After -------------------------


class FaultyKlavi:
    """A loopback Klavi answering 429s by a rule: a storm in time, or noise by attempt."""

    def __init__(
        self,
        *,
        storm: float = 0.0,
        noise_every: int = 0,
        retry_after: str = "1",
    ) -> None:
        self.storm, self.noise_every, self.retry_after = storm, noise_every, retry_after
        self.started: float | None = None
        self.attempts: Counter[str] = Counter()
        self.log: list[tuple[float, int]] = []

    async def cancel(self, request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        if self.started is None:
            self.started = now
        payment = request.match_info["id"]
        self.attempts[payment] += 1
        refused = now - self.started < self.storm or (
            self.noise_every
            and self.attempts[payment] == 1
            and int(payment.rsplit("-", 1)[1]) % self.noise_every == 0
        )
        status = 429 if refused else 200
        self.log.append((now, status))
        headers = {"Retry-After": self.retry_after} if refused else {}
        return web.json_response(
            {} if not refused else {"message": "slow"}, status=status, headers=headers
        )

    async def start(self, serve: ServerFactory) -> str:
        app = web.Application()
        app.router.add_post("/payment/customer/v1/instant/payments/{id}/cancel", self.cancel)
        return await serve(app)


async def _batch(base: str, n: int, **options: Any) -> tuple[list[Any], float]:
    started = asyncio.get_running_loop().time()
    async with KlaviClient(TOKEN, base_url=base, **options) as klavi:
        requests = (CancelRequest(f"pay-{i}", CPF) for i in range(n))
        results = [r async for r in klavi.cancel_many(requests, concurrency=64)]
    return results, asyncio.get_running_loop().time() - started


async def test_a_storm_that_ends_costs_only_the_storm(serve: ServerFactory) -> None:
    # Every request refused for 3 s, then an open Klavi: the default client holds (one
    # probe a Retry-After) instead of spending its calls' attempts.  (What the storm costs
    # in time is measured on virtual time, `test_ratelimit.test_a_storm_that_ends_costs_
    # only_the_storm`: a wall clock on a busy machine cannot tell.)
    klavi = FaultyKlavi(storm=3.0)
    results, _ = await _batch(await klavi.start(serve), 1500)
    assert all(r.ok for r in results) and len(results) == 1500
    during = [t for t, status in klavi.log if status == 429]
    assert len(during) <= 64 + 10  # the first burst, then a probe a second


async def test_one_off_429s_cost_next_to_nothing(serve: ServerFactory) -> None:
    # One 429 (Retry-After: 0) on the first attempt of every fifth payment: a gateway's
    # noise.  No cancel fails and none is refused by the limiter: each noisy payment is
    # sent twice, the others once.  (What it costs in time is measured on virtual time,
    # `test_ratelimit.test_one_off_429s_cost_next_to_nothing`: a wall clock on a busy
    # machine cannot tell 1.3x.)
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    klavi = FaultyKlavi(noise_every=5, retry_after="0")
    results, _ = await _batch(await klavi.start(serve), 1000, retry=policy)
    assert all(r.ok for r in results) and len(results) == 1000
    assert len(klavi.log) == 1000 + 200
    assert sum(status == 429 for _, status in klavi.log) == 200


async def test_a_huge_retry_after_pauses_only_its_call_up_to_max_retry_after(
    serve: ServerFactory,
) -> None:
    klavi = FaultyKlavi(noise_every=1_000_000, retry_after="86400")  # pay-0 only
    base = await klavi.start(serve)
    policy = RetryPolicy(max_retry_after=2.0)
    async with KlaviClient(TOKEN, base_url=base, retry=policy) as client:
        first = asyncio.create_task(client.cancel_payment("pay-0", cancelled_by=CPF))
        while not klavi.log:
            await asyncio.sleep(0.005)
        others = [await client.cancel_payment(f"pay-{i}", cancelled_by=CPF) for i in range(1, 20)]
        assert not first.done()  # the others went while pay-0 waits out its Retry-After
        result = await first
    assert all(r.ok for r in others)
    assert result.ok and result.attempts == 2
    assert 2.0 <= result.elapsed < 30.0  # the cap, not a day


async def test_the_limiter_pauses_at_most_the_policys_max_retry_after() -> None:
    # The policy's cap reaches the limiter's own pauses (probes without a Retry-After).
    policy = RetryPolicy(max_retry_after=0.5)
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9", retry=policy) as klavi:
        limiter = klavi._shared.limiter
        assert limiter is not None and limiter._max_pause == 0.5


# -- a part of a shared limit ---------------------------------------------------------------


async def test_a_part_of_a_shared_limit_is_taken_and_shown() -> None:
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9") as klavi:
        klavi.share_rate_limit(40.0, fleet_size=3)
        stats = klavi.rate_limit_stats()
        assert stats is not None and stats.engaged and stats.allowed_rate == 40.0
        assert (stats.fleet_size, stats.fleet_part) == (3, 40.0)
        klavi.share_rate_limit(None, fleet_size=1)  # nothing new: the rate stays
        stats = klavi.rate_limit_stats()
        assert stats is not None and stats.allowed_rate == 40.0
        assert (stats.fleet_size, stats.fleet_part) == (1, 40.0)


async def test_a_fixed_cap_and_no_limiter_ignore_a_part() -> None:
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9", rate_limit=20.0) as klavi:
        klavi.share_rate_limit(400.0, fleet_size=2)
        stats = klavi.rate_limit_stats()
        assert stats is not None and stats.allowed_rate == 20.0
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9", rate_limit=None) as klavi:
        klavi.share_rate_limit(400.0, fleet_size=2)
        assert klavi.rate_limit_stats() is None


@pytest.mark.parametrize(
    ("part", "size", "error"),
    [
        (0.0, 1, ValueError),
        (math.nan, 1, ValueError),
        (math.inf, 1, ValueError),
        (True, 1, TypeError),
        ("5", 1, TypeError),
        (5.0, 0, ValueError),
        (5.0, 1.5, TypeError),
    ],
)
async def test_a_bad_part_is_refused(part: object, size: object, error: type[Exception]) -> None:
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9") as klavi:
        with pytest.raises(error):
            klavi.share_rate_limit(part, fleet_size=size)  # type: ignore[arg-type]
        stats = klavi.rate_limit_stats()
        assert stats is not None and not stats.engaged and stats.fleet_size is None


def test_a_part_given_during_a_hold_is_where_the_hold_ends() -> None:
    async def main(loop: VirtualLoop) -> None:
        client, sends = timed_client(loop, scripted(*[throttled("1")] * 8))
        async with client:
            burst = [
                asyncio.create_task(client.cancel_payment(f"pay-{i}", cancelled_by=CPF))
                for i in range(8)
            ]
            for _ in range(1000):  # a run of refusals: the client holds
                if len(sends) >= 8:
                    break
                await asyncio.sleep(0.01)
            client.share_rate_limit(30.0, fleet_size=2)
            assert all(r.ok for r in await asyncio.gather(*burst))
            stats = client.rate_limit_stats()
        assert len(sends) == 16
        assert stats is not None and stats.fleet_part == 30.0
        assert stats.allowed_rate is not None and stats.allowed_rate <= 30.0

    run_virtual(main)
