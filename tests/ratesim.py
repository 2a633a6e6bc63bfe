"""
A virtual-time harness for the rate limiter: clients, their calls' retry loops and a fake
Klavi whose refusals follow a script (a window limit that moves, storms, noise).

Each client is one `RateLimiter` (the client's) with `concurrency` callers pulling
payments from its own queue.  A call is the client's retry loop in miniature: the
`RetryPolicy`'s backoff and `Retry-After` (capped by `max_retry_after`, which is also what
the limiter is told), `max_attempts`, the deadline (a slot past it fails the call
RATE_LIMITED, nothing sent) and the shared `RetryBudget`.  Time is the `VirtualLoop`'s, so
a minute takes milliseconds and nothing depends on the machine's load.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import selectors
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from klavi_async import RetryBudget, RetryPolicy
from klavi_async._ratelimit import PRIORITY_FIRST, PRIORITY_RETRY, RateLimit, RateLimiter
from klavi_async.nats._division import BEAT, Division, Report
from klavi_async.nats._sharedlimit import Reporter


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: a wait for the next timer moves the loop's clock to it instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("deadlock: nothing scheduled and nothing ready")
        self.now += max(timeout, 0.0)
        return super().select(0)


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: `asyncio.sleep(60)` takes microseconds."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run(main: Callable[[VirtualLoop], Coroutine[Any, Any, Any]]) -> Any:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


def late_sleep(lateness: float) -> Callable[[float], Coroutine[Any, Any, None]]:
    """A sleep that wakes `lateness` seconds late, as a busy event loop does."""

    async def sleep(delay: float) -> None:
        await asyncio.sleep(delay + lateness)

    return sleep


@dataclass
class Server:
    """
    The fake Klavi.  `limit(t)` is the accepted requests in any one second (None: no
    limit); `storms` are spans in which every request is refused; `noise(payment,
    attempt)` says whether a request is refused although under the limit.  Refusals are
    429s with `retry_after` (None: no header), or 529s with `status=529`.
    """

    limit: Callable[[float], float | None] = lambda _: None
    storms: tuple[tuple[float, float], ...] = ()
    noise: Callable[[int, int], bool] = lambda _payment, _attempt: False
    retry_after: float | None = 1.0
    status: int = 429
    recent: deque[float] = field(default_factory=deque)
    log: list[tuple[float, int, bool]] = field(default_factory=list)

    def admit(self, now: float, who: int, payment: int, attempt: int) -> bool:
        if any(start <= now < end for start, end in self.storms) or self.noise(payment, attempt):
            self.log.append((now, who, False))
            return False
        while self.recent and now - self.recent[0] >= 1.0:
            self.recent.popleft()
        limit = self.limit(now)
        accepted = limit is None or len(self.recent) < limit
        if accepted:
            self.recent.append(now)
        self.log.append((now, who, accepted))
        return accepted

    def accepted(self, who: int | None, start: float, end: float) -> int:
        return sum(
            1 for t, w, ok in self.log if ok and start <= t < end and (who is None or w == who)
        )

    def share_refused(self, start: float = 0.0, end: float = float("inf")) -> float:
        answers = [ok for t, _, ok in self.log if start <= t < end]
        return answers.count(False) / max(len(answers), 1)


@dataclass
class Client:
    payments: int | None = None
    """How many cancels (None: keep going until `until`)."""
    concurrency: int = 64
    start: float = 0.0
    until: float = float("inf")
    lateness: float = 0.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: RateLimit | None = field(default_factory=RateLimit)
    # what happened
    results: Counter[str] = field(default_factory=Counter)
    finished: float = 0.0
    limiter: RateLimiter | None = None
    division: Division | None = None
    parts: list[tuple[float, float]] = field(default_factory=list)
    """(time, part) each time the fleet's division gave this client a part."""


class Board:
    """
    The fleet's shared reports (the KV bucket), delivered to every member at once; a
    member that stops deletes its report.  `frozen` members stop reporting (SIGSTOP).
    """

    def __init__(self) -> None:
        self.members: dict[str, Client] = {}
        self.reports: dict[str, Report] = {}

    def put(self, who: str, report: Report) -> None:
        division = self.members[who].division
        if who not in self.reports and division is not None:  # a watch starts with them all
            for other, last in self.reports.items():
                division.heard(other, last)
        self.reports[who] = report
        for client in self.members.values():
            if client.division is not None:
                client.division.heard(who, report)
                give_part(client)

    def delete(self, who: str) -> None:
        self.members.pop(who, None)
        self.reports.pop(who, None)
        for client in self.members.values():
            if client.division is not None:
                client.division.left(who)
                give_part(client)


