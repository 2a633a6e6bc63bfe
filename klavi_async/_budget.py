"""
A retry budget: rations retries across every call of one client.

Per-call attempt caps do not stop a retry storm: during a full outage, N concurrent
cancels with `max_attempts=4` would send 4N requests.  The budget (after Finagle and
gRPC retry throttling) allows retries up to `ratio` of the first attempts seen in the
last `window` seconds, plus a reserve of `min_per_second`, so the outage costs about
`(1 + ratio) * N` requests instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from attrs import Factory, field, frozen

from ._values import non_negative

__all__ = ["RetryBudget", "RetryBudgetStats"]

_BUCKETS = 10


@frozen(kw_only=True)
class RetryBudgetStats:
    """A snapshot of a `RetryBudget`'s counters."""

    first_attempts: int
    """First attempts recorded in the current window."""
    retries: int
    """Retries granted in the current window."""
    available: float
    """Retries that would be granted now (`inf` for an unlimited budget)."""
    total_first_attempts: int
    """First attempts recorded since creation (or `reset()`)."""
    total_retries: int
    """Retries granted since creation (or `reset()`)."""
    total_rejected: int
    """Retries refused since creation (or `reset()`): each one ended a call early."""


def _window(value: object) -> float:
    """A converter, not a validator: the counters' factory below needs a usable width."""
    seconds = float(value)  # type: ignore[arg-type]
    non_negative(None, _WINDOW, seconds)
    if seconds == 0:
        raise ValueError("window must be > 0, got 0.0")
    return seconds


class _Named:
    name = "window"


_WINDOW = _Named()


class _Window:
    """The sliding-window counters: a plain slotted class, since it runs on every call."""

    __slots__ = (
        "bucket",
        "clock",
        "first_sum",
        "firsts",
        "retries",
        "retry_sum",
        "total_first",
        "total_rejected",
        "total_retries",
        "width",
    )

    def __init__(self, width: float, clock: Callable[[], float]) -> None:
        self.width = width
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Zero every counter and start the window now."""
        self.firsts = [0] * _BUCKETS
        self.retries = [0] * _BUCKETS
        self.bucket = int(self.clock() / self.width)
        self.first_sum = self.retry_sum = 0
        self.total_first = self.total_retries = self.total_rejected = 0

    def advance(self, bucket: int | None = None) -> None:
        """Move the window on to *bucket* (None: the clock's bucket now)."""
        if bucket is None:
            bucket = int(self.clock() / self.width)
        steps = bucket - self.bucket
        if steps <= 0:
            return
        if steps >= _BUCKETS:
            self.firsts = [0] * _BUCKETS
            self.retries = [0] * _BUCKETS
            self.first_sum = self.retry_sum = 0
        else:
            for step in range(1, steps + 1):
                i = (self.bucket + step) % _BUCKETS
                self.first_sum -= self.firsts[i]
                self.retry_sum -= self.retries[i]
                self.firsts[i] = self.retries[i] = 0
        self.bucket = bucket


@frozen(eq=False)
class RetryBudget:
    """
    Retries allowed across all calls sharing this budget (one `KlaviClient` by default).

    A retry is granted while `retries_in_window < ratio * first_attempts_in_window +
    min_per_second * window`.  The window slides in tenths of `window`.  Not thread-safe:
    use one budget per event loop.  Pass `clock` (a monotonic clock) to test it.
    """

    ratio: float = field(default=0.2, converter=float, validator=non_negative)
    min_per_second: float = field(default=10.0, converter=float, validator=non_negative)
    window: float = field(default=10.0, converter=_window)
    clock: Callable[[], float] = field(default=time.monotonic, kw_only=True, repr=False)
    # The settings are frozen; the counters live in this one mutable object, never replaced.
    _state: _Window = field(
        init=False,
        repr=False,
        default=Factory(lambda self: _Window(self.window / _BUCKETS, self.clock), takes_self=True),
    )

    @classmethod
    def unlimited(cls) -> RetryBudget:
        """A budget that grants every retry (it still counts them)."""
        return cls(ratio=math.inf, min_per_second=0.0)

    @property
    def is_unlimited(self) -> bool:
        """True for `RetryBudget.unlimited()`."""
        return math.isinf(self.ratio) or math.isinf(self.min_per_second)

    def reset(self) -> None:
        """Forget everything: counters and window."""
        self._state.reset()

    def record_attempt(self) -> None:
        """Count a call's first attempt; each one earns `ratio` of a retry."""
        state = self._state
        bucket = int(state.clock() / state.width)
        if bucket != state.bucket:  # most calls land in the bucket of the one before
            state.advance(bucket)
        state.firsts[state.bucket % _BUCKETS] += 1
        state.first_sum += 1
        state.total_first += 1

    def _allowance(self) -> float:
        if self.is_unlimited:
            return math.inf
        state = self._state
        return self.ratio * state.first_sum + self.min_per_second * self.window - state.retry_sum

    def try_acquire(self) -> bool:
        """Take one retry from the budget; False (and counted as rejected) when none is left."""
        state = self._state
        state.advance()
        if self._allowance() < 1.0:
            state.total_rejected += 1
            return False
        state.retries[state.bucket % _BUCKETS] += 1
        state.retry_sum += 1
        state.total_retries += 1
        return True

    def stats(self) -> RetryBudgetStats:
        """The counters now."""
        state = self._state
        state.advance()
        return RetryBudgetStats(
            first_attempts=state.first_sum,
            retries=state.retry_sum,
            available=max(self._allowance(), 0.0),
            total_first_attempts=state.total_first,
            total_retries=state.total_retries,
            total_rejected=state.total_rejected,
        )
