"""
A client-side rate limiter: send at the rate the server accepts, not into its 429s.

`RateLimit` is the frozen setting; `RateLimiter` the runtime state, one per client and
shared by all its calls.  The arithmetic is synchronous and separate from the waiting:
`_Cubic` decides the allowed rate, `_Meter` measures the accepted rate, and the limiter
hands out send times by virtual scheduling (GCRA): the next request may go at
`max(tat, pause_until)` and moves `tat` on by `1 / rate`.

Not botocore's CUBIC as is: with a Retry-After pause on every throttle, its 4-7 s cycles
spend a second in each pause and land at 0.7-0.8 of the limit.  Here the drop to `beta`
is won back within the pause, `w_max` sits just under the throttled rate, the probe past
it is slow (cycles of 10-20 s), and the answers to one burst count as one decrease.

Waiters queue FIFO and only the head sleeps, to its own slot; taking it passes the turn
to the next one.  So there is one timer however many wait (no thundering herd), the
order is exactly arrival order, and a rate change or a pause reaches every queued call
at once, since each head computes its slot when it gets the turn.

The client (`_attempt`) takes a slot before every request it sends for cancels and status
reads when the limiter is `engaged` (a slot past the deadline fails the attempt as
RATE_LIMITED, nothing sent), and reports every HTTP answer with `on_response()`.

Until the first throttle an adaptive limiter without `max_rate` is not engaged: the
request path pays one attribute check and `on_success()` one clock read.  A first 429
with fewer than `_EVIDENCE` answers accepted in the last second only pauses.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from attrs import field, frozen

__all__ = ["RateLimit", "RateLimitStats", "RateLimiter"]

_BETA = 0.7
"""Multiplicative decrease on a throttle (CUBIC's, and botocore's)."""
_C_RECOVER = 12.0
"""CUBIC's C (requests/s per s^3) below `w_max`: back in about 1-2 s, mostly inside the
Retry-After pause that came with the throttle.  (botocore's 0.4 takes 4-7 s at 100-500/s.)"""
_C_PROBE = 0.0005
"""CUBIC's C above `w_max`: a slow probe (+0.5/s after 10 s, +13.5/s after 30 s), since
every probe past the limit costs a whole-client pause.  Both constants are absolute, not
proportional to the rate: equal growth for unequal flows is what drifts them to fair
shares (a proportional growth would keep any ratio forever)."""
_MARGIN = 0.03
"""`w_max` sits this much below the rate that was throttled: the last good rate."""
_BUCKET = 0.5
"""The meter's bucket width in seconds."""
_CATCH_UP = 0.05
"""How far back (s) a late-waking queued call may take its slot (else -1/3 of 500/s)."""
_EVIDENCE = 5.0
"""Accepted answers in the last second a first decrease needs; a 429 before only pauses."""


def _rate(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of requests per second, got {value!r}")
    rate = float(value)
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return rate


def _optional_rate(value: object) -> float | None:
    return None if value is None else _rate(value, "max_rate")


def _min_rate(value: object) -> float:
    return _rate(value, "min_rate")


@frozen
class RateLimit:
    """
    How fast a client may send (frozen).  Adaptive (the default): unthrottled until the
    first 429 or 529, then a CUBIC-style rate that drops on throttles and grows back, never
    above `max_rate` (when given) nor below `min_rate`.  `adaptive=False`: a fixed cap.
    """

    max_rate: float | None = field(default=None, converter=_optional_rate)
    adaptive: bool = field(default=True, kw_only=True)
    min_rate: float = field(default=1.0, kw_only=True, converter=_min_rate)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {self.adaptive!r}")
        if not self.adaptive and self.max_rate is None:
            raise ValueError(
                "RateLimit(adaptive=False) needs max_rate; pass rate_limit=None to switch "
                "rate limiting off"
            )
        if self.max_rate is not None and self.min_rate > self.max_rate:
            raise ValueError(f"min_rate ({self.min_rate:g}) exceeds max_rate ({self.max_rate:g})")

    @classmethod
    def coerce(cls, value: RateLimit | float | None) -> RateLimit | None:
        """A client's `rate_limit=` argument as a setting: a number is a fixed cap, None off."""
        if value is None or isinstance(value, RateLimit):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                "rate_limit must be a RateLimit, a number of requests per second or None, "
                f"got {type(value).__name__}"
            )
        rate = _rate(value, "rate_limit")
        return cls(rate, adaptive=False, min_rate=min(1.0, rate))


@frozen(kw_only=True)
class RateLimitStats:
    """A snapshot of a client's rate limiter."""

    allowed_rate: float | None
    """Requests per second allowed now; None while sending is unthrottled."""
    throttle_events: int
    """429 and 529 responses seen."""
    wait_time: float
    """Seconds calls spent waiting for a slot, summed over calls."""
    waits: int
    """Requests that had to wait for their slot."""
    engaged: bool
    """Whether requests go through the limiter's schedule (True from the first throttle on)."""


class _Meter:
    """
    Accepted responses per second over the last second, from 0.5 s buckets: a sliding sum,
    since an empty bucket (a pause) would cut botocore's 0.8-weighted average by 80 %.
    """

    __slots__ = ("count", "end", "prev", "prev2")

    def __init__(self, now: float) -> None:
        self.end = now + _BUCKET
        self.count = self.prev = self.prev2 = 0

    def roll(self, now: float) -> None:
        steps = int((now - self.end) / _BUCKET) + 1
        self.prev2, self.prev = (self.prev, self.count) if steps == 1 else (0, 0)
        if steps == 2:
            self.prev2 = self.count
        self.count = 0
        self.end += steps * _BUCKET

    def rate(self, now: float) -> float:
        if now >= self.end:
            self.roll(now)
        # The current bucket covers `into` seconds; the one before last fills up the second.
        into = now - (self.end - _BUCKET)
        return self.count + self.prev + self.prev2 * (1.0 - into / _BUCKET)


class _Cubic:
    """
    The allowed rate: `C * (t - K)**3 + w_max`, `t` seconds after the last decrease.

    A decrease takes the rate to `beta` times the rate at the throttle and sets `w_max`
    just below that rate (lower still, by CUBIC's fast convergence, when it is below the
    previous `w_max`: a flow that lost ground yields some more); `K` is when the curve is
    back at `w_max`.  Concave and quick up to it (`_C_RECOVER`), flat around it, then
    convex and slow past it (`_C_PROBE`).
    """

    __slots__ = ("k", "max_rate", "min_rate", "rate", "t0", "w_max")

    def __init__(self, min_rate: float, max_rate: float) -> None:
        self.min_rate, self.max_rate = min_rate, max_rate
        self.rate = max_rate
        self.w_max = self.t0 = self.k = 0.0

    def decrease(self, now: float, current: float) -> None:
        current = min(current, self.max_rate)
        w_max = current * (1 - _MARGIN)
        if current < self.w_max:
            w_max = min(w_max, current * (1 + _BETA) / 2)
        self.w_max = w_max
        self.rate = max(self.min_rate, current * _BETA)
        self.t0 = now
        self.k = math.cbrt(max(w_max - self.rate, 0.0) / _C_RECOVER)

    def grow(self, now: float, cap: float) -> float:
        t = now - self.t0 - self.k
        target = (_C_RECOVER if t < 0 else _C_PROBE) * t**3 + self.w_max
        # Never more than `cap` (twice the accepted rate) above where it is: an idle
        # spell does not let the curve run away, and a pause does not pull it down.
        target = min(target, max(self.rate, cap), self.max_rate)
        self.rate = max(target, self.min_rate, self.rate)
        return self.rate


class _Waiter:
    __slots__ = ("deadline", "future", "since")

    def __init__(self, since: float, deadline: float, future: asyncio.Future[bool] | None):
        self.since, self.deadline, self.future = since, deadline, future


class RateLimiter:
    """
    One client's limiter: every request takes a slot.  Strictly private.

    Not thread-safe: one limiter per event loop.  `clock` must be monotonic; `sleep` is
    awaited by the one call at the head of the queue.
    """

    __slots__ = (
        "_adaptive",
        "_clock",
        "_cubic",
        "_last_decrease",
        "_measured_at",
        "_meter",
        "_pause_until",
        "_sleep",
        "_tat",
        "_throttles",
        "_wait_time",
        "_waiters",
        "_waits",
        "engaged",
    )

    def __init__(
        self,
        config: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._clock, self._sleep = clock, sleep
        self._adaptive = config.adaptive
        max_rate = math.inf if config.max_rate is None else config.max_rate
        self._cubic = _Cubic(config.min_rate, max_rate)
        self.engaged: bool = config.max_rate is not None
        """Read before every request: False means send at once, without awaiting anything."""
        now = clock()
        self._meter = _Meter(now)
        self._tat = self._pause_until = self._last_decrease = -math.inf
        self._measured_at: float | None = None
        self._waiters: deque[_Waiter] = deque()
        self._throttles = self._waits = 0
        self._wait_time = 0.0

    @property
    def rate(self) -> float | None:
        """The allowed rate in requests per second (None while unthrottled)."""
        rate = self._cubic.rate
        return rate if self.engaged and rate != math.inf else None

    def _slot(self, now: float) -> float:
        return max(self._tat, self._pause_until, now)

    def delay(self) -> float:
        """Seconds until a request queued now could go (what a refused call reports)."""
        now = self._clock()
        interval = 1.0 / self._cubic.rate if self.engaged else 0.0
        return self._slot(now) + len(self._waiters) * interval - now

    async def acquire(self, max_wait: float = math.inf) -> bool:
        """
        Wait for a slot and take it; False, at once and taking nothing, if it would come
        more than `max_wait` seconds from now (or, for a queued call, past that deadline).

        A cancelled call leaves the queue and passes its turn on; its slot goes to the next.
        """
        if not self.engaged:
            return True
        now = self._clock()
        if not self._waiters and self._slot(now) <= now:
            self._take(now)
            return True
        if self.delay() > max_wait:
            return False
        future = asyncio.get_running_loop().create_future() if self._waiters else None
        waiter = _Waiter(now, now + max_wait, future)
        self._waiters.append(waiter)
        self._waits += 1
        try:
            if future is not None and not await future:
                return False
            while True:
                now = self._clock()
                slot = max(self._tat, self._pause_until, now - _CATCH_UP)
                if slot <= now:
                    self._take(slot)
                    return True
                if slot > waiter.deadline:
                    return False
                await self._sleep(slot - now)
        finally:
            self._wait_time += self._clock() - waiter.since
            self._leave(waiter)

    def _take(self, slot: float) -> None:
        # A queued call passes its scheduled slot, not its late wake-up time (up to
        # `_CATCH_UP`).  A call that did not wait passes now: an idle spell earns no burst.
        self._tat = slot + 1.0 / self._cubic.rate

    def _leave(self, waiter: _Waiter) -> None:
        waiters = self._waiters
        if waiters and waiters[0] is waiter:
            waiters.popleft()
            if waiters:
                future = waiters[0].future
                if future is not None and not future.done():
                    future.set_result(True)
        elif waiter in waiters:
            waiters.remove(waiter)

    def _refuse_late_waiters(self) -> None:
        # After a decrease or a pause, queued calls whose slot now falls past their
        # deadline are told at once rather than when their turn comes.
        now = self._clock()
        interval = 1.0 / self._cubic.rate
        slot = self._slot(now)
        kept: deque[_Waiter] = deque()
        for waiter in self._waiters:
            future = waiter.future
            late = slot + len(kept) * interval > waiter.deadline
            if kept and late and future is not None and not future.done():
                future.set_result(False)
            else:
                kept.append(waiter)
        self._waiters = kept

    def on_throttle(
        self, retry_after: float | None = None, *, sent_at: float | None = None
    ) -> None:
        """
        Count a 429/529: pause for `retry_after`, and (adaptive) lower the rate.

        Only a request sent after the last decrease can cause another one: the burst of
        throttles answering requests sent at the old rate is one signal, not many.
        """
        now = self._clock()
        self._throttles += 1
        if retry_after is not None and retry_after > 0:
            self._pause_until = max(self._pause_until, now + retry_after)
        if sent_at is None:
            fresh = now - self._last_decrease >= _BUCKET
        else:
            fresh = sent_at >= self._last_decrease
        if not self._adaptive:
            pass  # a fixed cap only pauses
        elif fresh:
            measured = self._cubic.rate == math.inf  # no rate yet: read the accepted one
            current = self._meter.rate(now) if measured else self._cubic.rate
            if not measured or current >= _EVIDENCE:
                self._cubic.decrease(now, max(current, self._cubic.min_rate))
                self._last_decrease, self._measured_at = now, (now if measured else None)
            self.engaged = True  # the pause applies either way
        elif self._measured_at is not None:
            self._complete_first_reading(now)
        if self._waiters:
            self._refuse_late_waiters()

    def on_response(self, status: int, retry_after: float | None, sent_at: float) -> None:
        """Count an HTTP response: a 429 or 529 is a throttle, any other status a success."""
        if status == 429 or status == 529:
            self.on_throttle(retry_after, sent_at=sent_at)
        else:
            self.on_success()

    def on_success(self) -> None:
        """Count a response that was not a throttle; the allowed rate may grow."""
        now = self._clock()
        meter = self._meter
        if now >= meter.end:
            meter.roll(now)
        meter.count += 1
        if self.engaged and self._adaptive:
            if self._measured_at is not None:
                self._complete_first_reading(now)
            self._cubic.grow(now, 2.0 * meter.rate(now))

    def _complete_first_reading(self, now: float) -> None:
        # Answers to the first burst still arriving within a second complete the first reading.
        if now - self._measured_at > 1.0:  # type: ignore[operator]  # the caller checked
            self._measured_at = None
            return
        reading = self._meter.rate(now)
        if reading * (1 - _MARGIN) > self._cubic.w_max:
            self._cubic.decrease(self._measured_at, reading)  # type: ignore[arg-type]

    def stats(self) -> RateLimitStats:
        """The limiter's counters now."""
        return RateLimitStats(
            allowed_rate=self.rate,
            throttle_events=self._throttles,
            wait_time=self._wait_time,
            waits=self._waits,
            engaged=self.engaged,
        )
