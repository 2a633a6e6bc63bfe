"""RetryBudget on an injected clock: ratio and reserve arithmetic, the sliding window, stats."""

from __future__ import annotations

import math
import time
from typing import Any

import attrs
import pytest

from klavi_async import (
    RetryBudget,
    RetryBudgetStats,
)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def grant_all(budget: RetryBudget, limit: int = 100_000) -> int:
    """Acquire retries until the budget refuses one; return how many were granted."""
    for granted in range(limit):
        if not budget.try_acquire():
            return granted
    raise AssertionError("the budget never refused")


def test_defaults_match_the_contract() -> None:
    budget = RetryBudget()
    assert (budget.ratio, budget.min_per_second, budget.window) == (0.2, 10.0, 10.0)
    assert budget.clock is time.monotonic
    assert not budget.is_unlimited
    assert budget.try_acquire()  # the reserve grants a retry with no first attempt at all


def test_300_first_attempts_allow_exactly_160_retries() -> None:
    """ratio 0.2 x 300 = 60, plus the reserve 10/s x 10 s = 100."""
    budget = RetryBudget(ratio=0.2, min_per_second=10, window=10, clock=FakeClock())
    for _ in range(300):
        budget.record_attempt()
    assert grant_all(budget) == 160
    stats = budget.stats()
    assert stats == RetryBudgetStats(
        first_attempts=300,
        retries=160,
        available=0.0,
        total_first_attempts=300,
        total_retries=160,
        total_rejected=1,
    )


def test_each_first_attempt_earns_ratio_of_a_retry() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0, window=10, clock=FakeClock())
    for _ in range(4):
        budget.record_attempt()
    assert budget.stats().available == pytest.approx(0.8)
    assert not budget.try_acquire()  # 0.8 of a retry is not a retry
    budget.record_attempt()
    assert budget.try_acquire()
    assert not budget.try_acquire()
    for _ in range(5):
        budget.record_attempt()
    assert budget.try_acquire()
    assert budget.stats().total_rejected == 2


def test_the_reserve_alone() -> None:
    budget = RetryBudget(ratio=0, min_per_second=2.5, window=4, clock=FakeClock())
    for _ in range(1000):
        budget.record_attempt()
    assert grant_all(budget) == 10  # 2.5/s x 4 s, however many first attempts


def test_a_zero_budget_refuses_every_retry() -> None:
    budget = RetryBudget(ratio=0, min_per_second=0, clock=FakeClock())
    budget.record_attempt()
    assert not budget.try_acquire()
    assert not budget.try_acquire()
    stats = budget.stats()
    assert (stats.retries, stats.total_retries, stats.total_rejected) == (0, 0, 2)
    assert stats.available == 0.0


def test_first_attempts_expire_and_retries_get_refused() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10, clock=clock)
    for _ in range(10):
        budget.record_attempt()
    clock.now = 1005.0
    assert grant_all(budget) == 10
    clock.now = 1010.5  # the first attempts' bucket left the window, the retries' did not
    assert budget.stats().first_attempts == 0
    assert budget.stats().retries == 10
    assert not budget.try_acquire()
    stats = budget.stats()
    assert (stats.total_first_attempts, stats.total_retries, stats.total_rejected) == (10, 10, 2)


def test_the_window_slides_bucket_by_bucket() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10, clock=clock)
    for second in range(10):  # one first attempt per second, one per bucket
        clock.now = second + 0.5
        budget.record_attempt()
    assert budget.stats().first_attempts == 10
    for expired in range(1, 10):
        clock.now = 9.5 + expired
        assert budget.stats().first_attempts == 10 - expired
    clock.now = 100.0
    assert budget.stats().first_attempts == 0


def test_granted_retries_also_leave_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0, min_per_second=0.3, window=10, clock=clock)
    assert grant_all(budget) == 3
    clock.now = 5.0
    assert not budget.try_acquire()  # still inside the window
    clock.now = 10.0
    assert grant_all(budget) == 3


def test_a_clock_that_goes_backwards_changes_nothing() -> None:
    clock = FakeClock(50.0)
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10, clock=clock)
    budget.record_attempt()
    clock.now = 40.0
    budget.record_attempt()
    assert budget.stats().first_attempts == 2
    assert budget.try_acquire()


