"""
The emulator's own check of the document a cancel carries, written apart from the SDK's.

The SDK validates `cancelled_by` before sending (`klavi_async._documents`).  Were the
emulator to call that same code, an SDK validation bug could never show in a test: both
sides would agree on the wrong answer.  So this module re-implements the rules from their
sources, in another form: CPF check digits (Receita Federal, mod 11) and the CNPJ check
digits of IN RFB 2.229/2024 (alphanumeric since July 2026, each character worth its ASCII
code minus 48), with weights counted from the right.  It also checks the wire form Klavi
receives: the bare document in upper case (Open Finance Brasil's `^\\d{11}$`), never a
formatted one, and `identifierType` exactly `CPF` or `CNPJ`.
"""

from __future__ import annotations

from typing import Final

__all__ = ["cancel_body_problem", "valid_cnpj", "valid_cpf"]

_DIGITS: Final = "0123456789"
_LETTERS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# A CNPJ character's value: '0'-'9' are 0-9, 'A'-'Z' are 17-42 (ASCII code minus 48).
_CNPJ_VALUE: Final = {c: i for i, c in enumerate(_DIGITS)} | {
    c: 17 + i for i, c in enumerate(_LETTERS)
}


def _mod11(total: int) -> int:
    # The check digit is 11 - (total mod 11), or 0 when that is 10 or 11: the same as
    # (-total) mod 11 mod 10, the form used here (the SDK spells out the two cases).
    return (-total) % 11 % 10


def _cpf_digit(digits: list[int]) -> int:
    # Weights 2, 3, 4, ... from the rightmost digit: 10..2 over 9 digits, 11..2 over 10.
    return _mod11(sum(d * w for w, d in enumerate(reversed(digits), start=2)))


def _cnpj_digit(values: list[int]) -> int:
    # Weights 2..9 from the rightmost character, starting again at 2 after 9.
    return _mod11(sum(v * (2 + i % 8) for i, v in enumerate(reversed(values))))


def valid_cpf(text: str) -> bool:
    """True for a bare CPF: 11 ASCII digits, both check digits right, not one digit 11 times."""
    if len(text) != 11 or any(c not in _DIGITS for c in text) or len(set(text)) == 1:
        return False
    digits = [_DIGITS.index(c) for c in text]
    first = _cpf_digit(digits[:9])
    return digits[9] == first and digits[10] == _cpf_digit([*digits[:9], first])


def valid_cnpj(text: str) -> bool:
    """
    True for a bare CNPJ, numeric or alphanumeric.

    Twelve characters of `0-9A-Z`, then two digits; a root of twelve zeros is refused.
    """
    if len(text) != 14 or any(c not in _CNPJ_VALUE for c in text[:12]):
        return False
    if any(c not in _DIGITS for c in text[12:]) or text[:12] == "0" * 12:
        return False
    values = [_CNPJ_VALUE[c] for c in text[:12]]
    first = _cnpj_digit(values)
    second = _cnpj_digit([*values, first])
    return text[12:] == f"{first}{second}"


def cancel_body_problem(cancelled_by: object, identifier_type: object) -> str | None:
    """
    What is wrong with a cancel body's `cancelledBy`/`identifierType`, or None if nothing.

    The message never holds the document.
    """
    if not isinstance(cancelled_by, str) or not isinstance(identifier_type, str):
        return "cancelledBy and identifierType must be strings"
    if identifier_type == "CPF":
        return None if valid_cpf(cancelled_by) else "cancelledBy is not a valid bare CPF"
    if identifier_type == "CNPJ":
        return None if valid_cnpj(cancelled_by) else "cancelledBy is not a valid bare CNPJ"
    return "identifierType must be CPF or CNPJ"
