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

from attrs import define, field, frozen, validators

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


def _non_negative(_: object, attribute: object, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{getattr(attribute, 'name', 'value')} must be >= 0, got {value!r}")


@define(eq=False)
class RetryBudget:
    """
    Retries allowed across all calls sharing this budget (one `KlaviClient` by default).

    A retry is granted while `retries_in_window < ratio * first_attempts_in_window +
    min_per_second * window`.  The window slides in tenths of `window`.  Not thread-safe:
    use one budget per event loop.  Pass `clock` (a monotonic clock) to test it.
    """

    ratio: float = field(default=0.2, converter=float, validator=_non_negative)
    min_per_second: float = field(default=10.0, converter=float, validator=_non_negative)
    window: float = field(
        default=10.0, converter=float, validator=[_non_negative, validators.gt(0.0)]
    )
    clock: Callable[[], float] = field(default=time.monotonic, kw_only=True, repr=False)
    _width: float = field(init=False, repr=False)
    _firsts: list[int] = field(init=False, repr=False)
    _retries: list[int] = field(init=False, repr=False)
    _bucket: int = field(init=False, repr=False)
    _first_sum: int = field(init=False, repr=False)
    _retry_sum: int = field(init=False, repr=False)
    _total_first: int = field(init=False, repr=False)
    _total_retries: int = field(init=False, repr=False)
    _total_rejected: int = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._width = self.window / _BUCKETS
        self.reset()

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
        self._firsts = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._bucket = int(self.clock() / self._width)
        self._first_sum = self._retry_sum = 0
        self._total_first = self._total_retries = self._total_rejected = 0

    def _advance(self) -> None:
        bucket = int(self.clock() / self._width)
        steps = bucket - self._bucket
        if steps <= 0:
            return
        if steps >= _BUCKETS:
            self._firsts = [0] * _BUCKETS
            self._retries = [0] * _BUCKETS
            self._first_sum = self._retry_sum = 0
        else:
            for step in range(1, steps + 1):
                i = (self._bucket + step) % _BUCKETS
                self._first_sum -= self._firsts[i]
                self._retry_sum -= self._retries[i]
                self._firsts[i] = self._retries[i] = 0
        self._bucket = bucket

    def record_attempt(self) -> None:
        """Count a call's first attempt; each one earns `ratio` of a retry."""
        self._advance()
        self._firsts[self._bucket % _BUCKETS] += 1
        self._first_sum += 1
        self._total_first += 1

    def _allowance(self) -> float:
        if self.is_unlimited:
            return math.inf
        return self.ratio * self._first_sum + self.min_per_second * self.window - self._retry_sum

    def try_acquire(self) -> bool:
        """Take one retry from the budget; False (and counted as rejected) when none is left."""
        self._advance()
        if self._allowance() < 1.0:
            self._total_rejected += 1
            return False
        self._retries[self._bucket % _BUCKETS] += 1
        self._retry_sum += 1
        self._total_retries += 1
        return True

    def stats(self) -> RetryBudgetStats:
        """The counters now."""
        self._advance()
        return RetryBudgetStats(
            first_attempts=self._first_sum,
            retries=self._retry_sum,
            available=max(self._allowance(), 0.0),
            total_first_attempts=self._total_first,
            total_retries=self._total_retries,
            total_rejected=self._total_rejected,
        )
