"""
Reading `cancel-batch` (and `enqueue`) input: CSV with a header, or JSON Lines.

Input is read lazily, so memory does not grow with its length; the rules for one row are
`_rows`'.  What cannot be read as rows at all (an empty file, an open quote swallowing the
rows after it, CSV where JSON Lines belong, another encoding) raises `InputError`, naming
the file and, where it can, the line.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from typing import IO, Any, Final

from .._rows import FIELDS, REQUIRED, InputError, Row, broken_row, misspelt, parse_row

__all__ = ["count_rows", "input_format", "open_rows", "read_rows"]


def input_format(path: str) -> str:
    """`"csv"` or `"jsonl"` from the file name; `-` is JSON Lines from stdin."""
    lowered = path.lower()
    if path == "-" or lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    raise InputError(f"cannot tell the format of {path!r}: use a .csv, .jsonl or .ndjson file")


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
    if header:
        header = reader.fieldnames = [name.lstrip("\ufeff") for name in header]
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
    header = list(reader.fieldnames or ())
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
                yield broken_row(line, f"the row is not valid CSV ({exc})")
                continue
            if _swallowed(record, header):
                # A quote left open has swallowed the rows after it, which must not
                # vanish without a word.
                raise _open_quote(path, first, reader.line_num)
            if (record.get("payment_id") or "").lstrip("\ufeff") == "payment_id":
                yield broken_row(line, "a header line again (two files joined?)")
                continue
            yield parse_row(line, record)


def _open_quote(path: str, first: int, last: int) -> InputError:
    runs = "is never closed" if last <= first else f"runs to line {last}"
    return InputError(
        f"{path}: line {first} opens a quote that {runs}, so the lines after it read as "
        f"one field: close the quote and rerun (the rows before line {first} are handled)"
    )


def _swallowed(record: dict[str | Any, Any], header: list[str]) -> bool:
    """
    Whether a quoted field holds rows: a line break in a field of ours (none holds one),
    or, in another column, a line that reads as a row of this file (an id, then a
    document where the header puts them).  A quoted address over two lines passes.
    """
    values: list[tuple[str | None, object]] = []
    for name, value in record.items():
        extra = value if name is None and isinstance(value, list) else [value]
        values.extend((name, item) for item in extra)  # columns past the header: key None
    for name, value in values:
        if not isinstance(value, str) or ("\n" not in value and "\r" not in value):
            continue
        if name in FIELDS:
            return True
        if any(_reads_as_row(part, header) for part in value.splitlines()[1:]):
            return True
    return False


_DOCUMENT_LIKE: Final = re.compile(r"[0-9A-Za-z]{11}|[0-9A-Za-z]{14}")


def _reads_as_row(text: str, header: list[str]) -> bool:
    """Whether *text* is a CSV row with an id and a CPF/CNPJ-like text where *header* puts them."""
    try:
        fields = next(csv.reader([text]), [])
    except csv.Error:
        return False
    pid, doc = header.index("payment_id"), header.index("cancelled_by")
    if len(fields) <= max(pid, doc) or not fields[pid].strip():
        return False
    bare = "".join(c for c in fields[doc] if c not in ".-/ ")
    return _DOCUMENT_LIKE.fullmatch(bare) is not None


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
                if first and "\x00" in text:
                    raise InputError(
                        f"{path} is not UTF-8 (UTF-16?): save it as UTF-8 and rerun"
                    ) from None
                if first and _csv_header(text):
                    raise InputError(
                        "stdin holds CSV (its first line is a header), but stdin takes JSON "
                        "lines: give the CSV file's path (a name ending in .csv)"
                        if path == "-"
                        else f"{path} holds CSV (its first line is a header), but its name "
                        "says JSON lines: rename it to end in .csv"
                    ) from None
                yield broken_row(line, "the line is not valid JSON")
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