def test_a_jump_longer_than_the_window_clears_every_bucket() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=1, clock=clock)
    for _ in range(7):
        budget.record_attempt()
    assert budget.try_acquire()
    clock.now = 1e6
    stats = budget.stats()
    assert (stats.first_attempts, stats.retries, stats.available) == (0, 0, 0.0)
    assert (stats.total_first_attempts, stats.total_retries) == (7, 1)


def test_stats_counts_and_available() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=1, window=2, clock=FakeClock())
    for _ in range(6):
        budget.record_attempt()
    assert budget.stats().available == 5.0  # 0.5 x 6 + 1 x 2
    assert budget.try_acquire()
    assert budget.try_acquire()
    stats = budget.stats()
    assert stats.available == 3.0
    assert (stats.first_attempts, stats.retries) == (6, 2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.retries = 0  # type: ignore[misc]


def test_reset_forgets_counters_and_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0, min_per_second=0.1, window=10, clock=clock)
    budget.record_attempt()
    assert budget.try_acquire()
    assert not budget.try_acquire()
    budget.reset()
    assert budget.stats() == RetryBudgetStats(
        first_attempts=0,
        retries=0,
        available=1.0,
        total_first_attempts=0,
        total_retries=0,
        total_rejected=0,
    )
    assert budget.try_acquire()


def test_unlimited_grants_every_retry_and_still_counts() -> None:
    budget = RetryBudget.unlimited()
    assert budget.is_unlimited
    assert budget.ratio == math.inf
    assert all(budget.try_acquire() for _ in range(10_000))
    stats = budget.stats()
    assert stats.available == math.inf
    assert (stats.retries, stats.total_retries, stats.total_rejected) == (10_000, 10_000, 0)


def test_an_infinite_reserve_is_unlimited_too() -> None:
    budget = RetryBudget(ratio=0, min_per_second=math.inf, clock=FakeClock())
    assert budget.is_unlimited
    assert budget.try_acquire()
    assert budget.stats().available == math.inf


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": -0.1}, "ratio must be >= 0"),
        ({"ratio": math.nan}, "ratio must be >= 0"),
        ({"min_per_second": -1}, "min_per_second must be >= 0"),
        ({"window": 0}, "window"),
        ({"window": -1}, "window must be >= 0"),
        ({"window": math.nan}, "window must be >= 0"),
    ],
)
def test_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryBudget(**kwargs)


def test_numbers_are_converted_to_float() -> None:
    budget = RetryBudget(ratio=1, min_per_second=2, window=3)
    assert (budget.ratio, budget.min_per_second, budget.window) == (1.0, 2.0, 3.0)
    assert all(type(v) is float for v in (budget.ratio, budget.min_per_second, budget.window))


def test_frozen_identity_compared_and_repr_without_internals() -> None:
    budget = RetryBudget(clock=FakeClock())
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        budget.ratio = 1.0  # type: ignore[misc]
    assert budget != RetryBudget(clock=budget.clock)  # shared state: equal only to itself
    assert budget == budget
    assert repr(budget) == "RetryBudget(ratio=0.2, min_per_second=10.0, window=10.0)"


# Folded in from test_units.py.


class StepClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_arithmetic_and_sliding_window() -> None:
    clock = StepClock()
    budget = RetryBudget(clock=clock)
    for _ in range(300):
        budget.record_attempt()
    granted = sum(budget.try_acquire() for _ in range(500))
    assert granted == 160  # 0.2 * 300 + 10/s * 10 s
    stats = budget.stats()
    assert (stats.first_attempts, stats.retries, stats.total_rejected) == (300, 160, 340)
    assert stats.available == 0
    clock.now += 5.0
    assert not budget.try_acquire()  # still inside the window
    clock.now += 5.5
    assert budget.stats().first_attempts == 0  # everything slid out
    assert budget.try_acquire()
    clock.now += 100.0
    assert budget.stats().retries == 0
    assert budget.stats().total_retries == 161
    budget.reset()
    assert budget.stats().total_first_attempts == 0


def test_budget_partial_slide() -> None:
    clock = StepClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0, clock=clock)
    budget.record_attempt()
    clock.now += 5.0
    budget.record_attempt()
    clock.now += 5.5  # the first bucket expired, the second not yet
    assert budget.stats().first_attempts == 1


def test_unlimited_budget_and_validation() -> None:
    budget = RetryBudget.unlimited()
    assert budget.is_unlimited
    assert all(budget.try_acquire() for _ in range(1000))
    assert math.isinf(budget.stats().available)
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=-1)
    with pytest.raises(ValueError, match="window"):
        RetryBudget(window=0)
