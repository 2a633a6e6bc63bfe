"""
The rate limiter's arithmetic, with no waiting in it: what rate is allowed when.

`_Meter` measures this client's accepted answers per second; `_Ramp` is the start after a
first throttle; `_Cubic` is the rate after that.  `_ratelimit.RateLimiter` owns one of
each and does the scheduling and waiting.

Why a ramp first.  A first throttle ends an unthrottled burst, and how much of the limit
each process got in that burst is luck (measured here: 79/21 for two processes started
within a millisecond, as the CPU happened to schedule them).  A rate derived from it keeps
that split, since the probe past it must be slow (every probe costs a Retry-After pause).
So the first throttle decides no rate: every process throttled by the same full window
ramps from `min_rate` on the same curve, from the same moment (the end of the pause the
server asked for), and the next throttle, which ends the ramp, finds each holding an equal
part of the window.  That reading starts the CUBIC rule.  The price: one more throttle
and pause per start (about the Retry-After, once).

Not botocore's CUBIC as is: with a Retry-After pause on every throttle, its 4-7 s cycles
spend a second in each pause and land at 0.7-0.8 of the limit.  Here the drop to `beta`
is won back within the pause, `w_max` sits just under the throttled rate, the probe past
it is slow (cycles of 10-20 s), and the answers to one burst count as one decrease.
"""

from __future__ import annotations

import math

_BETA = 0.7
"""Multiplicative decrease on a throttle (CUBIC's, and botocore's)."""
_C_RECOVER = 12.0
"""CUBIC's C (requests/s per s^3) below `w_max`: back in about 1-2 s, mostly inside the
Retry-After pause that came with the throttle.  (botocore's 0.4 takes 4-7 s at 100-500/s.)"""
_C_PROBE = 0.0005
"""CUBIC's C above `w_max`: a slow probe (+0.5/s after 10 s, +13.5/s after 30 s), since
every probe past the limit costs a whole-client pause.  Both constants are absolute, not
proportional to the rate: equal growth for unequal flows drifts them to fair shares."""
_MARGIN = 0.05
"""`w_max` sits this much below the rate that was throttled: the last good rate."""
_BUCKET = 0.5
"""The meter's bucket width in seconds."""
_DOUBLING = 0.1
"""The ramp doubles its rate every this many seconds: from 1/s it fills a one-second
window of 100 in about 0.9 s, of 10,000 in 1.6 s.  Processes whose ramps start a few
milliseconds apart stay within a few per cent of each other (5 ms: 3.5 %)."""
_RAMP_MAX_DOUBLINGS = 60.0
"""The ramp's exponent is clipped here (2**60 times `min_rate`): no overflow after an idle hour."""


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


class _Ramp:
    """
    `start * 2**((t - origin) / _DOUBLING)`, never above `cap`: a curve in wall time, so
    two processes with the same origin have the same rate at every moment, however their
    event loops are scheduled.
    """

    __slots__ = ("cap", "origin", "start")

    def __init__(self, origin: float, start: float, cap: float) -> None:
        self.origin, self.start, self.cap = origin, start, cap

    def _doublings(self, at: float) -> float:
        return min(max(at - self.origin, 0.0) / _DOUBLING, _RAMP_MAX_DOUBLINGS)

    def rate(self, now: float) -> float:
        return min(self.start * math.exp2(self._doublings(now)), self.cap)

    def after(self, slot: float, n: float = 1.0) -> float:
        """The `n`-th slot after `slot`: where the curve's integral from `slot` reaches `n`."""
        # The integral of start * 2**(t / D) from a to b is (rate(b) - rate(a)) * D / ln 2;
        # set it to n and solve for b.  Past the cap the curve is flat: n / cap per slot.
        # (`1 / rate(slot)` would hold the rate of the curve's slow start for a whole
        # interval: 1 s at 1/s, ten doublings.)
        if n <= 0:
            return slot
        rate = self.rate(slot)
        reach = (self.cap - rate) * _DOUBLING / math.log(2.0)  # requests until the cap
        if n <= reach:
            doublings = self._doublings(slot)
            grown = math.exp2(doublings) + n * math.log(2.0) / (self.start * _DOUBLING)
            return slot + _DOUBLING * (math.log2(grown) - doublings)
        capped_at = (
            slot if reach <= 0 else self.origin + _DOUBLING * math.log2(self.cap / self.start)
        )
        return max(capped_at, slot) + (n - max(reach, 0.0)) / self.cap


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

    def hold(self, now: float, rate: float) -> None:
        """Take `rate` as the last good rate, reached now: flat there, then the probe."""
        self.rate = self.w_max = rate
        self.t0, self.k = now, 0.0

    def grow(self, now: float, cap: float) -> float:
        t = now - self.t0 - self.k
        target = (_C_RECOVER if t < 0 else _C_PROBE) * t**3 + self.w_max
        # Never more than `cap` (twice the accepted rate) above where it is: an idle
        # spell does not let the curve run away, and a pause does not pull it down.
        target = min(target, max(self.rate, cap), self.max_rate)
        self.rate = max(target, self.min_rate, self.rate)
        return self.rate
