"""
The rate limiter's settings: `RateLimit` (frozen, what a client is given), `RateLimitStats`
(a snapshot of its state) and the bounds every rate is checked against.
"""

from __future__ import annotations

from attrs import field, frozen

__all__ = ["MAX_RATE", "MIN_RATE", "RateLimit", "RateLimitStats", "rate_value"]

MIN_RATE = 0.001
"""The lowest rate a setting may name (one request in about 17 minutes)."""
MAX_RATE = 1_000_000.0
"""The highest (beyond any one client; and the ramp's arithmetic stays finite within it)."""


def rate_value(value: object, name: str) -> float:
    """`value` as a rate for setting `name`; TypeError or ValueError when it is none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of requests per second, got {value!r}")
    rate = float(value)
    if not MIN_RATE <= rate <= MAX_RATE:  # NaN too
        raise ValueError(
            f"{name} must be between {MIN_RATE:g} and {MAX_RATE:,.0f} requests per second, "
            f"got {value!r}"
        )
    return rate


def _optional_rate(value: object) -> float | None:
    return None if value is None else rate_value(value, "max_rate")


def _min_rate(value: object) -> float:
    return rate_value(value, "min_rate")


@frozen
class RateLimit:
    """
    How fast a client may send (frozen).  Adaptive (the default): unthrottled until the
    first 429 or 529, then a CUBIC-style rate that drops on throttles and grows back, never
    above `max_rate` (when given) nor below `min_rate`.  `adaptive=False`: a fixed cap.
    """

    max_rate: float | None = field(default=None, converter=_optional_rate)
    adaptive: bool = field(default=True, kw_only=True)
    min_rate: float = field(default=1.0, kw_only=True, converter=_min_rate)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {self.adaptive!r}")
        if not self.adaptive and self.max_rate is None:
            raise ValueError(
                "RateLimit(adaptive=False) needs max_rate; pass rate_limit=None to switch "
                "rate limiting off"
            )
        if self.max_rate is not None and self.min_rate > self.max_rate:
            raise ValueError(f"min_rate ({self.min_rate:g}) exceeds max_rate ({self.max_rate:g})")

    @classmethod
    def coerce(cls, value: RateLimit | float | None) -> RateLimit | None:
        """A client's `rate_limit=` argument as a setting: a number is a fixed cap, None off."""
        if value is None or isinstance(value, RateLimit):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                "rate_limit must be a RateLimit, a number of requests per second or None, "
                f"got {type(value).__name__}"
            )
        rate = rate_value(value, "rate_limit")
        return cls(rate, adaptive=False, min_rate=min(1.0, rate))


@frozen(kw_only=True)
class RateLimitStats:
    """A snapshot of a client's rate limiter."""

    allowed_rate: float | None
    """Requests per second allowed now; None while sending is unthrottled."""
    throttle_events: int
    """429 and 529 responses seen."""
    wait_time: float
    """Seconds calls spent waiting for a slot, summed over calls."""
    waits: int
    """Requests that had to wait for their slot."""
    engaged: bool
    """Whether requests go through the limiter's schedule (True from the first throttle on)."""
    accepted_rate: float = 0.0
    """Answers that were not throttles within the last second (a client's first second:
    what came so far)."""
    waiting: int = 0
    """Calls waiting for a slot now: more than the allowed rate is asked for."""
    throttled_rate: float = 0.0
    """429 and 529 answers within the last second."""
    fleet_size: int | None = None
    """Clients sharing the limit as this one last heard (`share_rate_limit`); None: alone."""
    fleet_part: float | None = None
    """The part of the shared limit last given to this client, in requests per second
    (its search goes on from there); None: none given."""
