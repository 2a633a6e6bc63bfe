"""
A fleet's division of the rate limit its workers share (one Klavi account): no NATS here.

Every worker reports, every `BEAT`, what its limiter holds: its allowed rate (None while
unthrottled), what Klavi accepted of it in the last second, and whether calls wait for
slots (it wants more than it has).  Each worker divides the same reports the same way,
so they agree without a coordinator (Google's Doorman hands out leases from a server;
here every worker computes its own lease from what all said).

- **The limit**, when the members change, is what Klavi accepted of them in their last
  second, summed: Klavi's own count, so what a joiner took from the others is never
  counted twice (a rate allowed is only a ceiling).  With no member throttled there is
  no limit in sight and nothing is divided, and a worker alone is left to its own
  limiter; with less than `MIN_PART` accepted, less than `DEPRESSED` of the rates the
  members hold (a storm, a hold, a probe running far past the limit), or more than
  `NOISY` of their answers refused (noise), not yet: the change is divided at the first
  report within `PENDING` after which it can be read, or not at all.
- **A part** is max-min fair: a member not waiting for slots keeps what it uses and a
  quarter more; the others share the rest equally.  A member reporting for less than
  `SETTLE` is young, and wants its part whatever it says.
- **A member joins**: every member divides the limit among them all (the joiner, seeing
  the others' reports when it starts, takes its part before its first request).  A join
  lowers the others' parts, so it needs the limit in sight (a member refused within
  `IN_SIGHT`): below it, what they accept is what their last parts allow.
- **A member leaves**: a clean stop deletes its report, and one not heard for `GONE`
  seconds by this worker's clock is gone (the members' clocks may disagree).  What it
  had accepted goes to the others.
- **Between changes** nothing is divided: each worker's own search goes on (the probe
  past its part, the drop on 429s, the noise verdicts), so a limit that moves is still
  followed, and the fleet behaves as its workers alone would.  (Correcting rates towards
  fair parts every beat was tried: it undid the limiters' drops and noise verdicts, and
  under 10-20 % random 429s or a storm it cost a third to a half of the goodput.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from attrs import define, evolve, frozen

__all__ = ["BEAT", "GONE", "Division", "Report", "fair_parts"]

BEAT: Final = 0.5
"""Seconds between a worker's reports."""
GONE: Final = 2.0
"""Seconds without a report after which a member has left (four beats missed)."""
SETTLE: Final = 2.5 * BEAT
"""Seconds a member reports for before its report says what it holds (it is young)."""
MIN_PART: Final = 1.0
"""Requests per second under which a part is not given (nothing accepted: a storm, or
no traffic, says nothing of the limit)."""
DEPRESSED: Final = 0.5
"""Accepted less than this share of the rates the members hold, a change divides
nothing: a storm or a hold refuses what they send, and says nothing of the limit."""
NOISY: Final = 0.1
"""Refused more than this share of their answers over three seconds (the settled
members' mean), a change divides nothing: among noise (a gateway refusing a fifth of the
requests at random) what was accepted is no reading of the limit, and a division of it
left two workers at a tenth of it.  At a steady limit the members' refusals are about
5 %."""
IN_SIGHT: Final = 3.0
"""Seconds since Klavi last refused a member within which the limit is in sight: what
the members accept is the limit, not only what their rates allow (at a steady limit
each member meets it every second or two)."""
PENDING: Final = 3.0
"""Seconds within which a change not divided at once is divided when it can be read;
after that the limiters have found their own way, and a division would come from
nowhere."""
HEADROOM: Final = 1.25
"""A member not waiting for slots keeps what it uses times this."""


@frozen
class Report:
    """What one worker's limiter holds, as it reported it."""

    rate: float | None
    """Its allowed rate; None while unthrottled."""
    accepted: float
    """Answers Klavi accepted in its last second."""
    wanting: bool
    """Calls waited for slots: it would send more than its rate."""
    uptime: float
    """Seconds it has been reporting (its own count: no clock is compared)."""
    refused: float = 0.0
    """The share of its answers Klavi refused (429, 529) over its last three seconds."""
    calm: float = 0.0
    """Seconds since Klavi last refused one of its answers."""

    def per_second(self) -> float:
        """What it accepted, per second: a member reporting for less than a second has
        counted less than a second (a batch that lived a second once left its part to
        the others at a quarter of its rate, and twenty of them in turn took a worker
        down to 1/s)."""
        return self.accepted / min(max(self.uptime, BEAT), 1.0)

    def level(self) -> float:
        """The rate it holds: its allowed rate, or (unthrottled) what it had accepted."""
        return self.per_second() if self.rate is None else self.rate

    @property
    def young(self) -> bool:
        """Too new for its rate to say anything: what it holds was taken from the others."""
        return self.uptime < SETTLE


def _held(reports: dict[str, Report]) -> float:
    """What Klavi accepted of the members in their last second, summed: the limit, as
    far as it is in sight.  Acceptances are Klavi's own count, so what a joiner took from
    the others is never counted twice."""
    return sum(report.per_second() for report in reports.values())


def _level(reports: dict[str, Report]) -> float:
    """The rates the members hold (an unthrottled one: what it had accepted), summed."""
    return sum(report.level() for report in reports.values())


