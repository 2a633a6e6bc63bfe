"""
Retry policy and the retry loop: the only module that imports tenacity.

The loop runs one call's attempts through `tenacity.AsyncRetrying`.  Each attempt
returns an `Outcome` (never raises for one); tenacity decides from it whether to retry,
how long to wait and when to stop:

- retry transport errors, timeouts and `retry_statuses`, never a refusal;
- wait `max(jittered backoff, Retry-After capped at max_retry_after)`;
- stop after `max_attempts`, when the wait would end past `deadline` (not slept: the
  call ends at once with `retry_after` set), or when the shared `RetryBudget` says no.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import attrs
import tenacity as _t
from attrs import field, frozen

from ._budget import RetryBudget
from ._errors import ErrorKind
from ._outcome import Outcome
from ._results import Attempt

__all__ = ["RetryLoop", "RetryPolicy", "StopReason"]

StopReason = Literal["attempts", "deadline", "budget"]

_DEFAULT_RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504, 529})
_TRANSPORT_KINDS: Final = frozenset({ErrorKind.TIMEOUT, ErrorKind.NETWORK})


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


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
    initial_backoff: float = field(default=0.5, converter=float, validator=_non_negative)
    max_backoff: float = field(default=8.0, converter=float, validator=_non_negative)
    multiplier: float = field(default=2.0, converter=float, validator=_non_negative)
    jitter: bool = True
    deadline: float = field(default=30.0, converter=float, validator=_positive)
    max_retry_after: float = field(default=60.0, converter=float, validator=_non_negative)
    retry_statuses: frozenset[int] = field(default=_DEFAULT_RETRY_STATUSES, converter=_statuses)

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
        """Whether this attempt's outcome is worth another attempt."""
        if outcome.kind is None or outcome.refused:
            return False
        if outcome.http_status is None:
            return outcome.kind in _TRANSPORT_KINDS
        return outcome.http_status in self.retry_statuses


class RetryLoop:
    """
    The retry loop of one call.  Strictly private.

    The attempt callable records its `Attempt` with `record()`; the loop fills in the
    delay that followed it.  After `run()`, `stop_reason` says why retrying stopped (None
    when the last attempt was final by itself) and `elapsed()` the call's duration.
    """

    __slots__ = (
        "_budget",
        "_clock",
        "_on_retry",
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
        rng: Callable[[], float] = random.random,
        on_retry: Callable[[Outcome, int, float], None] | None = None,
        start: float | None = None,
        safe: bool = False,
    ) -> None:
        self._policy = policy
        # A safe request (a GET) is also retried after a body cut mid-way (a 200 whose
        # body broke off): repeating it cannot apply anything twice.
        self._safe = safe
        self._budget = budget
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._on_retry = on_retry
        self.start = clock() if start is None else start
        self.history: list[Attempt] = []
        self.stop_reason: StopReason | None = None
        self.refused_wait: float | None = None

    @property
    def deadline(self) -> float:
        """The call's deadline in seconds."""
        return self._policy.deadline

    def elapsed(self) -> float:
        """Seconds since the call started."""
        return self._clock() - self.start

    def remaining(self) -> float:
        """Seconds left before the deadline (may be <= 0)."""
        return self._policy.deadline - (self._clock() - self.start)

    def record(self, attempt: Attempt) -> None:
        """Add one attempt to the history."""
        self.history.append(attempt)

    async def run(self, attempt: Callable[..., Awaitable[Outcome]], *args: object) -> Outcome:
        """
        Run `attempt(*args)` until it succeeds, fails for good, or a limit stops it.

        The first attempt runs before tenacity is involved: most calls end there, and
        building a retrying object for them would be pure overhead.  When it asks for a
        retry, tenacity takes over from attempt 1's outcome (`retry_after_first`), so every
        decision (retry, wait, stop) is still tenacity's.
        """
        self.start_call()
        first = await attempt(*args)
        if not self.wants_retry(first):
            return first
        return await self.retry_after_first(first, attempt, *args)

    def start_call(self) -> None:
        """Count the call's first attempt in the budget (callers of `retry_after_first`)."""
        self._budget.record_attempt()

    def wants_retry(self, first: Outcome) -> bool:
        """Whether the first attempt's outcome calls for `retry_after_first`."""
        return first.kind is not None and self._should_retry(first)

    def _should_retry(self, outcome: Outcome) -> bool:
        if self._policy.should_retry(outcome):
            return True
        status = outcome.http_status
        return (
            self._safe
            and outcome.kind in _TRANSPORT_KINDS
            and status is not None
            and 200 <= status < 300
        )

    async def retry_after_first(
        self, first: Outcome, attempt: Callable[..., Awaitable[Outcome]], *args: object
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
        if self.elapsed() + wait >= self._policy.deadline:
            self.stop_reason = "deadline"
            self.refused_wait = wait
            return True
        if not self._budget.try_acquire():
            self.stop_reason = "budget"
            return True
        return False

    def _before_sleep(self, state: _t.RetryCallState) -> None:
        wait = state.upcoming_sleep
        if self.history:
            self.history[-1] = attrs.evolve(self.history[-1], delay=wait)
        if self._on_retry is not None:
            self._on_retry(_last(state), state.attempt_number, wait)

    def _give_up(self, state: _t.RetryCallState) -> Outcome:
        return _last(state)


def _last(state: _t.RetryCallState) -> Outcome:
    """The outcome tenacity is deciding about (its callbacks run only after an attempt)."""
    if state.outcome is None:  # pragma: no cover - tenacity calls back only after an attempt
        raise RuntimeError("tenacity called back before any attempt")
    outcome: Outcome = state.outcome.result()
    return outcome
