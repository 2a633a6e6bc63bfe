"""
The rate limiter's arithmetic, with no waiting in it: what rate is allowed when.

`_Meter` counts this client's answers over the last second (accepted and throttled);
`_Ramp` is the search for the limit after a full window; `_Cubic` the rate after that.
`_ratelimit.RateLimiter` owns one of each, decides which applies, and does the waiting.

Why a ramp after a full window.  When a burst fills Klavi's window (at a client's start,
or when another process joins one at the limit), how much of the limit each process got
is luck (measured here: 79/21 for two processes started within a millisecond).  A rate
derived from it keeps that split.  So a full window decides no rate: every process
throttled by it ramps from `min_rate` on the same curve, from the same moment (the first
refusal plus the pause the server asked for), and the next throttle, which ends the ramp,
finds each holding an equal part of the window.  That reading starts the cubic rule.

The cubic rule is CUBIC's shape, scaled by the last good rate: a decrease to `_BETA` of the
accepted rate, back to just under it within `_K` seconds (concave), flat around it, then
a probe past it growing as the cube of the time (convex).  Scaled, so a limit of 100/s and
one of 10,000/s are followed on the same time scale and a rise is found in seconds; an
absolute part of the probe, the same for every process, drifts unequal shares towards
fair ones (the synchronised ramps even out processes that start together).
"""

from __future__ import annotations

import math

_BETA = 0.7
"""Multiplicative decrease on rate evidence, of the accepted rate (CUBIC's, botocore's)."""
_MARGIN = 0.05
"""`w_max` sits this much below the rate that was throttled: the last good rate."""
_K = 0.6
"""Seconds from a decrease back to `w_max` (CUBIC's K, here a constant)."""
_C_PROBE = 0.1
"""Past `w_max` the rate is `w_max * (1 + _C_PROBE * t**3)` (plus `_C_ADD`'s part): +1 %
after 0.5 s, +10 % after 1 s, +80 % after 2 s, 3.7x after 3 s.  Against a steady limit a
cycle is about 1.5-2 s with one burst of 429s; a limit that rises is found in seconds."""
_C_ADD = 5.0
"""And past `w_max` the same for every process, in requests per second: +5/s after 1 s.
Equal growth for unequal shares drifts them to fair ones (AIMD's convergence), and a
process squeezed to a small share climbs back."""
_BUCKET = 0.5
"""The meter's bucket width in seconds."""
_DOUBLING = 0.1
"""The ramp doubles its rate every this many seconds: from 1/s it fills a one-second
window of 100 in about 0.9 s, of 10,000 in 1.6 s.  Processes whose ramps start a few
milliseconds apart stay within a few per cent of each other (5 ms: 3.5 %)."""
_RAMP_FOUND = 4
"""Answers a ramp must have had accepted before refusals in a row end it with a reading.
Refused before that, from its first requests (measured: a joiner at 1,000/s whose ramp
met the other process's probe filling the window read 1.4-1.7/s, and 58-72 of its
calls failed `RATE_LIMITED`), it found the window full of others' requests (or a
storm), which says nothing of its part: it holds and ramps again, once.  A second such
ramp in a row is read: where a process's part is under about 5/s (a tiny limit, or many
processes sharing a small one) no ramp gets four answers in, and ramping again every
time held goodput at 2/3 of the limit (found by an attack)."""
_RAMP_MAX_DOUBLINGS = 60.0
"""The ramp's exponent is clipped here (2**60 times `min_rate`): no overflow after an idle hour."""


