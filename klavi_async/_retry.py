"""
Retry policy and the retry loop: the only module that imports tenacity.

`RetryLoop.run()` is the one entry point.  It counts the call in the retry budget, runs
the first attempt by itself (most calls end there), and only when that asks for a retry
hands the call to `tenacity.AsyncRetrying`.  Each attempt returns an `Outcome` (never
raises for one); tenacity decides from it whether to retry, how long to wait and when
to stop:

- retry what `_kinds`' table says: transport errors, timeouts and `retry_statuses`,
  never a refusal;
- wait `max(jittered backoff, Retry-After capped at max_retry_after)`;
- stop after `max_attempts`, when the wait would end past `deadline` (not slept: the
  call ends at once with `retry_after` set), or when the shared `RetryBudget` says no.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import attrs
import tenacity as _t
from attrs import field, frozen

from ._budget import RetryBudget
from ._kinds import DEFAULT_RETRY_STATUSES, attempt_retryable
from ._outcome import Outcome
from ._results import Attempt
from ._speedups import slot_builder
from ._values import non_negative

__all__ = ["RetryLoop", "RetryObserver", "RetryPolicy", "StopReason", "new_retry_loop"]

StopReason = Literal["attempts", "deadline", "budget"]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _statuses(value: object) -> frozenset[int]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise TypeError("retry_statuses must be a collection of HTTP status codes")
    statuses = frozenset(value)
    for status in statuses:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"retry_statuses holds {status!r}, which is not an HTTP status")
    return statuses


def _attempts(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"max_attempts must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"max_attempts must be >= 1, got {value}")
    return value


@frozen
class RetryPolicy:
    """
    How one call retries.  Frozen; share it freely.

    `max_attempts` counts every request of the call (the first included); a replay after a
    401 does not count.  The n-th retry waits `min(max_backoff, initial_backoff *
    multiplier**(n-1))`, times a random factor in [0.5, 1] when `jitter` is on, or the
    server's `Retry-After` if longer (capped at `max_retry_after`).  No wait may end past
    `deadline` seconds after the call started.
    """

    max_attempts: int = field(default=4, converter=_attempts)
    initial_backoff: float = field(default=0.5, converter=float, validator=non_negative)
    max_backoff: float = field(default=8.0, converter=float, validator=non_negative)
    multiplier: float = field(default=2.0, converter=float, validator=non_negative)
    jitter: bool = True
    deadline: float = field(default=30.0, converter=float, validator=_positive)
    max_retry_after: float = field(default=60.0, converter=float, validator=non_negative)
    retry_statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES, converter=_statuses)

    @multiplier.validator
    def _check_multiplier(self, _: attrs.Attribute[float], value: float) -> None:
        if value < 1:
            raise ValueError(f"multiplier must be >= 1, got {value!r}")

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """One attempt, no retries (a 401 is still replayed once with a fresh token)."""
        return cls(max_attempts=1)

    def backoff(self, retry_number: int, rng: Callable[[], float] = random.random) -> float:
        """The wait before retry *retry_number* (1 = first retry), before Retry-After."""
        try:
            base = self.initial_backoff * self.multiplier ** (retry_number - 1)
        except OverflowError:
            base = self.max_backoff if self.initial_backoff else 0.0
        base = min(self.max_backoff, base)
        return base * (0.5 + 0.5 * rng()) if self.jitter else base

    def should_retry(self, outcome: Outcome) -> bool:
        """Whether this attempt's outcome is worth another attempt (`_kinds`' table)."""
        return attempt_retryable(
            outcome.kind, outcome.http_status, outcome.refused, self.retry_statuses
        )


class RetryObserver(Protocol):
    """Told what the loop decided, to emit the matching events.  Strictly private."""

    def retry_scheduled(self, outcome: Outcome, attempt_number: int, delay: float) -> None:
        """The loop will sleep *delay* seconds, then send attempt `attempt_number + 1`."""
        ...

    def budget_refused(self, attempt_number: int) -> None:
        """The retry budget refused the retry after attempt *attempt_number*."""
        ...


class RetryLoop:
    """
    The retry loop of one call.  Strictly private.

    The attempt callable records its `Attempt` with `record()`; the loop fills in the
    delay that followed it.  After `run()`, `stop_reason` says why retrying stopped (None
    when the last attempt was final by itself).

    *counted* calls earn the budget its share of retries (`record_attempt`): a cancel, a
    status read, a token exchange.  A read made as part of another call (the
    reconciliation after a cancel) is not counted: it would earn the budget retries for
    a call that was counted already.  *safe* requests (GETs) are also retried after a
    2xx whose body broke off: repeating one cannot apply anything twice.
    """

    __slots__ = (
        "_budget",
        "_clock",
        "_counted",
        "_observer",
        "_policy",
        "_rng",
        "_safe",
        "_sleep",
        "history",
        "refused_wait",
        "start",
        "stop_reason",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        observer: RetryObserver,
        rng: Callable[[], float] = random.random,
        start: float | None = None,
        safe: bool = False,
        counted: bool = True,
    ) -> None:
        self._policy = policy
        self._safe = safe
        self._counted = counted
        self._budget = budget
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._observer = observer
        self.start = clock() if start is None else start
        self.history: list[Attempt] = []
        self.stop_reason: StopReason | None = None
        self.refused_wait: float | None = None

    @property
    def deadline(self) -> float:
        """The call's deadline in seconds."""
        return self._policy.deadline

    def remaining(self) -> float:
        """Seconds left before the deadline (may be <= 0)."""
        return self._policy.deadline - (self._clock() - self.start)

    def record(self, attempt: Attempt) -> None:
        """Add one attempt to the history."""
        self.history.append(attempt)

    async def run(self, attempt: Callable[..., Awaitable[Outcome]], *args: object) -> Outcome:
        """
        Run `attempt(*args)` until it succeeds, fails for good, or a limit stops it.

        The first attempt runs before tenacity is involved: building a retrying object
        for a call that ends at once would be pure overhead.  When it asks for a retry,
        tenacity takes over from attempt 1's outcome, so every decision (retry, wait,
        stop) is still tenacity's.
        """
        if self._counted:
            self._budget.record_attempt()
        first = await attempt(*args)
        if first.kind is None or not self._should_retry(first):
            return first
        return await self._retry_after_first(first, attempt, args)

    def _should_retry(self, outcome: Outcome) -> bool:
        return attempt_retryable(
            outcome.kind,
            outcome.http_status,
            outcome.refused,
            self._policy.retry_statuses,
            safe=self._safe,
        )

    async def _retry_after_first(
        self,
        first: Outcome,
        attempt: Callable[..., Awaitable[Outcome]],
        args: tuple[object, ...],
    ) -> Outcome:
        """Hand the call to tenacity, which starts from the first attempt's outcome."""
        replay: list[Outcome] = [first]

        async def resumed() -> Outcome:
            if replay:
                return replay.pop()
            return await attempt(*args)

        retrying = _t.AsyncRetrying(
            sleep=self._sleep,
            stop=self._stop,
            wait=self._wait,
            retry=self._retry,
            before_sleep=self._before_sleep,
            retry_error_callback=self._give_up,
        )
        outcome: Outcome = await retrying(resumed)
        return outcome

    def _retry(self, state: _t.RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or outcome.failed:
            return False  # an exception (CancelledError, a bug) goes straight through
        return self._should_retry(outcome.result())

    def _wait(self, state: _t.RetryCallState) -> float:
        last = _last(state)
        wait = self._policy.backoff(state.attempt_number, self._rng)
        if last.retry_after is not None:
            wait = max(wait, min(last.retry_after, self._policy.max_retry_after))
        return wait

    def _stop(self, state: _t.RetryCallState) -> bool:
        if state.attempt_number >= self._policy.max_attempts:
            self.stop_reason = "attempts"
            return True
        wait = state.upcoming_sleep
        if self._clock() - self.start + wait >= self._policy.deadline:
            self.stop_reason = "deadline"
            self.refused_wait = wait
            return True
        if not self._budget.try_acquire():
            self.stop_reason = "budget"
            self._observer.budget_refused(state.attempt_number)
            return True
        return False

    def _before_sleep(self, state: _t.RetryCallState) -> None:
        wait = state.upcoming_sleep
        if self.history:
            self.history[-1] = attrs.evolve(self.history[-1], delay=wait)
        self._observer.retry_scheduled(_last(state), state.attempt_number, wait)

    def _give_up(self, state: _t.RetryCallState) -> Outcome:
        return _last(state)


_build_loop = slot_builder(RetryLoop, _rng=random.random, stop_reason=None, refused_wait=None)


def new_retry_loop(
    policy: RetryPolicy,
    budget: RetryBudget,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    observer: RetryObserver,
    start: float | None,
    safe: bool,
    counted: bool,
) -> RetryLoop:
    """
    `RetryLoop(policy, budget, clock=..., ...)` without the class call (one per call on
    the hot path: `_speedups.slot_builder`); tests hold the two side by side.
    """
    loop: RetryLoop = _build_loop(
        _policy=policy,
        _budget=budget,
        _clock=clock,
        _sleep=sleep,
        _observer=observer,
        _safe=safe,
        _counted=counted,
        start=clock() if start is None else start,
        history=[],
    )
    return loop


def _last(state: _t.RetryCallState) -> Outcome:
    """The outcome tenacity is deciding about (its callbacks run only after an attempt)."""
    if state.outcome is None:  # pragma: no cover - tenacity calls back only after an attempt
        raise RuntimeError("tenacity called back before any attempt")
    outcome: Outcome = state.outcome.result()
    return outcome
