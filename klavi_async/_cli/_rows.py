"""
Input rows for `klavi-async cancel-batch` (and `enqueue`): CSV with a header, or JSON Lines.

Input is read lazily, so memory does not grow with its length.  A malformed row becomes a
`Row` with `error`, never an exception: each row gets one result line.

A row names its request by `row_digest`: a keyed BLAKE2b digest of the row's fields
(payment id, consent id, document, identifier type, idempotency key).  The results file
must not hold the document, and the digest cannot give it back any more than the
deterministic idempotency key on the same line can; its fixed key scopes it to this use.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any, Final

from attrs import frozen

from .._documents import normalize_document
from .._results import CancelRequest
from .._values import text_or_none

__all__ = [
    "InputError",
    "Row",
    "count_rows",
    "input_format",
    "item_id",
    "open_rows",
    "parse_row",
    "read_rows",
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


def input_format(path: str) -> str:
    """`"csv"` or `"jsonl"` from the file name; `-` is JSON Lines from stdin."""
    lowered = path.lower()
    if path == "-" or lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    raise InputError(f"cannot tell the format of {path!r}: use a .csv, .jsonl or .ndjson file")


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
    """Whether *a* and *b* differ by at most one letter added, dropped, changed or swapped."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) <= 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
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
        return _broken(line, "the row is not an object")
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


def _broken(line: int, error: str) -> Row:
    """A row that holds no fields at all: named by its line."""
    return Row(line, "", None, None, error, row_digest({}, line))


def _open(path: str, newline: str) -> IO[str]:
    """
    *path* as text.  *newline*: `""` for CSV (the csv module reads the line ends itself),
    `"\n"` for JSON Lines, where a lone `\r` is JSON white space, not the end of a row.
    """
    if path == "-":
        try:
            # A private descriptor: a reader thread blocked on it holds no lock of sys.stdin.
            fd = os.dup(sys.stdin.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return _Borrowed(sys.stdin.buffer, newline)  # stdin replaced by an in-memory stream
        return open(fd, encoding="utf-8-sig", errors="replace", newline=newline)
    try:
        return open(path, encoding="utf-8-sig", errors="replace", newline=newline)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


class _Borrowed(io.TextIOWrapper):
    """Text over a stream we do not own: closing detaches, the stream stays open."""

    def __init__(self, buffer: IO[bytes], newline: str) -> None:
        super().__init__(buffer, encoding="utf-8-sig", errors="replace", newline=newline)

    def close(self) -> None:
        with contextlib.suppress(ValueError):  # detached already
            self.detach()


def read_rows(path: str) -> Iterator[Row]:
    """
    Open *path* now and return an iterator over its rows, read one by one.

    Raises `InputError` at once for an unknown format, an unreadable file or a CSV header
    without `payment_id` and `cancelled_by`; a malformed row later becomes a `Row` with
    `error`.
    """
    return open_rows(path)[1]


def open_rows(path: str) -> tuple[IO[str], Iterator[Row]]:
    """`read_rows()`, and the open handle (to close if the rows are never read)."""
    kind = input_format(path)
    handle = _open(path, "\n" if kind == "jsonl" else "")
    if kind == "jsonl":
        return handle, _jsonl_rows(handle, path)
    try:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
    except (csv.Error, OSError) as exc:
        handle.close()
        raise InputError(f"cannot read the CSV header of {path}: {exc}") from None
    if header and any("\x00" in name for name in header):
        handle.close()
        raise InputError(f"{path} is not UTF-8 (UTF-16?): save it as UTF-8 and rerun")
    if not header:
        handle.close()
        raise InputError(
            f"{path} is empty: a CSV needs a header line (payment_id,cancelled_by,...) "
            "and one row per payment"
        )
    near = misspelt(header)
    if near is not None:
        handle.close()
        raise InputError(
            f"the CSV header of {path} has the column {near}: a misspelt column would be "
            "ignored; name it as it should be"
        )
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        handle.close()
        raise InputError(f"the CSV header of {path} lacks {', '.join(missing)}")
    return handle, _csv_rows(reader, handle, path)


def _csv_rows(reader: csv.DictReader[str], handle: IO[str], path: str) -> Iterator[Row]:
    columns = len(reader.fieldnames or ())
    with handle:
        line = 0
        while True:
            line += 1
            first = reader.line_num + 1  # the file line the record starts on
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
                if reader.line_num > first:  # an open quote swallowed lines until the limit
                    raise _open_quote(path, first, reader.line_num) from None
                # The reader has consumed the line it failed on and goes on with the
                # next one.  The error's text is the csv module's own, never the field.
                yield _broken(line, f"the row is not valid CSV ({exc})")
                continue
            if _swallowed(record, columns):
                # A quote left open has swallowed the rows after it, which must not
                # vanish without a word.
                raise _open_quote(path, first, reader.line_num)
            yield parse_row(line, record)


def _open_quote(path: str, first: int, last: int) -> InputError:
    runs = "is never closed" if last <= first else f"runs to line {last}"
    return InputError(
        f"{path}: line {first} opens a quote that {runs}, so the lines after it read as "
        f"one field: close the quote and rerun (the rows before line {first} are handled)"
    )


def _swallowed(record: dict[str | Any, Any], columns: int) -> bool:
    """
    Whether a quoted field holds rows: a line break in a field of ours (none holds one),
    or in another column a line that reads as a row (as many commas as a row has).
    """
    for name, value in record.items():
        if not isinstance(value, str) or ("\n" not in value and "\r" not in value):
            continue
        if name in FIELDS or name is None:
            return True
        if any(part.count(",") >= columns - 1 for part in value.splitlines()[1:]):
            return True
    return False


def _jsonl_rows(handle: IO[str], path: str) -> Iterator[Row]:
    with handle:
        first = True
        for line, text in enumerate(handle, start=1):
            text = text.lstrip("\ufeff")  # files joined with `cat`: a BOM mid-stream
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except (ValueError, RecursionError):  # not JSON, or nested too deep
                if first and _csv_header(text):
                    raise InputError(
                        "stdin holds CSV (its first line is a header), but stdin takes JSON "
                        "lines: give the CSV file's path (a name ending in .csv)"
                        if path == "-"
                        else f"{path} holds CSV (its first line is a header), but its name "
                        "says JSON lines: rename it to end in .csv"
                    ) from None
                yield _broken(line, "the line is not valid JSON")
                continue
            finally:
                first = False
            yield parse_row(line, data)


def _csv_header(text: str) -> bool:
    """Whether *text* reads as a CSV header naming the required fields."""
    names = {name.strip().strip('"').lstrip("\ufeff") for name in text.split(",")}
    return all(name in names for name in REQUIRED)


def count_rows(path: str) -> int | None:
    """How many data rows *path* has (for the progress bar); None for stdin or on error."""
    if path == "-":
        return None
    try:
        with open(path, "rb") as handle:
            lines = sum(1 for line in handle if line.strip())
    except OSError:
        return None
    return max(lines - 1, 0) if input_format(path) == "csv" else lines
