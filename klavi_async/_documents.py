"""
Brazilian taxpayer documents (CPF, CNPJ), payment ids and idempotency keys.

Everything here runs before the network: an input that fails these checks becomes
`CancelFailed(kind=INVALID_REQUEST)` and nothing is sent.  Messages raised from this
module never contain a full document: they show it masked, or not at all.

CNPJ check digits follow IN RFB 2.229/2024, so the alphanumeric CNPJs issued since
July 2026 validate with the same routine as the numeric ones (value = ASCII code - 48).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final, Literal

__all__ = [
    "DocumentCache",
    "IdentifierType",
    "InvalidInput",
    "clip_kept",
    "deterministic_idempotency_key",
    "infer_identifier_type",
    "is_valid_cnpj",
    "is_valid_cpf",
    "mask_document",
    "normalize_document",
    "scrub_documents",
    "validate_document",
    "validate_idempotency_key",
    "validate_payment_id",
]

IdentifierType = Literal["CPF", "CNPJ"]

_STRIP: Final = str.maketrans("", "", ".-/ \t\r\n")
_PAYMENT_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,99}")
_KEY_RE: Final = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,38}[\x21-\x7e])?")
_EMBEDDED_RES: Final = (
    # Documents of digits wherever digits end (glued to letters too: `CPF52998224725`,
    # a consent id `x52998224725x`); then alphanumeric CNPJs standing alone (letters are
    # part of them).  Two passes: the second must not swallow what the first would see.
    # Only what passes its check digits is masked.
    re.compile(
        r"(?<!\d)(?:\d{3}\.?\d{3}\.?\d{3}-?\d{2}|\d{2}\.?\d{3}\.?\d{3}/?\d{4}-?\d{2})(?!\d)"
    ),
    re.compile(
        r"(?<![0-9A-Za-z])[0-9A-Za-z]{2}\.?[0-9A-Za-z]{3}\.?[0-9A-Za-z]{3}/?[0-9A-Za-z]{4}-?\d{2}"
        r"(?![0-9A-Za-z])"
    ),
)
_CNPJ_W1: Final = (5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)
_CNPJ_W2: Final = (6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)
_KEY_DOMAIN: Final = b"klavi-async/cancel/v1"
_KEY_PREFIX: Final = "kc1-"


class InvalidInput(ValueError):
    """
    An argument that cannot be sent to Klavi.

    Strictly private: the client turns it into `CancelFailed(kind=INVALID_REQUEST)`.
    The message never holds a full document.
    """


def normalize_document(raw: str) -> str:
    """
    Return the bare form of a CPF or CNPJ: punctuation and spaces removed, letters upper-cased.

    `"529.982.247-25"` → `"52998224725"`, `"12.abc.345/01de-35"` → `"12ABC34501DE35"`.
    Any character other than digits, ASCII letters, `.`, `-`, `/` and whitespace raises
    `InvalidInput`.
    """
    bare = raw.translate(_STRIP)
    # str methods, not a regex: this runs on every cancel.  ASCII is checked before
    # upper-casing, since some non-ASCII letters upper-case to ASCII ('ß' -> 'SS').
    if not (bare.isascii() and (bare.isalnum() or not bare)):
        raise InvalidInput("cancelled_by may hold only digits, letters, '.', '-', '/' and spaces")
    return bare.upper()


_CPF_W1: Final = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_CPF_W2: Final = (11, 10, 9, 8, 7, 6, 5, 4, 3, 2)


def _check_digit(values: list[int], weights: tuple[int, ...]) -> int:
    remainder = sum(map(int.__mul__, values, weights)) % 11
    return 0 if remainder < 2 else 11 - remainder


def is_valid_cpf(bare: str) -> bool:
    """True for 11 digits with both mod-11 check digits right and not all digits equal."""
    if len(bare) != 11 or not (bare.isascii() and bare.isdigit()) or bare == bare[0] * 11:
        return False
    digits = list(map(int, bare))
    dv1 = _check_digit(digits, _CPF_W1)
    dv2 = _check_digit(digits, _CPF_W2)
    return digits[9] == dv1 and digits[10] == dv2


def is_valid_cnpj(bare: str) -> bool:
    """
    True for a numeric or alphanumeric CNPJ in bare form.

    Twelve characters of `0-9A-Z` then two numeric check digits, computed mod 11 with each
    character worth its ASCII code minus 48.  A root of all zeros is rejected.
    """
    if (
        len(bare) != 14
        or not bare.isascii()
        or not bare[:12].isalnum()
        or (not bare[:12].isupper() and not bare[:12].isdigit())
        or not bare[12:].isdigit()
        or bare[:12] == "0" * 12
    ):
        return False
    values = [ord(c) - 48 for c in bare]
    dv1 = _check_digit(values, _CNPJ_W1)
    dv2 = _check_digit(values, _CNPJ_W2)
    return values[12] == dv1 and values[13] == dv2


def infer_identifier_type(bare: str) -> IdentifierType | None:
    """`CPF` for 11 characters, `CNPJ` for 14, otherwise None."""
    if len(bare) == 11:
        return "CPF"
    if len(bare) == 14:
        return "CNPJ"
    return None


def mask_document(document: str) -> str:
    """
    Mask a CPF or CNPJ for logs and messages (LGPD practice).

    A CPF shows as `***.456.789-**`, a CNPJ as `**.345.678/0001-**`.  Anything else
    shows only its length, e.g. `<9 chars>`, so an invalid input never leaks either.
    """
    try:
        bare = normalize_document(document)
    except InvalidInput:
        return f"<{len(document)} chars>"
    if len(bare) == 11:
        return f"***.{bare[3:6]}.{bare[6:9]}-**"
    if len(bare) == 14:
        return f"**.{bare[2:5]}.{bare[5:8]}/{bare[8:12]}-**"
    return f"<{len(bare)} chars>"


def scrub_documents(text: str, known: str | None = None) -> str:
    """
    Mask every CPF or CNPJ found in *text* (bare or formatted) and any occurrence of *known*.

    Used on messages that come from the server, which may echo the document back.
    """
    if known:
        text = text.replace(known, mask_document(known))

    def _mask(match: re.Match[str]) -> str:
        bare = match.group(0).translate(_STRIP).upper()
        if is_valid_cpf(bare) or is_valid_cnpj(bare):
            return mask_document(bare)
        return match.group(0)

    for pattern in _EMBEDDED_RES:
        text = pattern.sub(_mask, text)
    return text


MAX_KEPT: Final = 100
"""A value kept from invalid input (a payment id, a key) keeps at most this many characters."""
CLIP_MARKER: Final = "…(clipped)"


def clip_kept(value: str, limit: int = MAX_KEPT) -> str:
    """
    *value* with documents masked and clipped to *limit* characters plus a marker.

    For values kept from input that may be anything (an invalid payment id of 10 MB, a
    CPF passed as an id): only a window a little wider than *limit* is scrubbed, so the
    cost stays bounded, and the scrub comes first so a clipped document cannot show whole.
    """
    shown = scrub_documents(value[: limit + 20])
    if len(shown) <= limit and len(value) <= limit + 20:
        return shown
    return shown[:limit] + CLIP_MARKER


def validate_document(cancelled_by: str, identifier_type: str | None) -> tuple[str, IdentifierType]:
    """
    Normalise and check `cancelled_by` against `identifier_type` (inferred when None).

    Returns `(bare_document, "CPF" | "CNPJ")`; raises `InvalidInput` otherwise.
    """
    bare = normalize_document(cancelled_by)
    inferred = infer_identifier_type(bare)
    if identifier_type is None:
        if inferred is None:
            raise InvalidInput(
                f"cancelled_by must be a CPF (11 digits) or a CNPJ (14 characters), "
                f"got {len(bare)} characters"
            )
        kind: IdentifierType = inferred
    else:
        wanted = identifier_type.strip().upper()
        if wanted not in ("CPF", "CNPJ"):
            # Echo it only when it cannot be a document (arguments swapped by mistake).
            shown = (
                repr(identifier_type)
                if len(identifier_type) <= 8 and not any(c.isdigit() for c in identifier_type)
                else f"<{len(identifier_type)} chars>"
            )
            raise InvalidInput(f"identifier_type must be 'CPF' or 'CNPJ', got {shown}")
        kind = "CPF" if wanted == "CPF" else "CNPJ"
        if inferred != kind:
            raise InvalidInput(
                f"identifier_type is {kind} but cancelled_by has {len(bare)} characters"
            )
    valid = is_valid_cpf(bare) if kind == "CPF" else is_valid_cnpj(bare)
    if not valid:
        raise InvalidInput(f"cancelled_by is not a valid {kind}: {mask_document(bare)}")
    return bare, kind


class DocumentCache:
    """
    `validate_document()` remembered for the documents seen recently.  Strictly private.

    A batch usually cancels on behalf of one or a few documents, and checking one costs
    more than anything else the SDK does before sending, so each client keeps the answers
    for up to *size* distinct `(cancelled_by, identifier_type)` pairs (validation is a
    pure function).  Only valid documents are kept; `clear()` forgets them all.
    """

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = 256) -> None:
        self._entries: dict[tuple[str, str | None], tuple[str, IdentifierType]] = {}
        self._size = size

    def validate(
        self, cancelled_by: str, identifier_type: str | None
    ) -> tuple[str, IdentifierType]:
        """The same as `validate_document(cancelled_by, identifier_type)`."""
        key = (cancelled_by, identifier_type)
        checked = self._entries.get(key)
        if checked is None:
            checked = validate_document(cancelled_by, identifier_type)
            entries = self._entries
            if len(entries) >= self._size:
                del entries[next(iter(entries))]  # the oldest: a dict keeps insertion order
            entries[key] = checked
        return checked

    def clear(self) -> None:
        """Forget every document."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never the documents themselves
        return f"<DocumentCache {len(self._entries)}/{self._size}>"


