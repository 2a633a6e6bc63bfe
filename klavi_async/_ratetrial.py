"""
A decrease of the rate on trial: did it make 429s rarer (the rate was the cause), or are
they refused as often as before (noise)?  `_ratelimit.RateLimiter` makes the decrease,
feeds the trial the answers to requests sent after it, and acts on the verdict.
"""

from __future__ import annotations

_Saved = tuple[tuple[float, float, float, float], bool, bool]
"""A limiter's rate state (`_Cubic.save()`, whether it has a reading, whether engaged)."""

_EVIDENCE = 3
"""Throttles within the last second below which no share is rate evidence."""
_TRIAL = 50
"""Answers to requests sent after a decrease that judge it (noise or rate)."""
_TRIAL_REFUSED = 5
"""Refusals among them below which a decrease is never judged noise (a handful of 429s
from other processes' probes must not undo it)."""
_TRIAL_MORE = 4
"""Fewer refusals than `_TRIAL_REFUSED` are waited for over up to this many `_TRIAL`s."""
_TRIAL_WAIT = 3.0
"""Seconds after a decrease by which it is judged on what answers there are (a low rate)."""
_TRIAL_FEWEST = 20
"""Fewer answers than this by then judge nothing: the decrease stands."""
_TRIAL_DELAY = 1.0
"""A decrease is judged on requests sent this long after it: a window filled before it (a
second's, as Klavi's TPS limit is counted) refuses for that long whatever is sent."""
_TRIAL_SAME = 0.85
"""A decrease after which the share refused stays above this part of what it was did not
help: the 429s were noise."""


class _Trial:
    """
    A decrease on trial: the answers to requests sent after it, and what was before it
    (`saved`, the limiter's state to restore if it turns out to be noise).
    `run`: the decrease was made on a run of refusals (which a storm also starts with).
    """

    __slots__ = ("at", "bad", "last_bad", "ok", "repeats", "run", "saved", "share")

    def __init__(self, at: float, share: float, saved: _Saved, *, run: bool) -> None:
        self.at, self.share, self.run, self.saved = at, share, run, saved
        self.ok = self.bad = self.repeats = 0
        self.last_bad = False

    def record(self, refused: bool) -> None:
        """Count one answer; a refusal right after a refusal is a repeat."""
        if refused:
            self.bad += 1
            self.repeats += self.last_bad
        else:
            self.ok += 1
        self.last_bad = refused

    def verdict(self, now: float) -> bool | None:
        """
        None while there is too little to judge; else whether the 429s stayed as they were
        (True: noise, so far) or became rarer (False: the decrease helped, or, at a rate
        too low to judge within `_TRIAL_WAIT`, stands).

        Refusals rarer than `_TRIAL_REFUSED` in `_TRIAL` answers (but some) are waited for
        up to `_TRIAL_MORE` times as many (noise just over the evidence threshold must be
        judged too); none at all: it helped.
        """
        answers = self.ok + self.bad
        least = _TRIAL_REFUSED
        more = 0 < self.bad < _TRIAL_REFUSED and answers < _TRIAL_MORE * _TRIAL
        if answers < _TRIAL or more:
            if now - self.at <= _TRIAL_WAIT:
                return None
            if answers < _TRIAL_FEWEST:  # too few to judge: the decrease stands
                return False
            least = _EVIDENCE
        share = self.bad / answers
        # Noise refuses as often whatever the rate, and at random: a refusal follows a
        # refusal about as often as the share.  A window that others keep full refuses
        # in runs.
        return (
            self.bad >= least
            and share >= _TRIAL_SAME * self.share
            and self.repeats <= 2 * share * self.bad + 1
        )
