"""
Batch files for `klavi-async cancel-batch`: input rows, the results file, resuming.

Input is read lazily (CSV with a header, or JSON Lines), so memory does not grow with
its length.  The results file is JSON Lines, one line per finished item, appended as
results arrive and fsynced at a steady cadence.  On a rerun, `ResumeState` reads it
back: an item with a final line (cancelled, or a failure that is not retryable) is not
sent again, and every other item is sent with the idempotency key it was sent with
before.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any, Final

from attrs import define, field, frozen

from ._documents import deterministic_idempotency_key
from ._results import CancelRequest

__all__ = [
    "InputError",
    "ResultsFile",
    "ResumeState",
    "Row",
    "count_rows",
    "input_format",
    "item_id",
    "read_rows",
]

FIELDS: Final = ("payment_id", "cancelled_by", "identifier_type", "idempotency_key", "consent_id")
REQUIRED: Final = ("payment_id", "cancelled_by")


class InputError(Exception):
    """The input cannot be read at all (unreadable file, no header, unknown format)."""


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

    @property
    def item(self) -> str:
        return item_id(self.payment_id, self.consent_id, self.line)


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _row(line: int, data: Any) -> Row:
    if not isinstance(data, dict):
        return Row(line, "", None, None, "the row is not an object")
    values = {name: _text(data.get(name)) for name in FIELDS}
    payment_id = values["payment_id"] or ""
    consent_id = values["consent_id"]
    cancelled_by = values["cancelled_by"]
    if not payment_id or cancelled_by is None:
        missing = [name for name in REQUIRED if values[name] is None]
        return Row(line, payment_id, consent_id, None, f"missing {', '.join(missing)}")
    request = CancelRequest(
        payment_id,
        cancelled_by,
        identifier_type=values["identifier_type"],
        idempotency_key=values["idempotency_key"],
        consent_id=consent_id,
    )
    return Row(line, payment_id, consent_id, request)


def _open(path: str) -> IO[str]:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    try:
        return open(path, encoding="utf-8-sig", errors="replace", newline="")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_rows(path: str) -> Iterator[Row]:
    """
    Open *path* now and return an iterator over its rows, read one by one.

    Raises `InputError` at once for an unknown format, an unreadable file or a CSV header
    without `payment_id` and `cancelled_by`; a malformed row later becomes a `Row` with
    `error`.
    """
    kind = input_format(path)
    handle = _open(path)
    if kind == "jsonl":
        return _jsonl_rows(handle, path)
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        handle.close()
        raise InputError(f"the CSV header of {path} lacks {', '.join(missing)}")
    return _csv_rows(reader, handle)


def _csv_rows(reader: csv.DictReader[str], handle: IO[str]) -> Iterator[Row]:
    with handle:
        for line, record in enumerate(reader, start=1):
            yield _row(line, record)


def _jsonl_rows(handle: IO[str], path: str) -> Iterator[Row]:
    try:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except ValueError:
                yield Row(line, "", None, None, "the line is not valid JSON")
                continue
            yield _row(line, data)
    finally:
        if path != "-":
            handle.close()


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


@define
class ResumeState:
    """What an earlier run left in the results file."""

    final: dict[str, bool] = field(factory=dict)
    """Items with a final line, and whether that line was a success."""
    keys: dict[str, str] = field(factory=dict)
    """The idempotency key each item was last sent with."""

    @classmethod
    def load(cls, path: str) -> ResumeState:
        """Read *path* if it exists; unreadable or partial lines are ignored."""
        state = cls()
        try:
            handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
        except FileNotFoundError:
            return state
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        with handle:
            for text in handle:
                try:
                    record = json.loads(text)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    state._add(record)
        return state

    def _add(self, record: dict[str, Any]) -> None:
        payment_id = record.get("payment_id")
        if not isinstance(payment_id, str):
            return
        consent_id = record.get("consent_id")
        line = record.get("input_line")
        item = item_id(
            payment_id,
            consent_id if isinstance(consent_id, str) else None,
            line if isinstance(line, int) else 0,
        )
        key = record.get("idempotency_key")
        if isinstance(key, str) and key:
            self.keys[item] = key
        ok = record.get("ok") is True
        if ok or record.get("retryable") is False:
            self.final[item] = ok

    def key_for(self, row: Row) -> str | None:
        """The key to send *row* with: its own, the one used before, or a derived one."""
        request = row.request
        if request is None:
            return None
        if request.idempotency_key is not None:
            return request.idempotency_key
        previous = self.keys.get(row.item)
        if previous is not None:
            return previous
        try:
            return deterministic_idempotency_key(request.payment_id, request.cancelled_by)
        except ValueError:
            return None  # the cancel itself reports the invalid input


class ResultsFile:
    """Appends JSON lines; flushes each line, fsyncs every `fsync_interval` seconds."""

    def __init__(self, path: str, *, fsync_interval: float = 1.0) -> None:
        try:
            self._handle = open(path, "a+b")  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        self._fsync_interval = fsync_interval
        self._last_sync = time.monotonic()
        self.written = 0
        self._handle.seek(0, os.SEEK_END)
        if self._handle.tell() > 0:
            self._handle.seek(-1, os.SEEK_END)
            if self._handle.read(1) != b"\n":
                self._handle.write(b"\n")  # an earlier run died mid-line

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._handle.flush()
        self.written += 1
        now = time.monotonic()
        if now - self._last_sync >= self._fsync_interval:
            os.fsync(self._handle.fileno())
            self._last_sync = now

    def close(self) -> None:
        """Flush, fsync and close."""
        if self._handle.closed:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
