"""
The rules for one input row of `klavi-async cancel-batch` (and `enqueue`, and a worker's
message): which fields, of which type, make a request; a malformed row becomes a `Row`
with `error`, never an exception, so each row gets one result line.  Reading files of
rows is `_input`'s.

A row names its request by `row_digest`: a keyed BLAKE2b digest of the row's fields
(payment id, consent id, document, identifier type, idempotency key).  The results file
must not hold the document, and the digest cannot give it back any more than the
deterministic idempotency key on the same line can; its fixed key scopes it to this use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final

from attrs import frozen

from ._documents import normalize_document
from ._results import CancelRequest
from ._values import text_or_none

__all__ = [
    "FIELDS",
    "REQUIRED",
    "InputError",
    "Row",
    "broken_row",
    "item_id",
    "misspelt",
    "parse_row",
    "row_digest",
]

FIELDS: Final = ("payment_id", "cancelled_by", "identifier_type", "idempotency_key", "consent_id")
REQUIRED: Final = ("payment_id", "cancelled_by")

_DIGEST_KEY: Final = b"klavi-async/cancel-batch/request/v1"


class InputError(Exception):
    """The input cannot be read at all (unreadable file, no header, unknown format)."""


def _document_part(document: str | None) -> str:
    if document is None:
        return ""
    try:
        return normalize_document(document)  # "529.982.247-25" and "52998224725": one request
    except ValueError:
        return document


def row_digest(values: dict[str, str | None], line: int) -> str:
    """
    The digest that ties a result line to the request it was written for.

    Keyed BLAKE2b, 128 bits, over the row's fields; a row that parsed to nothing (not JSON,
    not an object) is named by its line number.
    """
    if not any(values.values()):
        message = f"#{line}".encode()
    else:
        parts = [
            values.get("payment_id") or "",
            values.get("consent_id") or "",
            _document_part(values.get("cancelled_by")),
            values.get("identifier_type") or "",
            values.get("idempotency_key") or "",
        ]
        message = "\x00".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(message, key=_DIGEST_KEY, digest_size=16).hexdigest()


def item_id(payment_id: str, consent_id: str | None, line: int) -> str:
    """The identity of an input item across runs."""
    if not payment_id:
        return f"#{line}"
    return f"{consent_id}/{payment_id}" if consent_id else payment_id


@frozen
class Row:
    """One input row: a request, or the reason it could not become one."""

    line: int
    payment_id: str
    consent_id: str | None
    request: CancelRequest | None
    error: str | None = None
    digest: str = ""
    """`row_digest()` of the row's fields: which result lines answer it."""

    @property
    def item(self) -> str:
        return item_id(self.payment_id, self.consent_id, self.line)


def _field(value: object) -> str | None:
    """A row field as text: stripped, blank being missing."""
    return text_or_none(value, strip=True)


_JSON_TYPES: Final = ((bool, "true or false"), (int, "a number"), (float, "a number"))


def _not_text(data: dict[Any, Any]) -> str | None:
    """Why a field of *data* is no text (a JSON number, array, ...), or None when all are."""
    for name in FIELDS:
        value = data.get(name)
        if value is None or isinstance(value, str):
            continue
        kind = next((k for t, k in _JSON_TYPES if isinstance(value, t)), "an array or object")
        # A number is never an id or a document: 1e+20 or 0.5 spelled out is not what the
        # row meant, and a CPF loses its leading zeros.
        hint = ": put it in quotes" if kind == "a number" else ""
        return f"{name} must be a JSON string, not {kind}{hint}"
    return None


def _squash(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def _one_edit(a: str, b: str) -> bool:
    """
    Whether *a* and *b* are equal, or differ by one letter added, dropped or two swapped.

    Not a letter changed: `content_id` is another word than `consent_id`, not a slip.
    """
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return not diff or (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def misspelt(names: Iterable[object]) -> str | None:
    """
    The first name that is not one of ours but nearly is (`consentId`, `identifer_type`),
    as "consentId (consent_id?)"; None when there is none.

    Such a field would be ignored, and the row sent another way than meant (an Automatic
    Pix payment as an instant one).  Names unlike ours (an export's other columns) pass.
    """
    for name in names:
        if not isinstance(name, str) or name in FIELDS:
            continue
        squashed = _squash(name)
        for field_name in FIELDS:
            if squashed and _one_edit(squashed, _squash(field_name)):
                return f"{name} ({field_name}?)"
    return None


def parse_row(line: int, data: Any) -> Row:
    """
    The `Row` for *data*, one parsed CSV record or JSON value from input line *line*.

    The batch rules, shared with the JetStream worker: a row needs `payment_id` and
    `cancelled_by`, every field given being a string; anything else (not an object, a
    field missing or of another JSON type) is a `Row` with `error`.
    """
    if not isinstance(data, dict):
        return broken_row(line, "the row is not an object")
    wrong = _not_text(data)
    near = misspelt(data)
    if near is not None:
        wrong = f"unknown field {near}: a misspelt field would be ignored"
    if wrong is not None:
        # Named by its line, as a row without fields: the same row fixed is another request.
        named = data.get("payment_id")
        consent = data.get("consent_id")
        return Row(
            line,
            named.strip() if isinstance(named, str) else "",
            consent.strip() or None if isinstance(consent, str) else None,
            None,
            wrong,
            row_digest({}, line),
        )
    values = {name: _field(data.get(name)) for name in FIELDS}
    digest = row_digest(values, line)
    payment_id = values["payment_id"] or ""
    consent_id = values["consent_id"]
    cancelled_by = values["cancelled_by"]
    if not payment_id or cancelled_by is None:
        missing = [name for name in REQUIRED if values[name] is None]
        return Row(line, payment_id, consent_id, None, f"missing {', '.join(missing)}", digest)
    request = CancelRequest(
        payment_id,
        cancelled_by,
        identifier_type=values["identifier_type"],
        idempotency_key=values["idempotency_key"],
        consent_id=consent_id,
    )
    return Row(line, payment_id, consent_id, request, None, digest)


def broken_row(line: int, error: str) -> Row:
    """A row that holds no fields at all: named by its line."""
    return Row(line, "", None, None, error, row_digest({}, line))