def validate_payment_id(payment_id: str, name: str = "payment_id") -> str:
    """Check an id against Open Finance Brasil's `^[A-Za-z0-9][A-Za-z0-9-]{0,99}$`."""
    if not _PAYMENT_ID_RE.fullmatch(payment_id):
        # Scrubbed: a CPF or CNPJ passed as the payment id (arguments swapped) is not echoed.
        shown = scrub_documents(payment_id[:60])
        shown = shown[:40] + ("..." if len(shown) > 40 else "")
        raise InvalidInput(
            f"{name} must be 1-100 letters, digits or '-' and start with a letter or digit, "
            f"got {shown!r}"
        )
    return payment_id


def validate_idempotency_key(key: str) -> str:
    """Check a key: 1-40 printable ASCII characters, no leading or trailing whitespace."""
    if not _KEY_RE.fullmatch(key):
        raise InvalidInput(
            "idempotency_key must be 1-40 printable ASCII characters "
            "with no leading or trailing whitespace"
        )
    return key


def deterministic_idempotency_key(
    payment_id: str, cancelled_by: str, *, secret: bytes | None = None
) -> str:
    """
    Derive the idempotency key of "cancel this payment on behalf of this document".

    The same inputs always give the same key, so a redelivered message or a rerun batch
    re-sends the key it sent before, and Klavi can recognise the repeat.  The key is
    `kc1-` plus 32 hex characters (36 in all).  The document is normalised first, so
    `"529.982.247-25"` and `"52998224725"` give the same key; it cannot be read back
    from the key.  Without *secret* the key is an unkeyed BLAKE2b digest; with *secret*
    (bytes kept outside your logs) it is an HMAC-SHA256 cut to 128 bits, so nobody without
    the secret can confirm a guessed CPF against a key.

    Raises `ValueError` if the payment id or the document is malformed.
    """
    validate_payment_id(payment_id)
    bare = normalize_document(cancelled_by)
    message = b"\x00".join((_KEY_DOMAIN, payment_id.encode(), bare.encode()))
    if secret is None:
        digest = hashlib.blake2b(message, digest_size=16).hexdigest()
    else:
        digest = hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]
    return _KEY_PREFIX + digest
