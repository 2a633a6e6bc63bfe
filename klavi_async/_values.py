"""
Reading loose values: JSON fields of any type, and attrs validators for numbers.

Strictly private.  Klavi's bodies put a number where a string was documented (and the
other way round); these helpers take what is usable and give None for the rest, never
raising.
"""

from __future__ import annotations

import math

__all__ = ["non_negative", "number_or_none", "text_or_none"]


def text_or_none(value: object, *, strip: bool = False) -> str | None:
    """
    *value* as a string when it is a string or a number (not a bool), else None.

    With *strip*, surrounding white space is dropped and an empty string gives None.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not strip:
            return value
        value = value.strip()
        return value or None
    if isinstance(value, int | float):
        return str(value)
    return None


def number_or_none(value: object) -> float | None:
    """*value* as a finite float when it is a number or a numeric string (not a bool)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def non_negative(_: object, attribute: object, value: float) -> None:
    """An attrs validator: *value* must be >= 0 (NaN is refused too)."""
    if not value >= 0:
        raise ValueError(f"{getattr(attribute, 'name', 'value')} must be >= 0, got {value!r}")
