"""
A client-side rate limiter: send at the rate the server accepts, not into its 429s.

`RateLimit` is the frozen setting; `RateLimiter` the runtime state, one per client and
shared by all its calls.  The arithmetic lives in `_ratecurve` (what rate when); here are
the decisions and the waiting.  Send times are handed out by virtual scheduling (GCRA):
the next request may go at `max(tat, pause_until)`, and taking it moves `tat` on by one
interval.

What a 429 (or 529) means is decided from the answers around it, never from one alone:

- a lone one, or a few among accepted answers, is noise: the call's own retry waits out
  its Retry-After and nothing else changes (but a lone one after a clean second ends the
  cubic rule's probe past the last good rate, where the limit was: `_end_probe`);
- a share of the last second's answers (`_SHARE`, or more than the noise measured) is
  rate evidence: the rate drops to `_BETA` of the accepted rate (cubic rule).  The drop is
  on trial: if the answers to requests sent a second later are refused about as often as
  noise would be, twice in a row, the 429s were not about rate, the drops are undone and
  that share is remembered as noise;
- `_RUN` refusals in a row (more among noisy answers: longer than chance makes) mean the
  server refuses whatever is sent.  With a rate learnt, that is first a drop (the cubic
  rule's overshoot at a high rate comes back as a run); otherwise, or if a run follows
  the drop, a hold.  Nothing is sent until the Retry-After (at most the policy's
  `max_retry_after`, passed in by the caller; `_PROBE_FIRST` without one) has passed
  since the first refusal, then one probe at a time.  A probe refused more than
  `_WINDOW` after the run began makes it a storm, which says nothing about the rate: the
  first accepted probe restores the rate from before it (or unthrottled).  Otherwise the
  window was full: the rate goes on from `_BETA` of the rate accepted when it filled, or,
  unthrottled before, a ramp from `min_rate` finds this process's part (processes refused
  by the same window ramp in step).  Probes go a Retry-After apart, or doubling to
  `_PROBE_MAX` without one.

Phases: free (unthrottled; the request path pays one attribute check, `on_success()` a
clock read and a count), ramp (a `_Ramp`, back to free once it keeps no call waiting),
cubic (`_Cubic`), each possibly under a hold.

Waiters queue FIFO and only the head sleeps, to its own slot; taking it passes the turn
to the next one.  So there is one timer however many wait (no thundering herd), and a
rate change or a pause reaches every queued call at once, since each head computes its
slot when it gets the turn (a change that lets calls go sooner wakes the head).  A
`priority` call queues ahead of every call of a lower one but the head: a status read
(a reconciliation read, which settles a money outcome), then a retry.

The client (`_attempt`) takes a slot before every request it sends for cancels and status
reads when the limiter is `engaged` (a slot past the deadline fails the attempt as
RATE_LIMITED, nothing sent), and reports every HTTP answer with `on_response()`.
"""

from __future__ import annotations

import math

from ._ratecurve import _BUCKET, _MARGIN, _RAMP_FOUND, _Cubic, _Ramp
from ._ratequeue import PRIORITY_FIRST, PRIORITY_READ, PRIORITY_RETRY, _Hold, _Queue
from ._ratesettings import MAX_RATE, MIN_RATE, RateLimit, RateLimitStats, rate_value
from ._ratetrial import _EVIDENCE, _TRIAL_DELAY, _Trial

__all__ = [
    "MAX_RATE",
    "MIN_RATE",
    "PRIORITY_FIRST",
    "PRIORITY_READ",
    "PRIORITY_RETRY",
    "RateLimit",
    "RateLimitStats",
    "RateLimiter",
    "rate_value",
]

