"""
A fleet's division of the rate limit its workers share (one Klavi account): no NATS here.

Every worker reports, every `BEAT`, what its limiter holds: its allowed rate (None while
unthrottled), what Klavi accepted of it in the last second, and whether calls wait for
slots (it wants more than it has).  Each worker divides the same reports the same way,
so they agree without a coordinator (Google's Doorman hands out leases from a server;
here every worker computes its own lease from what all said).

- **The limit** is what Klavi accepted of the members in their last second, summed (a
  rate allowed is only a ceiling: what is accepted is the limit's).  With no member
  throttled there is no limit in sight and nothing is divided: each limiter stays as it
  is, and a worker alone is left to its own limiter.
- **A part** is max-min fair: a member not waiting for slots keeps what it uses and a
  quarter more; the others share the rest equally.
- **A member joins**: every member divides what the members hold among them all.  A
  member reporting for less than `SETTLE` is young: what it holds was taken from the
  others, so it is not counted again (the joiner, hearing the others, is young itself;
  the others, in its view, are not), and it wants its part.
- **A member leaves**: a clean stop deletes its report, and one not heard for `GONE`
  seconds by this worker's clock is gone (the members' clocks may disagree).  What it
  held goes to the others.
- Between such changes a worker corrects its rate to its part only when it is off by
  more than `TOLERANCE`, and not within `SETTLE` of a change (the others' reports must
  show it first).  In between, each worker's own search (the cubic probe past its rate,
  the drop on 429s) goes on: the probes raise the sum the next division shares, so a
  limit that rises is still found, fleet-wide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from attrs import define, frozen

__all__ = ["BEAT", "GONE", "Division", "Report", "fair_parts"]

BEAT: Final = 0.5
"""Seconds between a worker's reports."""
GONE: Final = 2.0
"""Seconds without a report after which a member has left (four beats missed)."""
SETTLE: Final = 2.5 * BEAT
"""Seconds after a change of members before a correction: every report shows it by then."""
TOLERANCE: Final = 0.2
"""A rate off its part by more than this share of it is corrected."""
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

    def held(self) -> float:
        """What it holds of the limit: what Klavi accepted of it (its rate is a ceiling)."""
        return self.accepted

    @property
    def young(self) -> bool:
        """Too new for its rate to say anything: what it holds was taken from the others."""
        return self.uptime < SETTLE


def _held(reports: dict[str, Report]) -> float:
    """What the members hold, summed; a young member's part is the others' (all young: all)."""
    old = [report.held() for report in reports.values() if not report.young]
    return sum(old) if old else sum(report.held() for report in reports.values())


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
    should be given now (None: nothing to change).  Strictly private.
    """

    def __init__(self, me: str, clock: Callable[[], float]) -> None:
        self.me = me
        self._clock = clock
        self._members: dict[str, _Member] = {}
        self._changed = -math.inf  # the last change of members
        self._due: float | None = None  # a part to give at the next `part()`
        self.size = 1
        """Members seen, this worker included."""

    def heard(self, who: str, report: Report) -> None:
        """A member's report (this worker's own included)."""
        now = self._clock()
        member = self._members.get(who)
        if member is not None:
            member.report, member.heard = report, now
            return
        # One more (or, for a joiner, one more it knows of): what the members hold,
        # divided among them all.
        self._members[who] = _Member(report, now)
        reports = {w: m.report for w, m in self._members.items()}
        alone = len(reports) < 2  # this worker alone: its own limiter decides
        self._change(now, _held(reports), throttled=_throttled(reports) and not alone)

    def left(self, who: str) -> None:
        """A member's report was deleted: it stopped."""
        member = self._members.pop(who, None)
        if member is not None and who != self.me:
            self._gone(self._clock(), member)

    def expire(self) -> None:
        """Members not heard from for `GONE` seconds have left."""
        now = self._clock()
        for who, member in list(self._members.items()):
            if who != self.me and now - member.heard >= GONE:
                del self._members[who]
                self._gone(now, member)

    def _gone(self, now: float, member: _Member) -> None:
        # What it held goes to those left.
        reports = {w: m.report for w, m in self._members.items()}
        held = _held(reports) + member.report.held()
        throttled = member.report.rate is not None or _throttled(reports)
        self._change(now, held, throttled=throttled)

    def _change(self, now: float, held: float, *, throttled: bool) -> None:
        self._changed = now
        self.size = max(len(self._members), 1)
        if not throttled or self.me not in self._members:
            self._due = None
            return
        reports = {w: m.report for w, m in self._members.items()}
        # The young members want their part: their reports are too young to say.
        for who, report in reports.items():
            if report.young:
                reports[who] = Report(report.rate, report.accepted, True, report.uptime)
        self._due = fair_parts(held, reports)[self.me]

    def part(self) -> float | None:
        """
        The part to give this worker's limiter now, or None: a change of members (given
        at once), or a correction of a rate off its part once the fleet has settled.
        """
        now = self._clock()
        self.expire()
        due, self._due = self._due, None
        if due is not None:
            return due
        mine = self._members.get(self.me)
        if mine is None or len(self._members) < 2 or now - self._changed < SETTLE:
            return None
        reports = {w: m.report for w, m in self._members.items()}
        if not _throttled(reports):
            return None
        part = fair_parts(_held(reports), reports)[self.me]
        if abs(mine.report.held() - part) <= TOLERANCE * part:
            return None
        return part


def _throttled(reports: dict[str, Report]) -> bool:
    """Whether any member's limiter holds a rate: the limit is in sight."""
    return any(report.rate is not None for report in reports.values())
