"""
Telling a Klavi outage from a bad message, and when to try again.  Pure: no I/O, and
the clock is passed in.

When a worker's cancels of `THRESHOLD` different messages in a row all failed retryably
(a 5xx, a timeout, a network failure, a 429: an outcome that is not final), the failure
is Klavi's, not the messages'.  (One message failing again and again is that message's
problem: its deliveries count, and `max_deliver` ends it.)  Naking them would spend
their deliveries on it (an 8 s outage used to end 200 requests with `max_deliver=5`)
and hammer Klavi with every redelivery.  So the worker takes no new message and holds
the ones that failed, telling the server it still works on them (their delivery counts
do not grow), and retries one of them at a time: `FIRST_PROBE` after the outage was
recognised, then at intervals doubling up to `LONGEST_PROBE`, until one is answered
(cancelled, or refused for good): Klavi is back, and every held message is retried at
once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from typing import Final, Literal

__all__ = [
    "FIRST_PROBE",
    "LONGEST_PROBE",
    "RECENT",
    "RECENT_SPAN",
    "THRESHOLD",
    "Change",
    "Outage",
]

Change = Literal["began", "ended"] | None

THRESHOLD: Final = 5
"""Different messages whose cancels failed retryably, with no success between: an
outage.  One message Klavi keeps failing never makes one, alone or among successes."""
FIRST_PROBE: Final = 1.0
"""Seconds from recognising an outage to the first probe."""
LONGEST_PROBE: Final = 30.0
"""The interval between probes doubles up to this many seconds."""
RECENT: Final = 2 * THRESHOLD
"""The last cancels over which Klavi is `healthy`: a failure then is the message's own."""
RECENT_SPAN: Final = 60.0
"""Seconds after which a cancel's outcome no longer says whether Klavi is healthy (the
answers from before a slow outage must not make its failures look like the messages')."""


class Outage:
    """
    One worker's view of Klavi: up, or down and when to probe next.  Strictly private.

    `record()` every cancel's outcome; while `down`, start a probe when `probe_due()`
    and report its failure with `probe_failed()` (a success ends the outage through
    `record()`).
    """

    __slots__ = ("_failing", "_interval", "_recent", "down", "next_probe", "probing")

    def __init__(self) -> None:
        self._failing: set[Hashable] = set()
        self._interval = FIRST_PROBE
        self.down = False
        self.next_probe = math.inf
        self.probing = False
        """A probe is running: no other starts until it ends."""
        # (message, answered, when) of the last cancels
        self._recent: deque[tuple[Hashable, bool, float]] = deque(maxlen=RECENT)

    def record(self, failed: bool, now: float, message: Hashable = None) -> Change:
        """
        Count one cancel's outcome (*failed*: retryably) for *message* (any name that
        tells messages apart); say if an outage began or ended.
        """
        if not failed:
            self._failing.clear()
            if not self.down:
                self._recent.append((message, True, now))
                return None
            self.down = self.probing = False
            self.next_probe = math.inf
            # Trusted again only once it answers most of what it is asked.
            self._recent.extend((object(), False, now) for _ in range(RECENT))
            self._recent.append((message, True, now))
            return "ended"
        self._recent.append((message, False, now))
        self._failing.add(message)
        if self.down or len(self._failing) < THRESHOLD:
            return None
        self.begin(now)
        return "began"

    def begin(self, now: float) -> None:
        """Take Klavi as down now (what the worker saw said so without `THRESHOLD`)."""
        self._failing.clear()
        self.down = True
        self._interval = FIRST_PROBE
        self.next_probe = now + FIRST_PROBE

    def healthy(self, now: float, *, shown: bool = False) -> bool:
        """
        Klavi answered at least half of the messages among the last `RECENT` cancels of
        the last `RECENT_SPAN` seconds, or failed only one of them (whose failures are
        its own).  A message that failed again and again counts once.  *shown*: and it
        answered one at least (nothing asked is no sign of health).
        """
        latest = {message: ok for message, ok, at in self._recent if now - at <= RECENT_SPAN}
        answered = sum(latest.values())
        if shown and not answered:
            return False
        return len(latest) - answered <= 1 or 2 * answered >= len(latest)

    def probe_due(self, now: float) -> bool:
        """Whether to start a probe now (and it is marked as running)."""
        if not self.down or self.probing or now < self.next_probe:
            return False
        self.probing = True
        return True

    def probe_failed(self, now: float, *, told: bool = True) -> None:
        """
        The probe failed (*told*: Klavi failed it; else it could not tell, e.g. a poison
        message): the next one comes twice as late, or at once.
        """
        self.probing = False
        if self.down and told:
            self._interval = min(2 * self._interval, LONGEST_PROBE)
            self.next_probe = now + self._interval
