"""The rate limiter on virtual time: settings, the rate rule, the queue, and simulations."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from klavi_async import RetryPolicy
from klavi_async._ratecurve import (
    _BETA,
    _C_ADD,
    _C_PROBE,
    _DOUBLING,
    _K,
    _MARGIN,
    _RAMP_FOUND,
    _Cubic,
    _Ramp,
)
from klavi_async._ratelimit import (
    _PROBE_FIRST,
    _PROBE_MAX,
    _RAMP_RUN,
    _RUN,
    RateLimit,
    RateLimiter,
    RateLimitStats,
)
from klavi_async._ratequeue import _CATCH_UP
from klavi_async._ratetrial import _TRIAL, _TRIAL_DELAY

from .ratesim import Client, Server, VirtualLoop, late_sleep, run, simulate


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def no_sleep(_: float) -> None:
    raise AssertionError("the limiter slept")


# -- the setting ----------------------------------------------------------------------


def test_defaults_and_fields() -> None:
    assert RateLimit() == RateLimit(None, adaptive=True, min_rate=1.0)
    assert RateLimit(50).max_rate == 50.0
    assert RateLimit(50, adaptive=False).adaptive is False


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_rate": True}, TypeError, "max_rate"),
        ({"max_rate": "10"}, TypeError, "max_rate"),
        ({"max_rate": 0}, ValueError, "max_rate"),
        ({"max_rate": -5.0}, ValueError, "max_rate"),
        ({"max_rate": math.nan}, ValueError, "max_rate"),
        ({"max_rate": math.inf}, ValueError, "max_rate"),
        ({"min_rate": False}, TypeError, "min_rate"),
        ({"min_rate": 0.0}, ValueError, "min_rate"),
        ({"min_rate": math.inf}, ValueError, "min_rate"),
        ({"min_rate": 5e-324}, ValueError, "between 0.001 and 1,000,000"),
        ({"max_rate": 1e7}, ValueError, "max_rate must be between"),
        ({"max_rate": math.nan}, ValueError, "max_rate must be between"),
        ({"max_rate": 5, "min_rate": 10}, ValueError, "exceeds max_rate"),
        ({"adaptive": 1}, TypeError, "adaptive"),
        ({"adaptive": False}, ValueError, "rate_limit=None"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RateLimit(**kwargs)


def test_coerce() -> None:
    setting = RateLimit(20)
    assert RateLimit.coerce(setting) is setting
    assert RateLimit.coerce(None) is None
    assert RateLimit.coerce(25) == RateLimit(25.0, adaptive=False)
    assert RateLimit.coerce(0.5) == RateLimit(0.5, adaptive=False, min_rate=0.5)
    with pytest.raises(TypeError, match="rate_limit"):
        RateLimit.coerce(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate_limit"):
        RateLimit.coerce(-1)


# -- the rate rule ------------------------------------------------------------


def refuse(limiter: RateLimiter, clock: FakeClock, n: int, retry_after: float | None = 1.0) -> None:
    """*n* refusals in a row, 1 ms apart, each for a request sent just before."""
    for _ in range(n):
        clock.now += 0.001
        limiter.on_throttle(retry_after, sent_at=clock.now - 0.0005)


def accept(limiter: RateLimiter, clock: FakeClock, n: int, spacing: float = 0.01) -> None:
    for _ in range(n):
        clock.now += spacing
        limiter.on_success(clock.now - spacing / 2)


def lowered(limiter: RateLimiter, clock: FakeClock) -> None:
    """Into the cubic phase from a second of 100/s with one refusal in ten."""
    for i in range(100):
        clock.now += 0.01
        if i % 10 == 9:
            limiter.on_throttle(1.0, sent_at=clock.now - 0.005)
        else:
            limiter.on_success(clock.now - 0.005)


def test_a_lone_429_changes_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    assert limiter.engaged is False
    accept(limiter, clock, 150)
    limiter.on_throttle(86400.0, sent_at=clock.now)
    accept(limiter, clock, 50)
    limiter.on_throttle(None, sent_at=clock.now)
    stats = limiter.stats()
    assert stats == RateLimitStats(
        allowed_rate=None, throttle_events=2, wait_time=0.0, waits=0, engaged=False,
        accepted_rate=stats.accepted_rate, throttled_rate=2.0,
    )  # fmt: skip
    assert 50 <= stats.accepted_rate <= 200  # the last second's answers
    assert limiter.delay() == 0.0


def test_a_share_of_429s_lowers_the_rate_to_beta_of_the_accepted_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 100)  # a second at 100/s
    lowered(limiter, clock)
    assert limiter.engaged
    rate = limiter.rate
    assert rate is not None and _BETA * 85 <= rate <= (1 - _MARGIN) * 95


def test_no_share_is_evidence_in_the_first_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    for _ in range(40):  # a fifth refused, but only 0.36 s of answers: not yet evidence
        accept(limiter, clock, 4, spacing=0.002)
        refuse(limiter, clock, 1)
    assert limiter.engaged is False


def test_a_run_of_refusals_holds_then_the_first_probe_starts_a_ramp() -> None:
    async def main(loop: VirtualLoop) -> None:
        clock = FakeClock()
        clock.now = loop.time()
        limiter = RateLimiter(RateLimit(min_rate=2.0), clock=loop.time)
        for _ in range(50):
            limiter.on_success(loop.time())
        first = loop.time()
        for _ in range(_RUN):
            limiter.on_throttle(1.0, sent_at=first)
        assert limiter.engaged and limiter.delay() == pytest.approx(1.0)
        assert not await limiter.acquire(max_wait=0.5)  # the pause is longer than that
        assert await limiter.acquire()  # the probe, at the end of the pause
        assert loop.time() == pytest.approx(first + 1.0)
        assert limiter.delay() == pytest.approx(1.0)  # nothing more until it is answered
        probe = loop.time()
        waiting = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0.01)
        limiter.on_success(probe)  # accepted: the window was full, a ramp from min_rate
        assert await waiting
        assert loop.time() == pytest.approx(probe + 0.01)  # woken at once
        assert limiter.rate == pytest.approx(2.0 * 2 ** (0.01 / _DOUBLING))

    run(main)


def test_a_storm_restores_the_rate_from_before_it() -> None:
    async def main(loop: VirtualLoop) -> None:
        limiter = RateLimiter(RateLimit(), clock=loop.time)
        for _ in range(_RUN):  # a storm from the very start
            limiter.on_throttle(None, sent_at=loop.time())
        assert limiter.engaged
        interval = 0.25
        for _ in range(6):  # every probe refused: the pause doubles up to _PROBE_MAX
            assert await limiter.acquire()
            sent = loop.time()
            await asyncio.sleep(0.001)
            limiter.on_throttle(None, sent_at=sent)
            interval = min(2 * interval, _PROBE_MAX)
            assert limiter.delay() == pytest.approx(interval)
        assert await limiter.acquire()
        limiter.on_success(loop.time())  # the storm is over: unthrottled, as before it
        assert not limiter.engaged and limiter.rate is None

    run(main)


def test_a_storm_in_the_cubic_phase_restores_that_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 100)
    lowered(limiter, clock)
    before = limiter.rate
    refuse(limiter, clock, _RUN, retry_after=1.0)
    clock.now += 1.0
    assert run(lambda _: limiter.acquire(max_wait=0.0))  # the probe
    refuse(limiter, clock, 1, retry_after=1.0)  # refused: a storm
    clock.now += 1.0
    assert run(lambda _: limiter.acquire(max_wait=0.0))
    clock.now += 0.001
    limiter.on_success(clock.now - 0.0005)
    assert limiter.rate == before
    # and goes on from it, not from where the probe would have grown to over the storm
    accept(limiter, clock, 100, spacing=0.002)
    assert before is not None and limiter.rate is not None
    assert limiter.rate <= before * (1 + _C_PROBE * 0.2**3) + _C_ADD


def test_a_full_window_without_retry_after_is_not_a_storm() -> None:
    # No Retry-After: the first probe (after _PROBE_FIRST) lands in the same second's
    # full window.  A refusal within _WINDOW of the run's start is the window, not a
    # storm: the first accepted probe starts a ramp rather than restoring "unthrottled".
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 150)
    refuse(limiter, clock, _RUN, retry_after=None)
    for pause in (_PROBE_FIRST, 2 * _PROBE_FIRST):
        assert limiter.delay() == pytest.approx(pause, abs=0.01)
        clock.now += limiter.delay()
        assert run(lambda _: limiter.acquire(max_wait=0.0))
        refuse(limiter, clock, 1, retry_after=None)
        assert limiter._hold is not None and not limiter._hold.storm
    clock.now += limiter.delay()
    assert run(lambda _: limiter.acquire(max_wait=0.0))
    limiter.on_success(clock.now)
    assert limiter._ramp is not None and limiter.engaged


@pytest.mark.parametrize("retry_after", [0.0, 1e-6, 0.001, 0.2, math.nan])
def test_a_tiny_retry_after_is_no_retry_after(retry_after: float) -> None:
    # Probes a millisecond apart would overlap: a Retry-After under the first probe's
    # pause is treated as none.
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    refuse(limiter, clock, _RUN, retry_after=retry_after)
    assert limiter.delay() >= _PROBE_FIRST - 0.01
    clock.now += limiter.delay()
    assert run(lambda _: limiter.acquire(max_wait=0.0))
    assert limiter.delay() >= _PROBE_FIRST


def test_a_run_among_noisy_answers_must_be_longer_than_chance_makes() -> None:
    # 40 % of the answers refused at random: runs of eight come by chance every 1,500
    # answers.  Such a run is not a full window; a longer one (13) is.
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    for i in range(300):
        clock.now += 0.004
        limiter.on_response(429 if i % 5 in (0, 2) else 200, 1.0, clock.now - 0.002)
    refuse(limiter, clock, _RUN)
    assert limiter._hold is None
    refuse(limiter, clock, 6)
    assert limiter._hold is not None


def test_a_few_refusals_among_few_answers_are_no_full_window() -> None:
    # Four refusals among eight answers at 5/s, Retry-After 60: half refused, but four
    # is not a run; nothing else waits.
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    for _ in range(50):
        clock.now += 0.2
        limiter.on_success(clock.now - 0.005)
    for status in (429, 200, 429, 200, 429, 200, 429):
        clock.now += 0.2
        limiter.on_response(status, 60.0, clock.now - 0.005)
    assert limiter._hold is None
    assert limiter.delay() < 1.0


def test_a_run_in_the_cubic_phase_decreases_before_it_holds() -> None:
    # At a high rate the cubic rule's overshoot comes back as a run: a decrease, not a
    # hold.  (Its first refusal does not end the probe: a second accepted at 1,000/s is far
    # past the last good rate, the limit has risen.)  A run of requests sent after the
    # decrease holds; when the window has drained the rate goes on from the reading, not
    # from a ramp at min_rate.
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 2000, spacing=0.001)
    lowered(limiter, clock)
    accept(limiter, clock, 3000, spacing=0.001)  # a trial judged: it helped
    assert limiter._trial is None and limiter._reading
    before = limiter.rate
    assert before is not None
    refuse(limiter, clock, _RUN)
    assert limiter._hold is None and limiter._trial is not None  # a decrease
    assert limiter.rate == pytest.approx(_BETA * before)
    refuse(limiter, clock, _RUN)  # sent after it: a hold
    assert limiter._hold is not None
    clock.now += 1.0
    assert run(lambda _: limiter.acquire(max_wait=0.0))
    limiter.on_success(clock.now)  # the window was full: on from the reading
    assert limiter._ramp is None and limiter.rate is not None
    assert limiter.rate >= _BETA * _BETA * before


def after_a_decrease() -> tuple[RateLimiter, FakeClock]:
    """A default limiter two seconds in, its rate just lowered (on trial)."""
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 200)
    lowered(limiter, clock)
    return limiter, clock


def probing(accepted: float = 15.0) -> tuple[RateLimiter, FakeClock]:
    """
    A limiter whose decrease was judged a help, probing past its last good rate with
    *accepted* seconds of answers at that limit (the rate it was throttled at).
    """
    limiter, clock = after_a_decrease()
    limit = limiter._cubic.w_max / (1 - _MARGIN)
    accept(limiter, clock, int(accepted * limit), spacing=1 / limit)
    assert limiter._trial is None and limiter.rate is not None
    assert limiter.rate > limiter._cubic.w_max
    return limiter, clock


def test_a_trial_that_helped_starts_the_probe_from_nothing() -> None:
    # While a decrease is on trial the rate stays at `w_max`; the probe past it starts
    # when the trial ends.  On the cubic rule's own clock it jumped at once to where it
    # would have grown (+15 % after a one-second trial): a burst of 429s every cycle.
    limiter, clock = after_a_decrease()
    cubic = limiter._cubic
    while limiter._trial is not None:
        accept(limiter, clock, 1)
        assert limiter.rate is not None and limiter.rate <= cubic.w_max
    accept(limiter, clock, 50)  # half a second after the trial
    assert limiter.rate is not None
    assert cubic.w_max < limiter.rate <= 1.02 * cubic.w_max


def test_a_refusal_past_the_last_good_rate_ends_the_probe() -> None:
    # The first 429 after a clean second, the rate probing past `w_max`: back to just
    # under what the last second accepted, no decrease, no trial, the probe again.
    limiter, clock = probing()
    cubic = limiter._cubic
    accepted = limiter._meter.rate(clock.now)
    last_good = cubic.w_max
    refuse(limiter, clock, 1)
    assert limiter._trial is None and limiter._hold is None
    assert limiter.rate == cubic.w_max
    assert last_good <= cubic.w_max <= accepted * (1 - _MARGIN)
    refuse(limiter, clock, 1)  # a second refusal within the second changes nothing more
    assert limiter.rate == cubic.w_max and limiter._trial is None


@pytest.mark.parametrize("case", ["noise known", "refused already", "few answers", "risen"])
def test_a_refusal_is_no_limit_found_where_a_429_is_common_or_answers_few(case: str) -> None:
    limiter, clock = probing(accepted=15.0 if case != "few answers" else 7.0)
    if case == "few answers":  # a second of 10 answers since
        accept(limiter, clock, 10, spacing=0.1)
    elif case == "noise known":
        limiter._noise, limiter._noise_at = 0.2, clock.now
    elif case == "risen":  # the last second accepted well past the last good rate
        limiter._cubic.w_max = limiter._meter.rate(clock.now) * 0.8
    else:
        refuse(limiter, clock, 1)
        limiter._cubic.hold(clock.now, limiter._cubic.w_max * 0.9)
        limiter._cubic.t0 -= 2.0  # probing again, past `w_max`
        accept(limiter, clock, 5)
    before = limiter.rate
    assert before is not None and before > limiter._cubic.w_max
    refuse(limiter, clock, 1)
    assert limiter.rate == before


def test_a_hold_forgets_a_suspect_decrease() -> None:
    # A decrease judged "no help" once, then a hold: the next noise verdict must not
    # restore the state from before the hold (a rate long gone).
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 400, spacing=0.005)
    i = 0
    while limiter._suspect is None and i < 20_000:  # 12.5 % noise, spread out
        clock.now += 0.005
        limiter.on_response(429 if i % 8 == 0 else 200, 1.0, clock.now - 0.004)
        i += 1
    assert limiter._suspect is not None
    refuse(limiter, clock, _RUN)
    assert limiter._suspect is None


@pytest.mark.parametrize("max_pause", [0.0, 0.5, 1.0])
def test_probes_without_retry_after_are_never_further_apart_than_max_pause(
    max_pause: float,
) -> None:
    # The policy's max_retry_after caps the limiter's own pauses too (it doubled to 2 s).
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep, max_pause=max_pause)
    refuse(limiter, clock, _RUN, retry_after=None)
    for _ in range(6):
        assert limiter.delay() <= max(max_pause, 0.01) + 1e-9
        clock.now += limiter.delay()
        assert run(lambda _: limiter.acquire(max_wait=0.0))
        assert not run(lambda _: limiter.acquire(max_wait=0.0))  # one probe at a time
        refuse(limiter, clock, 1, retry_after=None)


def test_a_retry_after_pause_is_what_the_caller_passes() -> None:
    # The client caps Retry-After at the policy's max_retry_after before telling the
    # limiter; the limiter pauses for what it is told.
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    refuse(limiter, clock, _RUN, retry_after=2.0)
    assert limiter.delay() == pytest.approx(2.0 - (_RUN - 1) * 0.001)


def test_a_decrease_that_does_not_make_429s_rarer_twice_is_undone_as_noise() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)

    def noisy(seconds: float) -> None:  # one in five refused, whatever the rate
        for i in range(int(seconds * 200)):
            clock.now += 0.005
            if i % 5 == 0:
                limiter.on_throttle(0.0, sent_at=clock.now - 0.001)
            else:
                limiter.on_success(clock.now - 0.001)

    noisy(1.2)
    assert limiter.engaged  # a fifth refused looks like rate at first
    noisy(2 * (_TRIAL_DELAY + _TRIAL / 200) + 1.5)  # one trial suspect, a second: noise
    assert not limiter.engaged
    noisy(3.0)  # and remembered: the same share no longer lowers the rate
    assert not limiter.engaged


def test_a_decrease_that_makes_429s_rarer_stands() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 100)
    lowered(limiter, clock)
    rate = limiter.rate
    accept(limiter, clock, 200)  # no refusal at the lower rate: it was the rate
    assert limiter.engaged and limiter.rate is not None and limiter.rate >= rate


def ramping() -> tuple[RateLimiter, FakeClock]:
    """A limiter whose first full window held it, and whose probe started a ramp."""
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    clock.now = 1.0
    refuse(limiter, clock, _RUN)
    clock.now += 1.0
    assert run(lambda _: limiter.acquire(max_wait=0.0))
    accept(limiter, clock, 1, spacing=0.001)  # the probe (not the ramp's): a ramp starts
    assert limiter._ramp is not None and limiter._ramp.accepted == 0
    return limiter, clock


def test_the_ramp_ends_on_a_throttle_with_a_reading_and_a_hold() -> None:
    limiter, clock = ramping()
    assert limiter.rate is not None and limiter.rate < 2.0
    accept(limiter, clock, 60, spacing=0.005)
    accept(limiter, clock, 1, spacing=0.005)
    refuse(limiter, clock, 1, retry_after=1.0)  # noise: the ramp goes on
    accept(limiter, clock, 1, spacing=0.001)
    assert limiter._ramp is not None  # still ramping
    refuse(limiter, clock, _RAMP_RUN, retry_after=1.0)  # a run: the ramp found the limit
    assert limiter.rate == pytest.approx(_BETA * 63, rel=0.05)
    assert limiter.delay() > 0.9  # and the window drains before it goes on


def test_a_ramp_refused_before_it_found_anything_holds_and_ramps_again() -> None:
    # Refused in a run before `_RAMP_FOUND` answers were accepted, a ramp met a window
    # others fill (or a storm): no reading (it was 1/s), a hold, then a ramp from the start.
    limiter, clock = ramping()
    accept(limiter, clock, _RAMP_FOUND - 1, spacing=0.01)
    assert limiter._ramp is not None and limiter._ramp.accepted == _RAMP_FOUND - 1
    refuse(limiter, clock, _RAMP_RUN, retry_after=1.0)
    assert limiter._ramp is None and limiter._hold is not None
    assert not limiter._reading and limiter.engaged
    assert limiter.delay() > 0.9  # the window's Retry-After, then a probe
    clock.now += 1.0
    assert run(lambda _: limiter.acquire(max_wait=0.0))
    accept(limiter, clock, 1, spacing=0.001)
    assert limiter._ramp is not None and limiter._hold is None  # ramping again
    accept(limiter, clock, _RAMP_FOUND, spacing=0.01)
    refuse(limiter, clock, _RAMP_RUN, retry_after=1.0)  # now it found its part
    assert limiter._reading and limiter.rate is not None


def test_a_ramp_retried_through_a_storm_ramps_once_more_then_reads() -> None:
    # The retry's hold became a storm (a tiny limit refuses its probes for over a second):
    # it ends in the ramp's last try, not unthrottled (two processes at 2/s went free, burst
    # and held again every 6 s: 77-87 calls failed against 19-21).
    limiter, clock = ramping()
    refuse(limiter, clock, _RAMP_RUN, retry_after=1.0)  # refused before it found anything
    assert limiter._hold is not None and limiter._hold.again
    clock.now += 1.0
    assert run(lambda _: limiter.acquire(max_wait=0.0))
    refuse(limiter, clock, 1, retry_after=1.0)  # the probe refused past the window: a storm
    assert limiter._hold is not None and limiter._hold.storm
    clock.now += 1.0
    assert run(lambda _: limiter.acquire(max_wait=0.0))
    accept(limiter, clock, 1, spacing=0.001)
    assert limiter.engaged and limiter._ramp is not None and limiter._ramp.again
    refuse(limiter, clock, _RAMP_RUN, retry_after=1.0)  # the last try is read, found or not
    assert limiter._ramp is None and limiter._reading and limiter.rate is not None


def test_cubic_curve() -> None:
    cubic = _Cubic(1.0, math.inf)
    cubic.decrease(0.0, 100.0)
    w_max = 100 * (1 - _MARGIN)
    assert (cubic.rate, cubic.w_max) == (pytest.approx(70.0), pytest.approx(w_max))
    previous = cubic.rate
    for t in (0.25 * _K, 0.5 * _K, 0.75 * _K):
        rate = cubic.grow(t, math.inf)
        assert previous < rate < w_max
        previous = rate
    assert cubic.grow(_K, math.inf) == pytest.approx(w_max)
    # Past K a probe scaled by w_max, plus the same for every process.
    assert cubic.grow(_K + 1, math.inf) == pytest.approx(w_max * (1 + _C_PROBE) + _C_ADD)
    assert cubic.grow(_K + 2, math.inf) == pytest.approx(w_max * (1 + 8 * _C_PROBE) + 8 * _C_ADD)


def test_growth_never_more_than_the_cap_above_the_rate_and_never_down() -> None:
    cubic = _Cubic(1.0, math.inf)
    cubic.decrease(0.0, 100.0)
    assert cubic.grow(1000.0, 80.0) == 80.0  # twice the accepted rate, not the curve's
    assert cubic.grow(1001.0, 10.0) == 80.0  # a pause empties the meter: the rate stays


def test_save_and_restore() -> None:
    cubic = _Cubic(1.0, math.inf)
    cubic.decrease(0.0, 100.0)
    saved = cubic.save()
    cubic.decrease(1.0, 50.0)
    cubic.restore(saved)
    assert (cubic.rate, cubic.w_max) == (pytest.approx(70.0), pytest.approx(95.0))


def test_max_and_min_rate() -> None:
    cubic = _Cubic(10.0, 50.0)
    cubic.decrease(0.0, 5.0)
    assert cubic.rate == 10.0
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(50, min_rate=10), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 100)
    lowered(limiter, clock)
    assert limiter.rate is not None and 10.0 <= limiter.rate < 50.0
    for _ in range(5000):
        clock.now += 0.01
        limiter.on_success(clock.now - 0.001)
    assert limiter.rate == 50.0


def test_fixed_cap_holds_but_keeps_its_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit.coerce(20.0), clock=clock)  # type: ignore[arg-type]
    accept(limiter, clock, 10)
    refuse(limiter, clock, 3)
    assert limiter.rate == 20.0 and limiter.delay() <= 0.05  # a few 429s: nothing
    refuse(limiter, clock, _RUN, retry_after=3.0)
    assert limiter.delay() == pytest.approx(3.0, abs=0.01)
    clock.now += 3.0
    assert run(lambda _: limiter.acquire(max_wait=0.0))
    accept(limiter, clock, 1, spacing=0.001)
    assert limiter.rate == 20.0 and limiter.delay() <= 0.05


def served_order(*waves: list[tuple[str, int]]) -> list[str]:
    """The order a 10/s limiter serves calls (name, priority), each wave 10 ms after the last."""

    async def main(loop: VirtualLoop) -> list[str]:
        limiter = RateLimiter(RateLimit(10, adaptive=False), clock=loop.time)
        order: list[str] = []

        async def one(name: str, priority: int) -> None:
            assert await limiter.acquire(priority=priority)
            order.append(name)

        tasks: list[asyncio.Future[None]] = []
        for wave in waves:
            tasks += [asyncio.ensure_future(one(name, priority)) for name, priority in wave]
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        return order

    return run(main)


def test_a_status_read_queues_ahead_of_the_cancels() -> None:
    # cancel-0 went at once and cancel-1 was the head, asleep to its slot; the reads
    # go right after it, before the other cancels, in their own order.
    cancels = [(f"cancel-{i}", 0) for i in range(5)]
    assert served_order(cancels, [("read-0", 2), ("read-1", 2)]) == [
        "cancel-0",
        "cancel-1",
        "read-0",
        "read-1",
    ] + [f"cancel-{i}" for i in range(2, 5)]


def test_status_reads_queue_ahead_of_retries_and_retries_ahead_of_first_requests() -> None:
    # first-0 went at once, first-1 was the head; a read goes before the retries queued
    # earlier (a reconciliation read among many retries must not wait for all of them).
    first = [(f"first-{i}", 0) for i in range(3)]
    retries = [("retry-0", 1), ("retry-1", 1)]
    assert served_order(first, retries, [("read", 2)]) == [
        "first-0",
        "first-1",
        "read",
        "retry-0",
        "retry-1",
        "first-2",
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ok", "429", "429-old"]),
            st.floats(0, 2),
            st.floats(0, 2) | st.none(),
        ),
        max_size=300,
    ),
    st.floats(1, 50),
    st.floats(1, 500) | st.none(),
)
def test_rate_stays_within_bounds(
    events: list[tuple[str, float, float | None]], min_rate: float, span: float | None
) -> None:
    max_rate = None if span is None else min_rate + span
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(max_rate, min_rate=min_rate), clock=clock)
    for kind, step, retry_after in events:
        clock.now += step
        if kind == "ok":
            limiter.on_success(clock.now - 0.001)
        else:
            sent = clock.now - 0.001 if kind == "429" else -1.0
            limiter.on_throttle(retry_after, sent_at=sent)
        rate = limiter.rate
        if rate is not None:
            assert min_rate <= rate <= (max_rate or math.inf)
        assert limiter.delay() >= 0.0
        assert limiter.delay() <= 2.0 + 1e-9  # never past what it was told to wait


def test_ramp_slots_follow_the_curve() -> None:
    ramp = _Ramp(10.0, 1.0, math.inf)
    assert ramp.rate(9.0) == 1.0 and ramp.rate(10.0) == 1.0
    assert ramp.rate(10.0 + 4 * _DOUBLING) == pytest.approx(16.0)
    # The slots, one after another, hold one request's worth of the curve's integral each.
    slots = [10.0]
    for _ in range(200):
        slots.append(ramp.after(slots[-1]))
    for a, b in itertools.pairwise(slots):
        steps = 1000
        area = sum(ramp.rate(a + (i + 0.5) * (b - a) / steps) for i in range(steps)) * (b - a)
        assert area / steps == pytest.approx(1.0, rel=1e-3)
    assert ramp.after(10.0, 200) == pytest.approx(slots[-1])
    # A cap holds the slots one interval apart once the curve is past it.
    capped = _Ramp(0.0, 1.0, 50.0)
    walked = [0.0]
    for _ in range(120):  # across the cap: up the curve, then flat
        walked.append(capped.after(walked[-1]))
    assert capped.after(0.0, 120) == pytest.approx(walked[-1])
    assert capped.after(0.0, 90) == pytest.approx(walked[90])
    assert capped.rate(5.0) == 50.0
    assert capped.after(5.0) == pytest.approx(5.02)
    assert capped.after(5.0, 10) == pytest.approx(5.2)
    # An idle hour does not overflow.
    assert ramp.rate(3600.0) == 2.0**60 and ramp.after(3600.0) >= 3600.0


# -- the queue ------------------------------------------------------------------------


def test_retry_after_pauses_every_waiter() -> None:
    async def main(loop: VirtualLoop) -> list[float]:
        limiter = RateLimiter(RateLimit(1000, adaptive=False), clock=loop.time)
        for _ in range(_RUN):  # a run of refusals: a 2 s pause, a probe, 1000/s after it
            limiter.on_throttle(2.0, sent_at=0.0)

        async def one() -> float:
            assert await limiter.acquire()
            sent = loop.time()
            limiter.on_success(sent)  # answered at once
            return sent

        times = await asyncio.gather(*(one() for _ in range(8)))
        stats = limiter.stats()
        assert stats.waits == 8
        assert stats.wait_time == pytest.approx(sum(times))
        return times

    times = run(main)
    assert times == pytest.approx([2.0 + i / 1000 for i in range(8)])


def test_fifo_and_a_cancelled_waiter_gives_its_slot_away() -> None:
    async def main(loop: VirtualLoop) -> list[tuple[int, float]]:
        limiter = RateLimiter(RateLimit(10, adaptive=False), clock=loop.time)
        order: list[tuple[int, float]] = []

        async def one(i: int) -> None:
            assert await limiter.acquire()
            order.append((i, round(loop.time(), 6)))

        tasks = [asyncio.ensure_future(one(i)) for i in range(6)]
        await asyncio.sleep(0.05)
        tasks[0].cancel() if not tasks[0].done() else None
        tasks[1].cancel()  # the head, asleep until 0.1
        tasks[3].cancel()  # one queued behind it
        await asyncio.gather(*tasks, return_exceptions=True)
        assert not limiter._waiters
        return order

    assert run(main) == [(0, 0.0), (2, 0.1), (4, 0.2), (5, 0.3)]


def test_a_wait_past_max_wait_is_refused_at_once() -> None:
    async def main(loop: VirtualLoop) -> None:
        limiter = RateLimiter(RateLimit(1, adaptive=False), clock=loop.time)
        assert await limiter.acquire(max_wait=0.0)
        assert not await limiter.acquire(max_wait=0.5)
        assert loop.time() == 0.0
        assert limiter.delay() == pytest.approx(1.0)
        assert await limiter.acquire(max_wait=1.0)
        assert loop.time() == pytest.approx(1.0)

    run(main)


def test_a_pause_refuses_queued_calls_it_would_keep_past_their_deadline() -> None:
    async def main(loop: VirtualLoop) -> list[tuple[bool, float]]:
        limiter = RateLimiter(RateLimit(10, adaptive=False), clock=loop.time)

        async def one(max_wait: float) -> tuple[bool, float]:
            granted = await limiter.acquire(max_wait=max_wait)
            return granted, round(loop.time(), 6)

        tasks = [asyncio.ensure_future(one(w)) for w in (1.0, 1.0, 1.0, 5.0)]
        await asyncio.sleep(0.01)
        for _ in range(_RUN):  # fixed cap: no decrease, a pause to 2.01
            limiter.on_throttle(2.0, sent_at=0.005)
        return await asyncio.gather(*tasks)

    # The first went at 0; the head (due at 0.1) finds the pause when it wakes and gives
    # up then; the third is told at once; the fourth can wait and goes when it ends.
    assert run(main) == [(True, 0.0), (False, 0.1), (False, 0.01), (True, 2.01)]


def test_a_late_wake_up_does_not_drift_the_schedule() -> None:
    async def main(loop: VirtualLoop) -> list[float]:
        limiter = RateLimiter(
            RateLimit(100, adaptive=False), clock=loop.time, sleep=late_sleep(0.003)
        )

        async def one() -> float:
            assert await limiter.acquire()
            return loop.time()

        return await asyncio.gather(*(one() for _ in range(50)))

    times = run(main)
    # Each sleeper wakes 3 ms late, but the slots stay 10 ms apart: the 50th is due at
    # 0.49 s and goes at most one lateness after it (drifting, it would go at 0.637 s).
    for i, granted in enumerate(times):
        assert i * 0.01 <= granted <= i * 0.01 + 0.003 + 1e-9, (i, granted)


def test_a_stalled_loop_earns_at_most_the_catch_up_burst() -> None:
    async def main(loop: VirtualLoop) -> list[float]:
        limiter = RateLimiter(
            RateLimit(100, adaptive=False), clock=loop.time, sleep=late_sleep(1.0)
        )

        async def one() -> float:
            assert await limiter.acquire()
            return loop.time()

        return await asyncio.gather(*(one() for _ in range(12)))

    times = run(main)
    # The first goes at 0; the head oversleeps to 1.01 s.  It and the calls behind it
    # may take slots at most _CATCH_UP back: 6 go at once (slots 0.96 .. 1.01), not all.
    assert times[0] == 0.0
    burst = [t for t in times[1:] if t == pytest.approx(1.01)]
    assert len(burst) == round(_CATCH_UP * 100) + 1
    assert times[len(burst) + 1] > 1.01


# -- simulations: the fault shapes, on virtual time ----------------------------------------


def steady(limit: int) -> Server:
    return Server(limit=lambda _: limit)


@pytest.mark.parametrize(("limit", "concurrency"), [(100, 64), (500, 128)])
def test_one_client_runs_at_a_steady_limit(limit: int, concurrency: int) -> None:
    server, client = steady(limit), Client(until=40.0, concurrency=concurrency)
    simulate(server, [client])
    assert server.accepted(None, 10.0, 40.0) / 30.0 / limit >= 0.9
    assert server.share_refused(10.0, 40.0) <= 0.05
    assert set(client.results) == {"ok"}  # nothing failed RATE_LIMITED


@pytest.mark.parametrize(("limit", "concurrency"), [(500, 128), (200, 32), (100, 64)])
def test_one_client_runs_at_the_limit_on_a_late_event_loop(limit: int, concurrency: int) -> None:
    # A sleep 1 ms late (a busy event loop) used to cost a third of the rate at 500/s.
    server = steady(limit)
    simulate(server, [Client(until=30.0, concurrency=concurrency, lateness=0.001)])
    assert server.accepted(None, 10.0, 30.0) / 20.0 / limit >= 0.9
    assert server.share_refused(10.0, 30.0) <= 0.05


@pytest.mark.parametrize("seed", [1, 2])
def test_two_clients_started_together_share_fairly(seed: int) -> None:
    server = steady(100)
    clients = [Client(until=32.0, lateness=late) for late in (0.0005, 0.004)]
    simulate(server, clients, seed=seed)
    shares = [server.accepted(who, 4.0, 32.0) for who in range(2)]
    assert sum(shares) / 28.0 / 100 >= 0.85
    assert server.share_refused(4.0, 32.0) <= 0.07  # each probes past its share
    for share in shares:
        assert abs(share / sum(shares) * 2 - 1) <= 0.2, shares


@pytest.mark.parametrize(("limit", "seed"), [(100, 2), (200, 2), (40, 1)])
def test_two_clients_without_retry_after_share_fairly(limit: int, seed: int) -> None:
    # Without a Retry-After the probes of a full window are refused until it rolls: the
    # ramp of the first process released used to start at the first probe, 1.5 s of
    # doubling back, a burst that refilled the window (splits 0.19 and 0.22, and 205
    # cancels failed RATE_LIMITED behind a rate of 1/s).
    server = Server(limit=lambda _: limit, retry_after=None)
    clients = [Client(until=32.0), Client(until=32.0)]
    simulate(server, clients, seed=seed)
    shares = [server.accepted(who, 4.0, 32.0) for who in range(2)]
    assert sum(shares) / 28.0 / limit >= 0.9
    assert server.share_refused(4.0, 32.0) <= 0.07
    for share in shares:
        assert abs(share / sum(shares) * 2 - 1) <= 0.2, shares
    assert all(set(client.results) == {"ok"} for client in clients)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_a_joiner_whose_ramp_meets_the_others_probe_ramps_again(seed: int) -> None:
    # At 1,000/s a process joining 5 s after another ramped into the other's probe filling
    # the window: refused from its first requests, it read 1.4-1.7/s as its part, and
    # 58-72 of its calls failed RATE_LIMITED queued behind that rate (joiner 0.05-0.39).
    server = steady(1000)
    clients = [Client(until=20.0), Client(start=5.0, until=20.0)]
    simulate(server, clients, seed=seed)
    assert all(set(client.results) == {"ok"} for client in clients), clients[1].results
    assert server.accepted(None, 8.0, 20.0) / 12.0 / 1000 >= 0.9
    assert server.accepted(1, 15.0, 20.0) / server.accepted(None, 15.0, 20.0) >= 0.3


@pytest.mark.parametrize("seed", [1, 2])
def test_three_clients_share_a_limit(seed: int) -> None:
    server = steady(100)
    simulate(server, [Client(until=60.0) for _ in range(3)], seed=seed)
    shares = [server.accepted(who, 20.0, 60.0) for who in range(3)]
    assert sum(shares) / 40.0 / 100 >= 0.85
    assert server.share_refused(20.0, 60.0) <= 0.08
    for share in shares:
        assert abs(share / sum(shares) * 3 - 1) <= 0.25, shares


@pytest.mark.parametrize("seed", [1, 2])
def test_a_limit_that_rises_among_lone_429s_is_found(seed: int) -> None:
    # One request in 220 refused at random, the limit from 100/s to 1,000/s at 10 s: when
    # each lone 429 ended the probe, 800/s took 9-12 s to reach (3-4 s before that rule).
    count = [seed * 13]

    def noise(_payment: int, _attempt: int) -> bool:
        count[0] += 1
        return count[0] % 220 == 0

    server = Server(limit=lambda t: 100 if t < 10 else 1000, noise=noise)
    client = Client(until=20.0)
    simulate(server, [client], seed=seed)
    per_second = [server.accepted(None, t, t + 1) for t in range(10, 20)]
    assert max(per_second[:5]) >= 800, per_second
    assert set(client.results) == {"ok"}


@pytest.mark.parametrize("retry_after", [1.0, None], ids=["retry-after", "none"])
def test_a_storm_that_ends_costs_only_the_storm(retry_after: float | None) -> None:
    # Every request refused for 3 s, then an open Klavi: 3,000 cancels at concurrency 64.
    server = Server(storms=((0.0, 3.0),), retry_after=retry_after)
    client = Client(payments=3000)
    simulate(server, [client])
    assert client.results == {"ok": 3000}
    assert client.finished <= 3.0 + 3.0
    assert len(server.log) <= 3000 + 200  # held during the storm, not hammering


@pytest.mark.parametrize("length", [0.3, 1.5, 8.0])
def test_storms_of_other_lengths(length: float) -> None:
    server = Server(storms=((0.5, 0.5 + length),), retry_after=1.0, status=529)
    client = Client(payments=4000)
    simulate(server, [client])
    off = Client(payments=4000, rate_limit=None)
    simulate(Server(), [off])
    assert client.results == {"ok": 4000}
    assert client.finished <= 0.5 + length + 2.0 + off.finished


def noise_on_and_off(payments: int, every: int, retry_after: float | None) -> tuple[Client, Client]:
    """One batch with the default limiter and one without, against 429s on the first
    attempt of every `every`-th payment."""

    def noise(payment: int, attempt: int) -> bool:
        return attempt == 1 and payment % every == 0

    runs = []
    for rate_limit in (RateLimit(), None):
        client = Client(payments=payments, rate_limit=rate_limit)
        simulate(Server(noise=noise, retry_after=retry_after), [client])
        runs.append(client)
    return runs[0], runs[1]


@pytest.mark.parametrize(
    ("share", "limit", "floor"),
    [(0.08, None, 0.75), (0.08, 500, 0.7), (0.15, None, 0.75)],
)
def test_steady_random_429s_cost_little(share: float, limit: int | None, floor: float) -> None:
    # Random 429s on a share of all requests, for 40 s: the noise is learnt, the rate
    # does not spiral down (it did: 0.22 of the limiter-off throughput at 8 %).  8 % under
    # 500/s, seeds 1-8: 0.74-0.87 (this seed 0.72 since retries queue ahead of new calls,
    # 0.82 before; the eight seeds' spread is the same).
    results = []
    for rate_limit in (RateLimit(), None):
        draw = random.Random(7).random
        server = Server(limit=lambda _: limit, noise=lambda _p, _a, d=draw: d() < share)
        client = Client(until=40.0, rate_limit=rate_limit)
        simulate(server, [client])
        results.append(client.results["ok"])
    assert results[0] >= floor * results[1]


@pytest.mark.parametrize(("share", "retry_after", "floor"), [(0.2, 2.0, 0.35), (0.1, 5.0, 0.65)])
def test_random_429s_with_a_long_retry_after_cost_little(
    share: float, retry_after: float, floor: float
) -> None:
    # While refused calls sleep out a long Retry-After only a handful of answers come a
    # second; their share is chance, and decreases on it (3 refused of 6) held 20 % noise
    # at 0.11 of the limiter-off throughput, 10 % with `Retry-After: 5` at 0.50.
    results = []
    for rate_limit in (RateLimit(), None):
        draw = random.Random(7).random
        server = Server(noise=lambda _p, _a, d=draw: d() < share, retry_after=retry_after)
        client = Client(until=40.0, rate_limit=rate_limit)
        simulate(server, [client])
        results.append(client.results["ok"])
    assert results[0] >= floor * results[1]


@pytest.mark.parametrize(("limit", "retry_after"), [(500, None), (2000, None), (2000, 1.0)])
def test_a_limit_is_held_without_retry_after_and_at_high_rates(
    limit: int, retry_after: float | None
) -> None:
    # Without a Retry-After every full window used to pass for a storm (0.57 of 500/s);
    # at 2,000/s every overshoot restarted the ramp from min_rate (0.56).
    server = Server(limit=lambda _: limit, retry_after=retry_after)
    client = Client(until=30.0)
    simulate(server, [client])
    assert server.accepted(None, 10.0, 30.0) / 20.0 / limit >= (
        0.9 if retry_after is None else 0.75
    )
    assert server.share_refused(10.0, 30.0) <= 0.06
    # Without a Retry-After a call retries on its backoff alone: a few in 50,000 run out
    # of attempts (limiter off: 97).
    assert client.results["ok"] >= 0.999 * client.results.total()


@pytest.mark.parametrize("every", [5, 20])
def test_one_off_429s_cost_next_to_nothing(every: int) -> None:
    # A 429 (Retry-After: 0) on the first attempt of every fifth payment: noise.
    on, off = noise_on_and_off(1000, every, 0.0)
    assert on.results == {"ok": 1000}
    assert on.finished <= 1.3 * off.finished


def test_long_noise_is_learnt_and_costs_little() -> None:
    on, off = noise_on_and_off(10_000, 5, None)
    assert on.results == {"ok": 10_000}
    assert on.finished <= 1.3 * off.finished


def test_a_huge_retry_after_pauses_at_most_max_retry_after() -> None:
    # The server asks for a day; the policy's max_retry_after (2 s) caps what the
    # client waits, and a lone 429 pauses nobody else.
    def once(payment: int, attempt: int) -> bool:
        return payment == 0 and attempt == 1

    client = Client(payments=500, concurrency=8, policy=RetryPolicy(max_retry_after=2.0))
    simulate(Server(noise=once, retry_after=86400.0), [client])
    assert client.results == {"ok": 500}
    assert client.finished <= 2.5


def test_a_limit_that_moves_is_followed_both_ways() -> None:
    def limit(t: float) -> float:
        return 200 if t < 8 else 100 if t < 16 else 300

    server = Server(limit=limit)
    simulate(server, [Client(until=24.0)])
    for start, end, value in ((3.0, 8.0, 200), (11.0, 16.0, 100), (19.0, 24.0, 300)):
        assert server.accepted(None, start, end) / (end - start) / value >= 0.85
    assert server.share_refused(4.0, 24.0) <= 0.05


def test_a_limit_that_flaps() -> None:
    def limit(t: float) -> float:
        return 300 if int(t) % 4 < 2 else 100  # 300/s and 100/s, two seconds each

    server = Server(limit=limit, retry_after=None)
    client = Client(until=30.0)
    simulate(server, [client])
    # Faster than a rise is found (about 3 s), so followed at about its low value (a
    # known limit); what matters is that nothing fails and few requests are refused
    # (with the limiter off: 9,000 calls fail and 69 % of requests are 429s).
    offered = sum(limit(t + 0.5) for t in range(6, 30))
    assert server.accepted(None, 6.0, 30.0) / offered >= 0.45
    assert server.share_refused(6.0, 30.0) <= 0.07
    assert set(client.results) == {"ok"}


# -- a part of a shared limit -------------------------------------------------------------


def test_a_part_is_where_the_search_goes_on_from() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 150)  # unthrottled: no rate of its own
    limiter.share(80.0, 2)
    assert limiter.engaged and limiter.rate == 80.0
    accept(limiter, clock, 60)  # near the part for a while (the probe grows as t**3)
    assert limiter.rate == pytest.approx(80.0, rel=0.05)
    accept(limiter, clock, 200)
    assert limiter.rate is not None and limiter.rate > 80.0
    limiter.share(None, 1)  # nothing new: the rate stays
    assert limiter.rate is not None and limiter.rate > 80.0
    assert limiter.stats().fleet_size == 1 and limiter.stats().fleet_part == 80.0


def test_refusals_within_a_second_of_a_part_drop_from_the_part_not_the_meter() -> None:
    # A joiner given 500/s has accepted 2/s so far: the window the others filled in the
    # last second refuses it.  Its drop is from the part (the meter counts the time
    # before the part); it used to drop to 1.4/s and stay there for seconds.
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 2)
    limiter.share(500.0, 2)
    clock.now += 0.05
    refuse(limiter, clock, 8)  # a run of refusals: a drop
    assert limiter.rate == pytest.approx(0.7 * 500.0, rel=0.02)


def test_a_second_after_a_part_the_meter_reads_again() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    limiter.share(500.0, 2)
    accept(limiter, clock, 100, spacing=0.02)  # 50/s accepted over two seconds
    refuse(limiter, clock, 8)
    assert limiter.rate == pytest.approx(0.7 * 50.0, rel=0.1)


def test_a_part_given_during_a_storm_is_the_rate_it_ends_at() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 150)
    limiter.share(80.0, 2)
    for _ in range(8):  # a run of refusals: a hold
        clock.now += 0.01
        limiter.on_throttle(None, sent_at=clock.now - 0.005)
    clock.now += 1.5  # a probe refused past the window: a storm
    limiter.on_throttle(None, sent_at=clock.now - 0.005)
    limiter.share(30.0, 3)  # the fleet grew meanwhile
    clock.now += 2.0
    limiter.on_success(clock.now - 0.005)  # the storm is over
    assert limiter.rate == 30.0


def test_a_part_given_during_a_full_window_is_the_rate_it_ends_at() -> None:
    # A joiner's first burst overfills the window and holds it; the part given meanwhile
    # is a division of what Klavi accepted: the hold ends at it (it ended at 0.7 of it,
    # which, at 1,000/s, left the joiner at a third of its partner's rate for seconds).
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(), clock=clock, sleep=no_sleep)
    accept(limiter, clock, 15)
    refuse(limiter, clock, 8)  # the burst refused: a hold
    limiter.share(500.0, 2)
    clock.now += 1.0
    limiter.on_success(clock.now - 0.005)  # the first probe, accepted within the window
    assert limiter.rate == 500.0


def test_a_lower_part_tells_the_queued_calls_it_makes_late_at_once() -> None:
    async def main(loop: VirtualLoop) -> tuple[list[float], list[bool]]:
        limiter = RateLimiter(RateLimit(), clock=loop.time)
        limiter.share(100.0, 1)
        told: list[float] = []

        async def call() -> bool:
            got = await limiter.acquire(1.0)
            if not got:
                told.append(loop.time())
            return got

        calls = [asyncio.ensure_future(call()) for _ in range(50)]
        await asyncio.sleep(0.05)  # queued at 100/s: every one within its second
        limiter.share(5.0, 2)  # another worker joined: most can no longer go in time
        results = await asyncio.gather(*calls)
        return told, results

    told, results = run(main)
    assert 0 < results.count(True) < 15
    assert told and max(told) == pytest.approx(0.05)  # told when the part came, not later


def test_a_part_given_during_a_ramps_retry_is_the_rate_it_ends_at() -> None:
    # A ramp's retry ends in a second ramp; a part given meanwhile ends it at the part.
    limiter, clock = ramping()
    refuse(limiter, clock, _RAMP_RUN)  # refused before it found anything: a retry's hold
    assert limiter._hold is not None and limiter._hold.again
    limiter.share(40.0, 2)
    clock.now += 1.0
    limiter.on_success(clock.now - 0.005)  # the probe, accepted
    assert limiter._ramp is None and limiter.rate == 40.0


def test_a_ramp_that_found_enough_is_read_and_answers_from_before_it_are_not_counted() -> None:
    limiter, clock = ramping()
    origin = limiter._ramp.origin  # type: ignore[union-attr]
    limiter.on_success(origin - 0.01)  # an answer to a request sent before the ramp
    assert limiter._ramp is not None and limiter._ramp.accepted == 0
    accept(limiter, clock, _RAMP_FOUND, spacing=0.01)
    refuse(limiter, clock, _RAMP_RUN)  # exactly enough found: the run ends it with a reading
    assert limiter._ramp is None and limiter._reading
