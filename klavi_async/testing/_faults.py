"""
Faults the emulator can inject: scripted per route, or drawn at random with a seed.

A `Fault` says what goes wrong with one request and whether the cancel's effect is
applied first (`after_effect`), so a test can tell an unapplied 503 from a reset that
happened after the payment was already cancelled.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Final, Literal

from attrs import field, frozen

__all__ = ["FAULT_NAMES", "Fault", "FaultKind", "RandomFaults"]

FaultKind = Literal[
    "status",
    "rate_limit",
    "latency",
    "reset_before",
    "reset_after",
    "malformed_json",
    "html_gateway",
    "truncated",
]


@frozen
class Fault:
    """One injected fault.  Build it with the class methods."""

    kind: FaultKind
    status: int = 200
    """The HTTP status sent (for the kinds that send one); 0 keeps the real answer's."""
    seconds: float = 0.0
    """Latency before handling, or the Retry-After value of a rate limit."""
    after_effect: bool = False
    """The request is applied (the payment cancelled) before the fault strikes."""

    @property
    def name(self) -> str:
        """A short label for logs and fault matrices, e.g. `503`, `reset_after`."""
        if self.kind == "status":
            return f"{self.status}_after" if self.after_effect else str(self.status)
        if self.kind == "rate_limit":
            return "429"
        return self.kind

    @classmethod
    def of_status(cls, status: int, *, after_effect: bool = False) -> Fault:
        """Answer *status* with a small JSON error body; applied first if *after_effect*."""
        return cls("status", status=status, after_effect=after_effect)

    @classmethod
    def rate_limit(cls, retry_after: float = 1.0) -> Fault:
        """Answer 429 with `Retry-After: <retry_after>`; nothing is applied."""
        return cls("rate_limit", status=429, seconds=retry_after)

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Wait *seconds*, then handle the request normally (even if the client gave up)."""
        return cls("latency", seconds=seconds, after_effect=True)

    @classmethod
    def reset_before(cls) -> Fault:
        """Drop the connection without answering; nothing is applied."""
        return cls("reset_before")

    @classmethod
    def reset_after(cls) -> Fault:
        """Apply the request, then drop the connection without answering."""
        return cls("reset_after", after_effect=True)

    @classmethod
    def malformed_json(cls, status: int = 0) -> Fault:
        """
        Apply the request, then answer with a body that is not valid JSON.

        The status is the real answer's (200, or 416 for a refusal) unless *status* is given.
        """
        return cls("malformed_json", status=status, after_effect=True)

    @classmethod
    def html_gateway(cls, status: int = 502) -> Fault:
        """Answer an HTML error page, as a gateway in front of Klavi would; nothing applied."""
        return cls("html_gateway", status=status)

    @classmethod
    def truncated(cls) -> Fault:
        """Apply the request, then send part of the body and close the connection."""
        return cls("truncated", after_effect=True)


FAULT_NAMES: Final[Mapping[str, str]] = {
    "500": "HTTP 500 before the effect",
    "500_after": "HTTP 500 after the effect was applied",
    "502": "HTTP 502 before the effect",
    "503": "HTTP 503 before the effect",
    "504": "HTTP 504 before the effect",
    "504_after": "HTTP 504 after the effect was applied",
    "429": "HTTP 429 with Retry-After",
    "latency": "a delay before handling (the effect still happens)",
    "reset_before": "connection dropped before the effect",
    "reset_after": "connection dropped after the effect",
    "malformed_json": "a body that is not JSON, after the effect",
    "html_gateway": "an HTML 502 page from a gateway, before the effect",
    "truncated": "a body cut short, after the effect",
}
"""The names `fault_rates` accepts, and what each does."""


def _fault_named(name: str, *, latency: float, retry_after: float) -> Fault:
    if name == "429":
        return Fault.rate_limit(retry_after)
    if name == "latency":
        return Fault.latency(latency)
    if name in ("reset_before", "reset_after", "malformed_json", "html_gateway", "truncated"):
        factory = getattr(Fault, name)
        fault: Fault = factory()
        return fault
    status, _, after = name.partition("_")
    return Fault.of_status(int(status), after_effect=after == "after")


def _rate(name: str, value: object) -> float:
    if name not in FAULT_NAMES:
        known = ", ".join(FAULT_NAMES)
        raise ValueError(f"unknown fault {name!r}; known faults: {known}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"the rate of fault {name!r} must be a number in [0, 1], got {value!r}")
    return float(value)


def _rates(value: Mapping[str, float]) -> dict[str, float]:
    rates = {name: _rate(name, rate) for name, rate in dict(value).items()}
    if sum(rates.values()) > 1.0 + 1e-9:
        raise ValueError("fault rates must add up to at most 1")
    return rates


@frozen
class RandomFaults:
    """
    Faults drawn per request with a seeded generator: fault *f* with probability `rates[f]`.

    `latency` and `retry_after` set the seconds of the `latency` and `429` faults.
    """

    rates: dict[str, float] = field(factory=dict, converter=_rates)
    seed: int | None = None
    latency: float = 0.5
    retry_after: float = 0.0
    _rng: random.Random = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        # Reproducible fault schedules, not secrets: a seeded PRNG is the point.
        object.__setattr__(self, "_rng", random.Random(self.seed))  # noqa: S311  # nosec B311

    def draw(self) -> Fault | None:
        """The next fault, or None for a clean request."""
        if not self.rates:
            return None
        roll = self._rng.random()
        for name, rate in self.rates.items():
            if roll < rate:
                return _fault_named(name, latency=self.latency, retry_after=self.retry_after)
            roll -= rate
        return None