def give_part(client: Client) -> None:
    """What a worker does on hearing a change: give its limiter its part at once."""
    limiter, division = client.limiter, client.division
    if limiter is None or division is None:
        return
    part = division.part()
    if part is not None:
        limiter.share(part, division.size)
        client.parts.append((asyncio.get_running_loop().time(), part))


async def report_every_beat(loop: VirtualLoop, board: Board, client: Client, who: str) -> None:
    """What `CancelWorker` does with the bucket: report, hear, give the limiter its part."""
    limiter, division = client.limiter, client.division
    assert limiter is not None and division is not None
    reporter = Reporter(loop.time())
    board.members[who] = client
    try:
        while loop.time() < client.until:
            board.put(who, reporter.report(limiter.stats(), loop.time()))
            give_part(client)  # a member gone silent
            await asyncio.sleep(BEAT)
    finally:
        board.delete(who)


def simulate(server: Server, clients: list[Client], *, seed: int = 1, shared: bool = False) -> None:
    """
    Run every client against *server* to the end of its payments (or its `until`);
    *shared*: the clients share the limit through a `Board`, as a fleet's workers do.
    """
    rng = random.Random(seed)
    board = Board()

    async def call(
        loop: VirtualLoop, client: Client, budget: RetryBudget, who: int, payment: int
    ) -> str:
        limiter, policy = client.limiter, client.policy
        started = loop.time()
        budget.record_attempt()
        for attempt in range(1, policy.max_attempts + 1):
            if limiter is not None and limiter.engaged:
                remaining = policy.deadline - (loop.time() - started)
                priority = PRIORITY_RETRY if attempt > 1 else PRIORITY_FIRST
                if not await limiter.acquire(remaining, priority=priority):
                    return "rate_limited (limiter)"
            sent = loop.time()
            await asyncio.sleep(0.001 + rng.random() * 0.003)
            accepted = server.admit(loop.time(), who, payment, attempt)
            await asyncio.sleep(0.001 + rng.random() * 0.002)
            retry_after = server.retry_after
            if retry_after is not None:
                retry_after = min(retry_after, policy.max_retry_after)
            if limiter is not None:
                limiter.on_response(200 if accepted else server.status, retry_after, sent)
            if accepted:
                return "ok"
            if attempt == policy.max_attempts:
                return "rate_limited (attempts)"
            wait = policy.backoff(attempt, rng.random)
            if retry_after is not None:
                wait = max(wait, retry_after)
            if loop.time() - started + wait >= policy.deadline:
                return "rate_limited (deadline)"
            if not budget.try_acquire():
                return "rate_limited (budget)"
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def caller(
        loop: VirtualLoop, client: Client, budget: RetryBudget, who: int, queue: Any
    ) -> None:
        while loop.time() < client.until:
            payment = next(queue, None)
            if payment is None:
                return
            result = await call(loop, client, budget, who, payment)
            client.results[result] += 1
            if result == "rate_limited (limiter)":
                await asyncio.sleep(0.01)  # a worker moves on to its next message

    async def one(loop: VirtualLoop, client: Client, who: int) -> None:
        await asyncio.sleep(client.start)
        if client.rate_limit is not None:
            client.limiter = RateLimiter(
                client.rate_limit,
                clock=loop.time,
                sleep=late_sleep(client.lateness) if client.lateness else asyncio.sleep,
            )
        budget = RetryBudget(clock=loop.time)
        count = range(client.payments) if client.payments is not None else itertools.count()
        queue = iter(who * 10_000_000 + i for i in count)
        beat = None
        if shared and client.limiter is not None:
            client.division = Division(str(who), loop.time)
            beat = asyncio.ensure_future(report_every_beat(loop, board, client, str(who)))
        await asyncio.gather(
            *(caller(loop, client, budget, who, queue) for _ in range(client.concurrency))
        )
        client.finished = loop.time()
        if beat is not None:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def main(loop: VirtualLoop) -> None:
        await asyncio.gather(*(one(loop, client, who) for who, client in enumerate(clients)))

    run(main)
