"""
The events seam: what the cancel path tells its subscribers.

Strictly private (no public API yet).  The cancel path emits frozen, slotted events to
the subscribers of its client: logging is one (`_logging.LogSubscriber`, always there),
the test suite's leak guard another, OpenTelemetry will be a third.

Cost: an event is built only after `Events.wants(level)` said someone listens at its
level, so with logging off (the usual production setting below WARNING) the hot path
pays one cheap check per place and builds nothing.

Call scopes: `CallStarted` and `CallEnded` bracket each public call (one cancel, one
status read) at `TRACE`, a level below DEBUG that logging never enables in practice, so
they are built only when a subscriber such as OpenTelemetry asks for them; the call then
runs in a `try`/`finally`, so `CallEnded` comes even when the call is cancelled.

Safety: events never carry the token, the secret key or a full document.  `CallInfo`
masks the document and clips the payment id when it is built; `Attempt`s and messages
are already scrubbed.  A result event carries the result the caller gets; its `body` is
the server's JSON, for reading, not for exporting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from attrs import frozen

from ._documents import clip_kept, mask_document
from ._errors import CancelFailed
from ._kinds import ErrorKind
from ._results import Attempt, Cancelled, PaymentStatus

if TYPE_CHECKING:
    from ._errors import KlaviError

__all__ = [
    "DEBUG",
    "TRACE",
    "INFO",
    "WARNING",
    "AttemptEnded",
    "BudgetRefused",
    "CallEnded",
    "CallInfo",
    "CallStarted",
    "CancelGaveUp",
    "CancelRejected",
    "CancelSucceeded",
    "Event",
    "Events",
    "RateLimitWait",
    "Reconciled",
    "RetryScheduled",
    "StatusEnded",
    "Subscriber",
    "TokenFailed",
    "TokenRefreshed",
    "default_subscribers",
]

TRACE = 5
"""Below DEBUG: the call-scope events, wanted by telemetry and never by usual logging."""
DEBUG = logging.DEBUG
INFO = logging.INFO
WARNING = logging.WARNING


@frozen(kw_only=True)
class CallInfo:
    """Which call an event is about, masked when built."""

    payment_id: str
    """The payment id, documents masked and clipped (a CPF passed as the id shows masked)."""
    interaction_id: str
    """The `x-fapi-interaction-id` every attempt of the call sent."""
    document: str | None = None
    """The `cancelled_by` document, masked (`***.982.247-**`); None for reads and auth."""

    @classmethod
    def of(cls, payment_id: str, interaction_id: str, document: str | None) -> CallInfo:
        """Build from the raw values: this is where masking happens."""
        return cls(
            payment_id=clip_kept(payment_id),
            interaction_id=interaction_id,
            document=None if document is None else mask_document(document),
        )


class Event(Protocol):
    """Every event has a `level` (a `logging` level): subscribers filter on it."""

    level: ClassVar[int]


@frozen(kw_only=True)
class CallStarted:
    """A public call starts: `cancel_payment`, `cancel_automatic_payment`, `get_payment_status`."""

    level: ClassVar[int] = TRACE
    call: CallInfo
    """Built before validation: the id masked and clipped, no document."""
    name: str
    url_template: str
    """The path template of the call's own request (base path included)."""
    status_template: str
    """The path template of a status read (a cancel's reconciliation reads)."""


@frozen(kw_only=True)
class CallEnded:
    """A public call ended; *exception* is what it raised (a status read's error, a cancel)."""

    level: ClassVar[int] = TRACE
    call: CallInfo
    exception: BaseException | None


@frozen(kw_only=True)
class AttemptEnded:
    """One HTTP request of a call ended (any outcome)."""

    level: ClassVar[int] = DEBUG
    call: CallInfo
    method: str
    attempt: Attempt
    message: str
    """The outcome's message (scrubbed), or empty for a success."""


@frozen(kw_only=True)
class RetryScheduled:
    """The retry loop will wait *delay* seconds, then send attempt `attempt + 1`."""

    level: ClassVar[int] = INFO
    call: CallInfo
    attempt: int
    http_status: int | None
    kind: ErrorKind | None
    delay: float


@frozen(kw_only=True)
class BudgetRefused:
    """The retry budget refused the retry after attempt *attempt*: the call ends."""

    level: ClassVar[int] = INFO
    call: CallInfo
    attempt: int


