"""
A client-side rate limiter: send at the rate the server accepts, not into its 429s.

`RateLimit` is the frozen setting; `RateLimiter` the runtime state, one per client and
shared by all its calls.  The arithmetic lives in `_ratecurve` (what rate when); here is
the waiting.  Send times are handed out by virtual scheduling (GCRA): the next request may
go at `max(tat, pause_until)`, and taking it moves `tat` on by one interval.

An adaptive limiter has three phases:

- free: until the first 429 (or 529) it is not `engaged` without a `max_rate`, and the
  request path pays one attribute check and `on_success()` one clock read;
- ramp: a first throttle pauses for its Retry-After and starts a `_Ramp` from `min_rate`
  at the end of the pause, doubling every 0.1 s; the next throttle ends it with a reading
  of the accepted rate (see `_ratecurve` for why the first throttle decides no rate); a
  ramp that outgrows the traffic (no call waited for `_RAMP_IDLE`, none queued, no pause
  running) goes back to free, and one that reaches `max_rate` goes on as cubic from there;
- cubic: from that reading on, `_Cubic`.

Waiters queue FIFO and only the head sleeps, to its own slot; taking it passes the turn
to the next one.  So there is one timer however many wait (no thundering herd), the
order is exactly arrival order, and a rate change or a pause reaches every queued call
at once, since each head computes its slot when it gets the turn.

The client (`_attempt`) takes a slot before every request it sends for cancels and status
reads when the limiter is `engaged` (a slot past the deadline fails the attempt as
RATE_LIMITED, nothing sent), and reports every HTTP answer with `on_response()`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from attrs import field, frozen

from ._ratecurve import _BUCKET, _DOUBLING, _MARGIN, _Cubic, _Meter, _Ramp

__all__ = ["MAX_RATE", "MIN_RATE", "RateLimit", "RateLimitStats", "RateLimiter", "rate_value"]

_CATCH_UP = 0.02
"""How far back (s) a late-waking queued call may take its slot (else -1/3 of 500/s).  Under
the margin below the throttled rate (`_MARGIN` of one second's worth): the burst a stalled
event loop catches up with fits under the limit."""
_RAMP_IDLE = 1.0
"""A ramp that has kept no call waiting for this long is over: the limit is not in sight."""


MIN_RATE = 0.001
"""The lowest rate a setting may name (one request in about 17 minutes)."""
MAX_RATE = 1_000_000.0
"""The highest (beyond any one client; and the ramp's arithmetic stays finite within it)."""


def rate_value(value: object, name: str) -> float:
    """`value` as a rate for setting `name`; TypeError or ValueError when it is none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of requests per second, got {value!r}")
    rate = float(value)
    if not MIN_RATE <= rate <= MAX_RATE:  # NaN too
        raise ValueError(
            f"{name} must be between {MIN_RATE:g} and {MAX_RATE:,.0f} requests per second, "
            f"got {value!r}"
        )
    return rate


def _optional_rate(value: object) -> float | None:
    return None if value is None else rate_value(value, "max_rate")


def _min_rate(value: object) -> float:
    return rate_value(value, "min_rate")


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
        rate = rate_value(value, "rate_limit")
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
        "_last_wait",
        "_measured_at",
        "_meter",
        "_pause_until",
        "_ramp",
        "_reading",
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
        self._tat = self._pause_until = self._last_decrease = self._last_wait = -math.inf
        self._ramp: _Ramp | None = None
        self._reading = False
        """Whether `_cubic` has a reading (the cubic phase); neither this nor a ramp: free."""
        self._measured_at: float | None = None
        self._waiters: deque[_Waiter] = deque()
        self._throttles = self._waits = 0
        self._wait_time = 0.0

    @property
    def rate(self) -> float | None:
        """The allowed rate in requests per second (None while unthrottled)."""
        ramp = self._ramp
        rate = self._cubic.rate if ramp is None else ramp.rate(self._clock())
        return rate if self.engaged and rate != math.inf else None

    def _slot(self, now: float) -> float:
        return max(self._tat, self._pause_until, now)

    def _after(self, slot: float, n: float = 1.0) -> float:
        """When the `n`-th slot after `slot` comes, at the allowed rate."""
        ramp = self._ramp
        return slot + n / self._cubic.rate if ramp is None else ramp.after(slot, n)

    def delay(self) -> float:
        """Seconds until a request queued now could go (what a refused call reports)."""
        now = self._clock()
        slot = self._slot(now)
        return (self._after(slot, len(self._waiters)) if self.engaged else slot) - now

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
        self._last_wait = now
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
        self._tat = self._after(slot)

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
        slot = self._slot(self._clock())
        kept: deque[_Waiter] = deque()
        for waiter in self._waiters:
            future = waiter.future
            late = self._after(slot, len(kept)) > waiter.deadline
            if kept and late and future is not None and not future.done():
                future.set_result(False)
            else:
                kept.append(waiter)
        self._waiters = kept

    def on_throttle(
        self, retry_after: float | None = None, *, sent_at: float | None = None
    ) -> None:
        """
        Count a 429/529: pause for `retry_after`, and (adaptive) start a ramp or lower the rate.

        Only a request sent after the last change can cause another one: the burst of
        throttles answering requests sent at the old rate is one signal, not many.
        """
        now = self._clock()
        self._throttles += 1
        changed = False
        if retry_after is not None and retry_after > 0 and now + retry_after > self._pause_until:
            self._pause_until, changed = now + retry_after, True
        if sent_at is None:
            fresh = now - self._last_decrease >= _BUCKET
        else:  # sent in the very tick of the last change: it may have been sent before it
            fresh = sent_at > self._last_decrease
        ramp = self._ramp
        if not self._adaptive:
            pass  # a fixed cap only pauses
        elif fresh:
            self._last_decrease, changed = now, True
            if ramp is not None:  # the ramp found the limit: read this process's part
                self._ramp = None
                self._cubic.decrease(now, max(self._meter.rate(now), self._cubic.min_rate))
                self._reading, self._measured_at = True, now
            elif self._reading:
                self._cubic.decrease(now, self._cubic.rate)
                self._measured_at = None
            else:  # the first throttle: ramp up from the end of the pause
                cubic = self._cubic
                self._ramp = _Ramp(max(now, self._pause_until), cubic.min_rate, cubic.max_rate)
                self.engaged = True
        elif self._measured_at is not None:
            self._complete_reading(now)
        elif ramp is not None and self._tat <= ramp.origin < self._pause_until - _DOUBLING:
            # A late answer to the first burst asked for a longer pause before the ramp
            # took a slot: start the curve at its end.  (Not for the milliseconds by which
            # the burst's other answers extend it: processes throttled by the same full
            # window keep the same origin, the first 429's.)
            ramp.origin = self._pause_until
        if changed and self._waiters:
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
        if self._reading and self._adaptive:
            if self._measured_at is not None:
                self._complete_reading(now)
            self._cubic.grow(now, 2.0 * meter.rate(now))
        elif self._ramp is not None:
            self._end_ramp_unless_needed(self._ramp, now)

    def _end_ramp_unless_needed(self, ramp: _Ramp, now: float) -> None:
        # A ramp at `max_rate` found no limit below it: the cubic rule takes over there.  One
        # that kept no call waiting for `_RAMP_IDLE`, with none queued and no pause running,
        # found no limit either (the first throttle was not the rate, or the traffic
        # stopped): free again.
        if ramp.rate(now) >= ramp.cap:  # at max_rate: the cubic rule from there on
            self._ramp, self._reading = None, True
            self._cubic.hold(now, ramp.cap)
        elif (
            not self._waiters
            and now >= self._pause_until
            and now - max(self._last_wait, ramp.origin) >= _RAMP_IDLE
        ):
            self._ramp = None  # `_cubic` is as it was built: a ramp follows only free
            self.engaged = ramp.cap != math.inf

    def _complete_reading(self, now: float) -> None:
        # Answers still arriving within a second of the ramp's end complete its reading.
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
