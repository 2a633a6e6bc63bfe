"""
The rate limiter's state and its waiting: the queue of calls, virtual scheduling (GCRA)
and holds.  `_ratelimit.RateLimiter` adds what the answers mean; this module knows only
when the next request may go.

Send times are handed out by virtual scheduling: the next request may go at
`max(tat, pause_until)`, and taking it moves `tat` on by one interval at the allowed rate
(`_Cubic`'s or the `_Ramp`'s).  During a hold, one probe goes per interval instead.
Waiters queue FIFO and only the head sleeps, to its own slot; taking it passes the turn
to the next one.  So there is one timer however many wait (no thundering herd), and a
rate change or a pause reaches every queued call at once, since each head computes its
slot when it gets the turn (a change that lets calls go sooner wakes the head).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from ._ratecurve import _Cubic, _Meter, _Ramp
from ._ratesettings import RateLimit, RateLimitStats
from ._ratetrial import _Saved, _Trial

_CATCH_UP = 0.02
"""How far back (s) a late-waking queued call may take its slot (else -1/3 of 500/s).  Under
the margin below the throttled rate (`_MARGIN` of one second's worth): the burst a stalled
event loop catches up with fits under the limit."""


PRIORITY_FIRST, PRIORITY_RETRY, PRIORITY_READ = 0, 1, 2
"""A call's place in the queue (`acquire`): a status read (it settles a cancel already
sent) ahead of a retry or 401 replay, ahead of a first request."""

_PAUSE_FLOOR = 0.01
"""Probes are at least this far apart (one at a time) whatever `max_pause` says."""


class _Waiter:
    __slots__ = ("deadline", "future", "priority", "since")

    def __init__(
        self, since: float, deadline: float, future: asyncio.Future[bool] | None, priority: int
    ) -> None:
        self.since, self.deadline, self.future = since, deadline, future
        self.priority = priority


class _Hold:
    """
    Sending held after a run of refusals: one probe at a time until one is accepted.

    `since` is the run's first refusal; `reading` the accepted rate then, if the cubic
    rule had one (a full window then lowers the rate from it, not from a ramp); `saved`
    the state a storm's end restores, if not the current one (a decrease the run cut
    short); `drain` marks the pause after a ramp, which keeps the rate the ramp read;
    `again` the pause after a ramp refused before it found anything (`_Ramp.again`).
    """

    __slots__ = ("again", "drain", "interval", "origin", "reading", "saved", "since", "storm")

    def __init__(self, since: float, origin: float, interval: float) -> None:
        self.since, self.origin, self.interval = since, origin, interval
        self.storm = self.drain = self.again = False
        self.reading: float | None = None
        self.saved: _Saved | None = None


class _Queue:
    """
    The state of one client's limiter and the waiting for a slot; `RateLimiter` adds the
    decisions.  Strictly private.
    """

    __slots__ = (
        "_adaptive",
        "_capped",
        "_clock",
        "_cubic",
        "_fleet_part",
        "_fleet_size",
        "_hold",
        "_last_change",
        "_last_wait",
        "_max_pause",
        "_measured_at",
        "_meter",
        "_nap",
        "_noise",
        "_noise_at",
        "_pause_until",
        "_ramp",
        "_reading",
        "_run",
        "_run_start",
        "_shared_at",
        "_sleep",
        "_suspect",
        "_tat",
        "_throttles",
        "_trial",
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
        max_pause: float = math.inf,
    ) -> None:
        self._clock, self._sleep = clock, sleep
        self._max_pause = max(max_pause, _PAUSE_FLOOR)
        """The longest pause between probes (the policy's `max_retry_after`)."""
        self._adaptive = config.adaptive
        self._capped = config.max_rate is not None
        max_rate = math.inf if config.max_rate is None else config.max_rate
        self._cubic = _Cubic(config.min_rate, max_rate)
        self.engaged: bool = self._capped
        """Read before every request: False means send at once, without awaiting anything."""
        now = clock()
        self._meter = _Meter(now)
        self._tat = self._pause_until = self._last_change = self._last_wait = -math.inf
        self._ramp: _Ramp | None = None
        self._hold: _Hold | None = None
        self._trial: _Trial | None = None
        self._reading = False
        """Whether `_cubic` has a reading (the cubic phase); neither this nor a ramp: free."""
        self._measured_at: float | None = None
        self._run, self._run_start = 0, -math.inf
        self._noise, self._noise_at = 0.0, -math.inf
        self._suspect: _Trial | None = None
        self._waiters: deque[_Waiter] = deque()
        self._nap: asyncio.Future[object] | None = None
        self._throttles = self._waits = 0
        self._wait_time = 0.0
        self._fleet_size: int | None = None
        self._fleet_part: float | None = None
        self._shared_at = -math.inf  # when a part was given to a limiter with no rate

    def stats(self) -> RateLimitStats:
        """The limiter's counters now."""
        accepted, throttled = self._meter.counts(self._clock())  # not scaled up at a start
        return RateLimitStats(
            allowed_rate=self.rate,
            throttle_events=self._throttles,
            wait_time=self._wait_time,
            waits=self._waits,
            engaged=self.engaged,
            accepted_rate=accepted,
            waiting=len(self._waiters),
            throttled_rate=throttled,
            fleet_size=self._fleet_size,
            fleet_part=self._fleet_part,
        )

    def share(self, part: float | None, fleet_size: int) -> None:
        """
        Clients sharing one limit divided it: this one's *part* (None: nothing new; the
        fleet is *fleet_size* clients).  The search goes on from the part, probing past
        it (slowly at first) as after any change; answers to requests sent before it say
        nothing more.  A fixed cap stays as it is.  A hold (the server refusing
        whatever is sent) goes on, and ends at the part: the part is a division of what
        Klavi accepted, which a window this client overfilled says nothing against.
        """
        self._fleet_size = fleet_size
        if part is None or not self._adaptive:
            return
        self._fleet_part = part
        now, cubic = self._clock(), self._cubic
        if not self._reading:  # no rate of its own (a joiner): its meter counts nothing yet
            self._shared_at = now
        part = min(max(part, cubic.min_rate), cubic.max_rate)
        self._ramp = self._trial = self._suspect = self._measured_at = None
        self._reading = self.engaged = True
        cubic.hold(now, part)
        hold = self._hold
        if hold is not None:  # its release goes on at the part, as after a ramp's pause
            hold.reading, hold.saved, hold.again = part, None, False  # no ramp's retry
            hold.storm = hold.drain = True
            return
        self._last_change = now
        if self._waiters:  # a lower part: queued calls now past their deadline are told
            self._refuse_late_waiters()
        self._wake()

    def _save(self) -> _Saved:
        return self._cubic.save(), self._reading, self.engaged

    def _restore(self, saved: _Saved) -> None:
        cubic, self._reading, self.engaged = saved
        self._cubic.restore(cubic)

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
        if self._hold is not None:  # when the hold ends, all at once for all we know
            return slot
        ramp = self._ramp
        return slot + n / self._cubic.rate if ramp is None else ramp.after(slot, n)

    def delay(self) -> float:
        """Seconds until a request queued now could go (what a refused call reports)."""
        return self._delay(len(self._waiters))

    def _delay(self, ahead: int) -> float:
        now = self._clock()
        slot = self._slot(now)
        return (self._after(slot, ahead) if self.engaged else slot) - now

    async def acquire(self, max_wait: float = math.inf, *, priority: int = PRIORITY_FIRST) -> bool:
        """
        Wait for a slot and take it; False, at once and taking nothing, if it would come
        more than `max_wait` seconds from now (or, for a queued call, past that deadline).

        A call of a `priority` over `PRIORITY_FIRST` queues behind the head and the calls
        of its priority or higher only.  A cancelled call leaves the queue and passes its
        turn on; its slot goes to the next.
        """
        if not self.engaged:
            return True
        now = self._clock()
        waiters = self._waiters
        if not waiters and self._slot(now) <= now:
            self._take(now)
            return True
        place = len(waiters)
        if priority and waiters:
            place = 1
            while place < len(waiters) and waiters[place].priority >= priority:
                place += 1
        if self._delay(place) > max_wait:
            return False
        future = asyncio.get_running_loop().create_future() if waiters else None
        waiter = _Waiter(now, now + max_wait, future, priority)
        waiters.insert(place, waiter)
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
                await self._doze(slot - now)
        finally:
            self._wait_time += self._clock() - waiter.since
            self._leave(waiter)

    async def _doze(self, seconds: float) -> None:
        # The head's one timer, cut short by `_wake()` when calls may go sooner.
        nap = asyncio.ensure_future(self._sleep(seconds))
        self._nap = nap
        try:
            await asyncio.wait((nap,))
        finally:
            nap.cancel()
            self._nap = None

    def _wake(self) -> None:
        if self._nap is not None:
            self._nap.cancel()

    def _take(self, slot: float) -> None:
        # A queued call passes its scheduled slot, not its late wake-up time (up to
        # `_CATCH_UP`).  A call that did not wait passes now: an idle spell earns no burst.
        hold = self._hold
        if hold is not None:  # a probe: the next one only after an interval without answer
            self._pause_until = slot + hold.interval
            ramp = self._ramp
            self._tat = slot + 1.0 / self._cubic.rate if ramp is None else ramp.after(slot)
        else:
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

    def _pause(self, until: float) -> None:
        if until > self._pause_until:
            self._pause_until = until
            if self._waiters:
                self._refuse_late_waiters()