_RAMP_IDLE = 1.0
"""A ramp that has kept no call waiting for this long is over: the limit is not in sight."""
_RUN = 8
"""Refusals in a row (no accepted answer between them) that start a hold.  Noise refusing
a fifth of the requests does that once in 390,000 answers; a full window in milliseconds."""
_RUN_CHANCE = 1e-5
"""How rarely noise may make a run that holds: among answers refused at random at a share
p, a run must be `log(_RUN_CHANCE) / log(p)` long (p = 0.4: 13; 0.2 and under: `_RUN`)."""
_RAMP_RUN = 4
"""Refusals in a row that end a ramp: it has filled the window (noise refusing a fifth of
the requests does that once in 600 answers, a ramp's first second about 70)."""
_FEWEST = 20
"""Answers within the last second below which no share is rate evidence: a handful (callers
asleep in long Retry-Afters) makes any share by chance; a full window still makes a run."""
_FULL = 0.5
"""The share of the last second's answers refused that is a full window, as a run is."""
_SHARE = 0.075
"""The share of the last second's answers refused that is rate evidence (unless 1.5 times
the noise measured is higher; at most `_FULL`).  Measured (simulated): at 3 %, or 3 % only
while the cubic rule probes past the last good rate, the steady 429s fall from 3.7-4.9 %
to 1.7-2.6 % of requests, but a process joining another at 1,000/s gets 0.11-0.61 of it
in 12 seeds, where at 7.5 % it gets 0.36-0.54."""
_RISEN = 1.02
"""A probe's first refusal ends it only where the last second accepted at most this much
more than the last good rate: beyond, the limit has risen and the share rule judges."""
_NOISE_HALF_LIFE = 10.0
"""Seconds over which the noise remembered halves: a limit that appears later is seen, and
steady noise is judged again about this often (other processes' probes past a shared
limit can pass for noise now and then: what they make us ignore is soon forgotten)."""
_WINDOW = 1.0
"""The span (s) over which Klavi counts its TPS limit: a full window refuses for this long
whatever is sent; refusals past it are a storm."""
_PROBE_FIRST = 0.25
"""The pause before the first probe of a hold when the server gave no Retry-After."""
_PROBE_MAX = 2.0
"""Without a Retry-After the pause between probes doubles up to this (so a storm that has
ended costs at most this much more)."""


