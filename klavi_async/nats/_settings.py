"""
The streams' settings an operator owns: checked, applied to a stream's own config, told.

`ensure_streams()` creates a missing stream with the defaults and changes an existing one
only where asked: the changes are checked here first (a bool is not an int; NaN, an
infinity or a negative number is refused), then applied to the stream's current config,
so its subjects and every setting not named stay as the operator left them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Final

from nats.js.api import StreamConfig

__all__ = ["apply_changes", "stream_changes"]

DEFAULT_DUPLICATE_WINDOW: Final = 120.0
MAX_REPLICAS: Final = 5  # JetStream's own limit
_MAX_INT: Final = 2**63 - 1  # the server reads these as Go int64
_MAX_SECONDS: Final = _MAX_INT / 1e9  # ... and durations as int64 nanoseconds


def stream_changes(
    *,
    replicas: int | None = None,
    duplicate_window: float | None = None,
    max_age: float | None = None,
    max_bytes: int | None = None,
    max_msgs: int | None = None,
) -> dict[str, int | float]:
    """
    The given settings as `StreamConfig` fields, checked; None (not given) is left out.

    *replicas* is 1 to 5; *duplicate_window* seconds above zero; *max_age* seconds,
    *max_bytes* and *max_msgs* zero or more, 0 meaning no limit.
    """
    changes: dict[str, int | float] = {}
    if replicas is not None:
        changes["num_replicas"] = _count("replicas", replicas, low=1, high=MAX_REPLICAS)
    if duplicate_window is not None:
        changes["duplicate_window"] = _seconds("duplicate_window", duplicate_window, zero=False)
    if max_age is not None:
        changes["max_age"] = _seconds("max_age", max_age, zero=True)
    for name, value in (("max_bytes", max_bytes), ("max_msgs", max_msgs)):
        if value is not None:
            # The server's "no limit" is -1; 0 is how the other settings say it.
            changes[name] = _count(name, value, low=0, high=_MAX_INT) or -1
    return changes


def _count(name: str, value: object, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {value}")
    return value


def _seconds(name: str, value: object, *, zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    least = "0 (no limit) or more" if zero else "above 0"
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        raise ValueError(f"{name} must be a finite number of seconds {least}, got {value}")
    if seconds > _MAX_SECONDS:
        raise ValueError(f"{name} must be at most {_MAX_SECONDS:.0f} seconds, got {value}")
    return seconds


def apply_changes(config: StreamConfig, changes: dict[str, int | float]) -> StreamConfig:
    """
    *config* with *changes* made, everything else kept; `ValueError` if the result is
    one the server refuses (a duplicate window longer than the stream's `max_age`).
    """
    changed = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
    window, age = changed.duplicate_window, changed.max_age
    if age and window > age:
        raise ValueError(
            f"{config.name}: duplicate_window ({window:.15g} s) must not be longer than "
            f"max_age ({age:.15g} s)"
        )
    return changed