class _Meter:
    """
    Answers per second over the last second, from 0.5 s buckets: a sliding sum, since an
    empty bucket (a pause) would cut botocore's 0.8-weighted average by 80 %.  `ok` counts
    accepted answers, `bad` throttles; `started` scales the first second (a meter half a
    second old has seen half a second).
    """

    __slots__ = ("bad", "end", "ok", "prev", "prev2", "prev2_bad", "prev_bad", "started")

    def __init__(self, now: float) -> None:
        self.started = now
        self.end = now + _BUCKET
        self.ok = self.prev = self.prev2 = 0
        self.bad = self.prev_bad = self.prev2_bad = 0

    def roll(self, now: float) -> None:
        steps = int((now - self.end) / _BUCKET) + 1
        if steps == 1:
            self.prev2, self.prev = self.prev, self.ok
            self.prev2_bad, self.prev_bad = self.prev_bad, self.bad
        elif steps == 2:
            self.prev2, self.prev = self.ok, 0
            self.prev2_bad, self.prev_bad = self.bad, 0
        else:
            self.prev2 = self.prev = self.prev2_bad = self.prev_bad = 0
        self.ok = self.bad = 0
        self.end += steps * _BUCKET

    def _weight(self, now: float) -> float:
        # The current bucket covers `into` seconds; the one before last fills up the second.
        if now >= self.end:
            self.roll(now)
        return 1.0 - (now - (self.end - _BUCKET)) / _BUCKET

    def rate(self, now: float) -> float:
        """Accepted answers per second."""
        weight = self._weight(now)
        return (self.ok + self.prev + self.prev2 * weight) / min(now - self.started + 1e-9, 1.0)

    def counts(self, now: float) -> tuple[float, float]:
        """Accepted and throttled answers over the last second."""
        weight = self._weight(now)
        ok = self.ok + self.prev + self.prev2 * weight
        return ok, self.bad + self.prev_bad + self.prev2_bad * weight


class _Ramp:
    """
    `start * 2**((t - origin) / _DOUBLING)`, never above `cap`: a curve in wall time, so
    two processes with the same origin have the same rate at every moment, however their
    event loops are scheduled.  `accepted` counts the answers accepted to requests sent
    on it: a ramp refused before it has `_RAMP_FOUND` found a window others fill.
    `again`: it follows such a ramp, and is the last try (its reading stands).
    """

    __slots__ = ("accepted", "again", "cap", "origin", "start")

    def __init__(self, origin: float, start: float, cap: float, *, again: bool = False) -> None:
        self.origin, self.start, self.cap = origin, start, cap
        self.accepted = 0
        self.again = again

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
    The allowed rate: `w_max * (1 + c * (t - _K)**3)`, `t` seconds after the last decrease.

    A decrease takes the rate to `_BETA` times the rate it is given (the accepted one) and
    sets `w_max` just below that; `c` below `w_max` is what brings the curve back to it in
    `_K` seconds, past it `_C_PROBE`.  `save()` and `restore()` undo a decrease that turned
    out to be noise.
    """

    __slots__ = ("c", "max_rate", "min_rate", "rate", "t0", "w_max")

    def __init__(self, min_rate: float, max_rate: float) -> None:
        self.min_rate, self.max_rate = min_rate, max_rate
        self.rate = max_rate
        self.w_max = self.t0 = self.c = 0.0

    def decrease(self, now: float, current: float) -> None:
        current = min(max(current, self.min_rate), self.max_rate)
        self.w_max = current * (1 - _MARGIN)
        self.rate = max(self.min_rate, current * _BETA)
        self.t0 = now
        self.c = max(1.0 - self.rate / self.w_max, 0.0) / _K**3

    def hold(self, now: float, rate: float) -> None:
        """Take `rate` as the last good rate, reached now: flat there, then the probe."""
        self.rate = self.w_max = rate
        self.t0, self.c = now - _K, 0.0

    def resume(self, now: float) -> None:
        """
        A trial held the rate at `w_max` past `_K`: the probe past it starts now, from
        nothing.  (Left on the old clock it jumped at once to where it would have grown,
        +15 % after a one-second trial: a burst of 429s every cycle.)
        """
        if now - self.t0 > _K:
            self.t0, self.c = now - _K, 0.0

    def save(self) -> tuple[float, float, float, float]:
        return self.rate, self.w_max, self.t0, self.c

    def restore(self, saved: tuple[float, float, float, float]) -> None:
        self.rate, self.w_max, self.t0, self.c = saved

    def grow(self, now: float, cap: float) -> float:
        t = now - self.t0 - _K
        if t < 0:
            target = self.w_max * (1.0 + self.c * t**3)
        else:
            target = self.w_max * (1.0 + _C_PROBE * t**3) + _C_ADD * t**3
        # Never more than `cap` (twice the accepted rate) above where it is: an idle
        # spell does not let the curve run away, and a pause does not pull it down.
        target = min(target, max(self.rate, cap), self.max_rate)
        self.rate = max(target, self.min_rate, self.rate)
        return self.rate