class RateLimiter(_Queue):
    """
    One client's limiter: every request takes a slot (`_Queue`), and every answer says
    something about the rate (here).  Strictly private.

    Not thread-safe: one limiter per event loop.  `clock` must be monotonic; `sleep` is
    awaited by the one call at the head of the queue.
    """

    __slots__ = ()

    # -- what the answers say ----------------------------------------------------------

    def on_response(self, status: int, retry_after: float | None, sent_at: float) -> None:
        """Count an HTTP response: a 429 or 529 is a throttle, any other status a success."""
        if status == 429 or status == 529:
            self.on_throttle(retry_after, sent_at=sent_at)
        else:
            self.on_success(sent_at)

    def on_throttle(
        self, retry_after: float | None = None, *, sent_at: float | None = None
    ) -> None:
        """
        Count a 429/529 for a request sent at `sent_at`, which waits `retry_after` (already
        capped by the caller's policy) before its own retry.

        Only a request sent after the last change can cause another one: the burst of
        throttles answering requests sent at the old rate is one signal, not many.
        """
        now = self._clock()
        self._throttles += 1
        meter = self._meter
        if now >= meter.end:
            meter.roll(now)
        meter.bad += 1
        if sent_at is None:
            fresh = now - self._last_change >= _BUCKET
        else:  # sent in the very tick of the last change: it may have been sent before it
            fresh = sent_at > self._last_change
        if not fresh:
            return
        # A Retry-After under the first probe's pause would have probes overlap: none.
        wait = retry_after if retry_after is not None and retry_after >= _PROBE_FIRST else None
        hold = self._hold
        if hold is not None:  # a probe refused: the server still refuses whatever is sent
            # A window is counted over a second: only a refusal after that is a storm.
            hold.storm = hold.storm or now - hold.since >= _WINDOW
            interval = wait if wait is not None else min(2 * hold.interval, _PROBE_MAX)
            hold.interval = min(interval, self._max_pause)
            self._last_change = now
            self._pause(now + hold.interval)
            return
        if self._run == 0:
            self._run_start = now
        self._run += 1
        self._count_for_trial(sent_at, True, now)
        if self._run >= _RUN and self._run >= self._run_needed(now):
            if self._reading and self._adaptive and self._trial is None:
                # The cubic rule past the limit: at a high rate its overshoot comes back as
                # a run.  A decrease first; a run of requests sent after it holds.
                self._run = 0
                self._decrease(now, self._meter.counts(now), run=True)
            else:
                self._start_hold(now, wait, origin=self._run_start)
        elif self._adaptive:
            self._weigh(now, wait)

    def _run_needed(self, now: float) -> float:
        # Noise refusing a share p of the requests makes runs of k once in p**-k answers:
        # among mostly accepted answers a run must be longer than that makes by chance.
        accepted, refused = self._meter.counts(now)
        share = (refused - self._run) / max(accepted + refused - self._run, 1.0)
        if accepted < _RUN or share <= 0.0 or share >= _FULL:
            return _RUN
        return math.log(_RUN_CHANCE) / math.log(share)

    def _start_hold(self, now: float, wait: float | None, *, origin: float) -> _Hold:
        # Send nothing until the pause has passed since `origin` (the run's first refusal),
        # then probe.  Whether it was a full window or a storm, the probes tell.
        pause = min(_PROBE_FIRST if wait is None else wait, self._max_pause)
        hold = _Hold(origin, origin + pause, pause)
        if self._reading:  # as a decrease would read it
            hold.reading = self._accepted(now)
        trial = self._trial
        if trial is not None and trial.run:  # the storm's start: its end restores before it
            hold.saved = trial.saved
        self._hold = hold
        self._trial = self._suspect = self._measured_at = None
        self._run, self._last_change = 0, now
        self.engaged = True
        self._pause(max(hold.origin, now))
        return hold

    def _weigh(self, now: float, wait: float | None) -> None:
        # A throttle among accepted answers: rate evidence only as a share of them.
        accepted, refused = counts = self._meter.counts(now)
        share = refused / (accepted + refused)
        ramp = self._ramp
        if ramp is not None:  # the ramp found the limit: read this process's part
            # A full window refuses whatever is sent: only a run ends the ramp (not noise,
            # nor the refusals from before it, which the meter still holds).
            if self._run >= _RAMP_RUN and ramp.accepted < _RAMP_FOUND and not ramp.again:
                self._ramp = None  # the window is others' (or a storm): once more, later
                self._start_hold(now, wait, origin=now).again = True
            elif self._run >= _RAMP_RUN:
                self._ramp, self._reading = None, True
                self._cubic.decrease(now, self._meter.rate(now))
                # The ramp overfilled the window: let it drain, then go on at the reading.
                hold = self._start_hold(now, wait, origin=now)
                hold.storm = hold.drain = True  # a release goes on at the reading
                self._measured_at = now
            return
        self._end_probe(now, counts)
        if refused < _EVIDENCE or accepted < 1.0:  # nothing accepted says nothing
            return
        if share >= _FULL and refused >= 2 * _RUN and self._run >= 2:  # most refused: a run
            self._start_hold(now, wait, origin=self._run_start)
            return
        if (
            self._trial is not None
            or share < self._threshold(now)
            or (accepted + refused < _FEWEST and not self._waiters)
            or now - self._meter.started < _WINDOW  # a start: a second's answers, or a run
            or now - self._last_change < _WINDOW  # answers from before the last change
        ):
            return
        self._decrease(now, counts, run=False)

    def _end_probe(self, now: float, counts: tuple[float, float]) -> None:
        # The first refusal after a clean second, with the cubic rule probing past the
        # last good rate and no noise known: the probe has found the limit.  Back to just
        # under what the last second accepted, the probe starting again from there.  Not a
        # decrease: one 429 is not rate evidence, and a lone one (noise) costs a probe.
        # Only where the limit was: a second that accepted more than 2 % past it says the
        # limit has risen, and a lone 429 there is noise (ending the probe at each one,
        # 0.45 % noise made a rise from 100/s to 1,000/s take 9-12 s instead of 3-4).
        cubic, (accepted, refused) = self._cubic, counts
        if (
            refused <= 1.0
            and accepted >= _FEWEST
            and self._reading
            and self._trial is None
            and cubic.rate > cubic.w_max
            and self._threshold(now) <= _SHARE
        ):
            found = min(cubic.rate, self._meter.rate(now)) * (1 - _MARGIN)
            if found <= cubic.w_max * _RISEN:
                cubic.hold(now, max(cubic.w_max, found))

    def _decrease(self, now: float, counts: tuple[float, float], *, run: bool) -> None:
        # Rate evidence: to `_BETA` of the accepted rate, on trial.
        # The share judged against is at most the threshold it crossed: noise that crossed
        # it was a lucky second, the share after it is not.  A decrease that helped leaves
        # less than that.
        accepted, refused = counts
        share = min(refused / max(accepted + refused, 1.0), self._threshold(now))
        trial = _Trial(now, share, self._save(), run=run)
        current = self._accepted(now)
        self._reading = self.engaged = True
        self._cubic.decrease(now, current)
        self._last_change = now
        self._trial = trial
        if self._waiters:
            self._refuse_late_waiters()

    def _accepted(self, now: float) -> float:
        # What was accepted over the last second, at most what was allowed.  Within a
        # second of a part given to a limiter with no rate of its own (`share`: a joiner),
        # the part: the meter counts the time before it, when it had none.
        if now - self._shared_at < _WINDOW:
            return self._cubic.rate
        rate = self._meter.rate(now)
        return min(rate, self._cubic.rate) if self._reading else rate

    def _threshold(self, now: float) -> float:
        noise = self._noise * math.exp2((self._noise_at - now) / _NOISE_HALF_LIFE)
        return min(max(_SHARE, 1.5 * noise), _FULL)

    def _count_for_trial(self, sent_at: float | None, refused: bool, now: float) -> None:
        # Only requests sent `_TRIAL_DELAY` after the decrease, when the window it
        # found full has moved on, say whether it helped.
        trial = self._trial
        if trial is not None and (sent_at is None or sent_at >= trial.at + _TRIAL_DELAY):
            trial.record(refused)
            self._judge(trial, now)

    def _judge(self, trial: _Trial, now: float) -> None:
        # Enough answers to requests sent after the decrease: did it make 429s rarer?
        same = trial.verdict(now)
        if same is None:
            return
        self._trial = None
        if not trial.bad:  # it helped: the probe the trial held back starts from nothing
            self._cubic.resume(now)
        # Noise is steady: only two decreases in a row that changed nothing undo the
        # second (other processes' probes past a shared limit make one now and then).
        suspect = self._suspect
        self._suspect = (suspect or trial) if same else None
        if same and suspect is not None:  # back to before the first of the two
            self._suspect = None
            self._restore(suspect.saved)
            answers = trial.ok + trial.bad + suspect.ok + suspect.bad  # noise over both
            self._noise, self._noise_at = (trial.bad + suspect.bad) / answers, now
            self._wake()

    def on_success(self, sent_at: float | None = None) -> None:
        """Count a response that was not a throttle; the allowed rate may grow."""
        now = self._clock()
        meter = self._meter
        if now >= meter.end:
            meter.roll(now)
        meter.ok += 1
        self._run = 0
        if not self.engaged:
            return
        fresh = sent_at is None or sent_at > self._last_change
        hold = self._hold
        if hold is not None:
            if fresh:
                self._release(hold, now)
            elif self._measured_at is not None:  # the ramp's last answers, still coming
                self._complete_reading(now)
            return
        self._count_for_trial(sent_at, False, now)
        if self._reading and self._adaptive:
            if self._measured_at is not None:
                self._complete_reading(now)
            cap = 2.0 * meter.rate(now)
            if self._trial is not None:  # judged at the rate it set: no probe past w_max
                cap = min(cap, self._cubic.w_max)
            self._cubic.grow(now, cap)
        elif self._ramp is not None:
            self._ramp.accepted += fresh  # an answer to a request sent on the ramp
            self._end_ramp_unless_needed(self._ramp, now)

    def _release(self, hold: _Hold, now: float) -> None:
        # A probe was accepted.  After a storm the rate is what it was before (a ramp's
        # retry: its last try).  After a full window the rate is lowered from the reading
        # taken when it filled, or, with none (unthrottled before), a ramp finds its part.
        self._hold, self._last_change = None, now
        self._pause_until = -math.inf
        if (hold.storm and not hold.again) or not self._adaptive:
            if hold.saved is not None:
                self._restore(hold.saved)
            else:
                self.engaged = self._capped or self._reading or self._ramp is not None
            if self._reading and self._adaptive and not hold.drain:
                # From that rate on, not from where the probe would have grown to since.
                self._cubic.hold(now, self._cubic.rate)
        elif hold.reading is not None:
            self._cubic.decrease(now, hold.reading)
        else:
            # From the first probe (all refused by one window ramp in step), unless later.
            start = hold.origin if now - hold.origin < _WINDOW else now
            cubic = self._cubic
            self._ramp = _Ramp(start, cubic.min_rate, cubic.max_rate, again=hold.again)
            self._reading = False
        self._wake()

    def _end_ramp_unless_needed(self, ramp: _Ramp, now: float) -> None:
        # A ramp at `max_rate` found no limit below it: the cubic rule takes over there.  One
        # that kept no call waiting for `_RAMP_IDLE`, with none queued and no pause running,
        # found no limit either (the refusals were not the rate, or the traffic stopped):
        # free again.
        if ramp.rate(now) >= ramp.cap:  # at max_rate: the cubic rule from there on
            self._ramp, self._reading = None, True
            self._cubic.hold(now, ramp.cap)
        elif (
            not self._waiters
            and now >= self._pause_until
            and now - max(self._last_wait, ramp.origin) >= _RAMP_IDLE
        ):
            self._ramp = None
            self._cubic = _Cubic(self._cubic.min_rate, self._cubic.max_rate)
            self.engaged = self._capped

    def _complete_reading(self, now: float) -> None:
        # Answers still arriving within a second of the ramp's end complete its reading.
        if now - self._measured_at > 1.0:  # type: ignore[operator]  # the caller checked
            self._measured_at = None
            return
        reading = self._meter.rate(now)
        if reading * (1 - _MARGIN) > self._cubic.w_max:
            self._cubic.decrease(self._measured_at, reading)  # type: ignore[arg-type]