def fair_parts(limit: float, reports: dict[str, Report]) -> dict[str, float]:
    """
    *limit* divided max-min fairly: members not wanting more get what they use (times
    `HEADROOM`), while that is under an equal part; the rest share what is left equally.
    """
    demands = {
        who: math.inf if report.wanting else report.accepted * HEADROOM
        for who, report in reports.items()
    }
    parts: dict[str, float] = {}
    left, waiting = limit, sorted(demands, key=lambda who: (demands[who], who))
    for number, who in enumerate(waiting):
        share = left / (len(waiting) - number)
        parts[who] = min(demands[who], share)
        left -= parts[who]
    return parts


@define
class _Member:
    report: Report
    heard: float  # by this worker's clock


class Division:
    """
    One worker's view of its fleet and its part.  `heard()` and `left()` take the
    members' reports as they come; `part()` says, every beat, what this worker's limiter
    should be given now (None: nothing new).  Strictly private.
    """

    def __init__(self, me: str, clock: Callable[[], float]) -> None:
        self.me = me
        self._clock = clock
        self._members: dict[str, _Member] = {}
        self._due: float | None = None  # a part to give at the next `part()`
        self._pending: float | None = None  # when a change could not be divided at once
        self.size = 1
        """Members seen, this worker included."""

    def heard(self, who: str, report: Report) -> None:
        """A member's report (this worker's own included)."""
        now = self._clock()
        member = self._members.get(who)
        if member is not None:
            member.report, member.heard = report, now
            if self._pending is not None:  # a change not divided yet: now, if it can be
                if now - self._pending < PENDING:  # read (and is not too old)
                    self._divide_again()
                else:
                    self._pending = None
            return
        # One more (or, for a joiner, one more it knows of): what the members hold,
        # divided among them all.
        self._members[who] = _Member(report, now)
        self._pending = None  # a new change: its own `PENDING` from now
        self._divide_again()

    def _divide_again(self) -> None:
        # What the members hold now, divided among them all (alone: its limiter decides).
        reports = self._reports()
        throttled = _throttled(reports) and len(reports) >= 2
        self._change(reports, _held(reports), _level(reports), throttled=throttled, join=True)

    def left(self, who: str) -> None:
        """A member's report was deleted: it stopped, and its last report is fresh."""
        member = self._members.pop(who, None)
        if member is not None and who != self.me:
            self._gone(member, fresh=True)

    def touch(self) -> None:
        """Take every member as heard now: this worker could not hear (the broker away)."""
        now = self._clock()
        for member in self._members.values():
            member.heard = now

    def expire(self) -> None:
        """Members not heard from for `GONE` seconds have left."""
        now = self._clock()
        for who, member in list(self._members.items()):
            if who != self.me and now - member.heard >= GONE:
                del self._members[who]
                self._gone(member, fresh=False)

    def _gone(self, member: _Member, *, fresh: bool) -> None:
        # What it had accepted goes to those left.  Unheard for `GONE`, what it said is
        # that old: the others have taken what it no longer sent since (counting it
        # again gave one worker 141/s of a 100/s limit), so only theirs is divided.
        reports = self._reports()
        held = _held(reports) + (member.report.per_second() if fresh else 0.0)
        level = _level(reports) + (member.report.level() if fresh else 0.0)
        throttled = member.report.rate is not None or _throttled(reports)
        self._pending = None  # a new change: its own `PENDING` from now
        self._change(reports, held, level, throttled=throttled, join=False)

    def _reports(self) -> dict[str, Report]:
        return {who: member.report for who, member in self._members.items()}

    def _change(
        self,
        reports: dict[str, Report],
        held: float,
        level: float,
        *,
        throttled: bool,
        join: bool,
    ) -> None:
        """
        The members changed (now *reports*): divide *held*, if it can be read.  A join
        lowers the members' parts, so it needs the limit in sight: Klavi refusing some of
        their answers within `IN_SIGHT`.  What they accept below the limit is only what
        their rates allow (a division before left them there): 20 one-second batches
        joining in turn once took a worker down to 1/s, a half of a half at a time.
        """
        self.size = max(len(reports), 1)
        pending, self._pending = self._pending, None
        if not throttled or self.me not in reports:
            self._due = None  # nothing to divide: no limit in sight
            return
        # The young's refusals are their first burst into a full window, not noise.
        settled = [report.refused for report in reports.values() if not report.young]
        refused = sum(settled) / max(len(settled), 1)
        in_sight = any(report.calm < IN_SIGHT for report in reports.values())
        if held < max(MIN_PART, DEPRESSED * level) or refused > NOISY or (join and not in_sight):
            # A storm, a hold, noise, the limit not in sight: no reading now.  The change
            # is divided if one can be read at a later report within `PENDING`.
            self._due = None
            self._pending = self._clock() if pending is None else pending
            return
        # The young members want their part: their reports are too young to say.
        for who, report in reports.items():
            if report.young:
                reports[who] = evolve(report, wanting=True)
        part = fair_parts(held, reports)[self.me]
        # Under `MIN_PART` (an idle member's part: what it uses, nothing) its limiter stays.
        self._due = part if part >= MIN_PART else None

    def part(self) -> float | None:
        """The part to give this worker's limiter now (after a change of members), or None."""
        self.expire()
        due, self._due = self._due, None
        return due


def _throttled(reports: dict[str, Report]) -> bool:
    """Whether any member's limiter holds a rate: the limit is in sight."""
    return any(report.rate is not None for report in reports.values())