@frozen(kw_only=True)
class RateLimitWait:
    """Room for the adaptive rate limiter: a call waited *delay* seconds for its turn."""

    level: ClassVar[int] = DEBUG
    call: CallInfo
    delay: float


@frozen(kw_only=True)
class TokenRefreshed:
    """The token provider produced a token, valid for *lifetime* seconds."""

    level: ClassVar[int] = DEBUG
    lifetime: float


@frozen(kw_only=True)
class TokenFailed:
    """A token fetch failed; *message* never holds the token or a key."""

    level: ClassVar[int] = WARNING
    message: str


@frozen(kw_only=True)
class Reconciled:
    """The status read after an ambiguous or refused cancel ended."""

    level: ClassVar[int] = INFO
    call: CallInfo
    http_status: int | None
    """The read's last HTTP status, or None."""
    payment_status: str | None
    """The status read, or None when no read could tell."""
    failure: str
    """Why no status came back (`failed (timeout)`), or empty."""
    reads: int


@frozen(kw_only=True)
class CancelSucceeded:
    """A cancel ended with the payment cancelled."""

    level: ClassVar[int] = DEBUG
    call: CallInfo
    result: Cancelled


@frozen(kw_only=True)
class CancelGaveUp:
    """A cancel ended without the payment known to be cancelled."""

    level: ClassVar[int] = WARNING
    call: CallInfo
    result: CancelFailed


@frozen(kw_only=True)
class CancelRejected:
    """A cancel was refused locally (invalid input): nothing was sent."""

    level: ClassVar[int] = INFO
    result: CancelFailed


@frozen(kw_only=True)
class StatusEnded:
    """`get_payment_status()` ended: a status, or the error it raises."""

    level: ClassVar[int] = DEBUG
    call: CallInfo
    status: PaymentStatus | None
    error: KlaviError | None


class Subscriber(Protocol):
    """Receives the events it wants; must not raise, block or keep the call waiting."""

    def wants(self, level: int) -> bool:
        """Whether events at *level* should be built and sent to this subscriber."""
        ...

    def __call__(self, event: Any) -> None:
        """Handle one event."""
        ...


_DEFAULTS: list[Subscriber] = []


def default_subscribers() -> tuple[Subscriber, ...]:
    """The subscribers every client built from now on starts with (besides logging)."""
    return tuple(_DEFAULTS)


@contextmanager
def subscribed(subscriber: Subscriber) -> Iterator[Subscriber]:
    """Add *subscriber* to every client built inside the block (a hook for tests)."""
    _DEFAULTS.append(subscriber)
    try:
        yield subscriber
    finally:
        _DEFAULTS.remove(subscriber)


class Events:
    """
    One client's subscribers.  Strictly private.

    Emit in two steps, so no event is built for nobody:
    `if events.wants(DEBUG): events.emit(AttemptEnded(...))`.  With one subscriber
    (logging alone, the usual case) `wants` is that subscriber's own `wants`, which for
    logging is `Logger.isEnabledFor` itself: the check costs what it cost before the seam.
    """

    __slots__ = ("_subscribers", "wants")

    def __init__(self, subscribers: tuple[Subscriber, ...]) -> None:
        self._subscribers = subscribers
        self.wants: Callable[[int], bool] = self._choose_wants()

    @property
    def subscribers(self) -> tuple[Subscriber, ...]:
        """Who listens, in the order events reach them."""
        return self._subscribers

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add one more subscriber (events from now on)."""
        self._subscribers = (*self._subscribers, subscriber)
        self.wants = self._choose_wants()

    def _choose_wants(self) -> Callable[[int], bool]:
        if len(self._subscribers) == 1:
            return self._subscribers[0].wants
        return self._any_wants

    def _any_wants(self, level: int) -> bool:
        """Whether any subscriber wants events at *level*."""
        for subscriber in self._subscribers:  # noqa: SIM110 - any() builds a generator
            if subscriber.wants(level):
                return True
        return False

    def emit(self, event: Event) -> None:
        """Send *event* to every subscriber that wants its level."""
        level = event.level
        for subscriber in self._subscribers:
            if subscriber.wants(level):
                subscriber(event)
