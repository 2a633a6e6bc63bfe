"""
Batch files for `klavi-async cancel-batch`: input rows, the results file, resuming.

Input is read lazily (CSV with a header, or JSON Lines), so memory does not grow with
its length; `RowFeed` reads it in a thread, so a stalled input (an idle pipe, a terminal)
never blocks the event loop.  The results file is JSON Lines, one line per finished item,
appended as results arrive and fsynced at a steady cadence.  On a rerun, `ResumeState`
reads it back: a row with a final line (cancelled, or a failure that is neither retryable
nor of unknown outcome) *written for that same request* is not sent again, and every
other row is sent with the idempotency key its request was sent with before.

A line names the request it answers by `request_digest`: a keyed BLAKE2b digest of the
row's fields (payment id, consent id, document, identifier type, idempotency key).  The
line must not hold the document, and the digest cannot give it back any more than the
deterministic idempotency key on the same line can; its fixed key scopes it to this use.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import os
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import IO, Any, Final

from attrs import define, field, frozen

from ._documents import deterministic_idempotency_key, normalize_document
from ._results import CancelRequest

__all__ = [
    "InputError",
    "ResultsFile",
    "ResumeState",
    "Row",
    "RowFeed",
    "check_paths",
    "count_rows",
    "input_format",
    "item_id",
    "open_rows",
    "read_rows",
    "row_digest",
]

FIELDS: Final = ("payment_id", "cancelled_by", "identifier_type", "idempotency_key", "consent_id")
REQUIRED: Final = ("payment_id", "cancelled_by")


_DIGEST_KEY: Final = b"klavi-async/cancel-batch/request/v1"


class InputError(Exception):
    """The input cannot be read at all (unreadable file, no header, unknown format)."""


def check_paths(input_path: str, out_path: str) -> None:
    """
    Refuse a results file that cannot work: a directory, or the input file itself.

    The same file by path, symlink or hard link (same device and inode) would make the
    batch read its own results back as input.  `-` is checked through stdin's descriptor.
    """
    if os.path.isdir(out_path):
        raise InputError(f"--out {out_path} is a directory: name a file, e.g. results.jsonl")
    try:
        out = os.stat(out_path)
    except OSError:
        return  # not there yet: it cannot be the input (ResultsFile reports other problems)
    try:
        source = os.fstat(sys.stdin.fileno()) if input_path == "-" else os.stat(input_path)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return  # the input's own error is reported when it is opened
    if (source.st_dev, source.st_ino) == (out.st_dev, out.st_ino):
        name = "stdin" if input_path == "-" else input_path
        raise InputError(
            f"the input ({name}) and --out ({out_path}) are the same file: the batch would "
            "read its own results back; write the results to another file"
        )


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
        return Row(line, "", None, None, "the row is not an object", row_digest({}, line))
    values = {name: _text(data.get(name)) for name in FIELDS}
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


def _open(path: str) -> IO[str]:
    if path == "-":
        try:
            # A private descriptor: a reader thread blocked on it holds no lock of sys.stdin.
            fd = os.dup(sys.stdin.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return _Borrowed(sys.stdin.buffer)  # stdin replaced by an in-memory stream
        return open(fd, encoding="utf-8-sig", errors="replace")
    try:
        return open(path, encoding="utf-8-sig", errors="replace", newline="")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


class _Borrowed(io.TextIOWrapper):
    """Text over a stream we do not own: closing detaches, the stream stays open."""

    def __init__(self, buffer: IO[bytes]) -> None:
        super().__init__(buffer, encoding="utf-8-sig", errors="replace")

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
    handle = _open(path)
    if kind == "jsonl":
        return handle, _jsonl_rows(handle, path)
    try:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
    except (csv.Error, OSError) as exc:
        handle.close()
        raise InputError(f"cannot read the CSV header of {path}: {exc}") from None
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        handle.close()
        raise InputError(f"the CSV header of {path} lacks {', '.join(missing)}")
    return handle, _csv_rows(reader, handle)


def _csv_rows(reader: csv.DictReader[str], handle: IO[str]) -> Iterator[Row]:
    with handle:
        for line, record in enumerate(reader, start=1):
            yield _row(line, record)


def _jsonl_rows(handle: IO[str], path: str) -> Iterator[Row]:
    with handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except ValueError:
                yield Row(line, "", None, None, "the line is not valid JSON", row_digest({}, line))
                continue
            yield _row(line, data)


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


def is_final(record: dict[str, Any]) -> bool:
    """A line is final when `ok`, or when `retryable` is false and `outcome_unknown` is false."""
    if record.get("ok") is True:
        return True
    return record.get("retryable") is False and record.get("outcome_unknown") is False


@define
class ResumeState:
    """What an earlier run left in the results file."""

    final: dict[str, bool] = field(factory=dict)
    """Requests (by `request_digest`) with a final line, and whether it was a success."""
    keys: dict[str, str] = field(factory=dict)
    """The idempotency key each request (by digest) was last sent with."""
    legacy: dict[str, tuple[bool, str | None]] = field(factory=dict)
    """Final lines without a digest (an older version wrote them), by item: ok, key."""

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
        key = record.get("idempotency_key")
        key = key if isinstance(key, str) and key else None
        digest = record.get("request_digest")
        if isinstance(digest, str) and digest:
            if key is not None:
                self.keys[digest] = key
            if is_final(record):
                self.final[digest] = record.get("ok") is True
            return
        payment_id = record.get("payment_id")
        if not isinstance(payment_id, str) or not is_final(record):
            return
        consent_id = record.get("consent_id")
        line = record.get("input_line")
        item = item_id(
            payment_id,
            consent_id if isinstance(consent_id, str) else None,
            line if isinstance(line, int) else 0,
        )
        self.legacy[item] = (record.get("ok") is True, key)

    def outcome(self, row: Row) -> bool | None:
        """
        Whether *row* has a final line (True: cancelled, False: failed), or None.

        A line answers the request it was written for: a row changed since then (another
        document, identifier type, consent or key) gets None and is sent again.  A line
        from an older version (no digest) answers the row only when the row would be sent
        with the key the line records, which ties it to the same payment and document.
        """
        found = self.final.get(row.digest)
        if found is not None or not self.legacy:
            return found
        legacy = self.legacy.get(row.item)
        if legacy is None or legacy[1] is None or legacy[1] != self._own_key(row):
            return None
        return legacy[0]

    def key_for(self, row: Row) -> str | None:
        """The key to send *row* with: its own, the one its request was sent with, or derived."""
        previous = self.keys.get(row.digest)
        request = row.request
        if (
            previous is not None
            and request is not None
            and request.idempotency_key
            in (
                None,
                previous,
            )
        ):
            return previous
        return self._own_key(row)

    @staticmethod
    def _own_key(row: Row) -> str | None:
        request = row.request
        if request is None:
            return None
        if request.idempotency_key is not None:
            return request.idempotency_key
        try:
            return deterministic_idempotency_key(request.payment_id, request.cancelled_by)
        except ValueError:
            return None  # the cancel itself reports the invalid input


class RowFeed:
    """
    The input's rows, read by a daemon thread and taken by the event loop.

    The thread may block on the input as long as it likes (an idle pipe, a terminal): the
    loop only waits on a future, so a signal or `close()` ends the wait at once.  At most
    *capacity* rows are read ahead.  Reading happens off the loop, so memory stays bounded
    and the batch never stalls on its own input.
    """

    def __init__(self, path: str, *, capacity: int = 1024) -> None:
        self.path = path
        # Opens now: InputError before anything is written.
        self._handle, self._rows = open_rows(path)
        self._capacity = capacity
        self._buffer: deque[Row] = deque()
        self._lock = threading.Condition()
        self._ended = False
        self._closed = False
        self._interrupted = False
        self.regular = _is_regular(path)
        """The input is a regular file: it has an end, so reading it on is always quick."""
        self.error: str | None = None
        """Why reading stopped before the end, if it did (the rows read before are kept)."""
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._read, name="klavi-batch-input", daemon=True)

    def start(self) -> None:
        """Start reading (on the running loop's behalf)."""
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def _read(self) -> None:
        try:
            for row in self._rows:
                with self._lock:
                    while len(self._buffer) >= self._capacity and not self._closed:
                        self._lock.wait()
                    if self._closed:
                        break
                    self._buffer.append(row)
                    self._notify()
        except Exception as exc:  # a CSV field over the limit, a read error mid-file
            self.error = f"cannot read {self.path}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                self._handle.close()
            with self._lock:
                self._ended = True
                self._notify()

    def _notify(self) -> None:
        """Wake the loop if it waits for a row (the caller holds the lock)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(_resolve, waiter)

    async def next(self) -> Row | None:
        """The next row, or None at the end of the input (or once closed)."""
        while True:
            with self._lock:
                if self._buffer and not self._closed:
                    row = self._buffer.popleft()
                    if len(self._buffer) == self._capacity - 1:
                        self._lock.notify()  # the reader may wait for room
                    return row
                if self._ended or self._closed or self._interrupted:
                    return None
                waiter = asyncio.get_running_loop().create_future()
                self._waiter = waiter
            await waiter

    def interrupt(self) -> None:
        """Make a `next()` that waits for input return None now (until `resume()`)."""
        with self._lock:
            self._interrupted = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _resolve(waiter)

    def resume(self) -> None:
        """Undo `interrupt()`: `next()` waits for input again."""
        with self._lock:
            self._interrupted = False

    def close(self) -> None:
        """Stop taking rows: a pending `next()` returns None now; the thread stops soon."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self._handle.close()  # never started: nobody else holds the input
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _resolve(waiter)

    @property
    def finished(self) -> bool:
        """The whole input was read and taken."""
        with self._lock:
            return self._ended and not self._buffer and not self._closed


def _is_regular(path: str) -> bool:
    try:
        info = os.fstat(sys.stdin.fileno()) if path == "-" else os.stat(path)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return path != "-"  # an in-memory stdin has an end too, but say so only for files
    return stat.S_ISREG(info.st_mode)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
