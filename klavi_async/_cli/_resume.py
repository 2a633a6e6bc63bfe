"""
The results file of `klavi-async cancel-batch`, and what a rerun reads back from it.

The results file is JSON Lines, one line per finished item, appended as results arrive
and fsynced at a steady cadence.  On a rerun, `ResumeState` reads it back: a row with a
final line (cancelled, or a failure that is neither retryable nor of unknown outcome)
*written for that same request* (by `request_digest`) is not sent again, and every other
row is sent with the idempotency key its request was sent with before.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from attrs import define, field

from .._documents import deterministic_idempotency_key
from .._rows import InputError, Row, item_id

__all__ = ["CREDENTIAL_KINDS", "ResultsFile", "ResumeState", "check_paths", "is_final"]

_LONGEST_LINE = 64 * 1024
"""Bytes: longer than any line a run writes, so a torn tail is found in that many."""


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


CREDENTIAL_KINDS = frozenset({"authentication_failed", "unauthorized"})
"""Refused for its credentials: nothing applied, so a rerun (keys fixed) sends it again."""


def is_final(record: dict[str, Any]) -> bool:
    """
    A line is final when `ok`, or when `retryable` is false and `outcome_unknown` is
    false, unless its credentials were refused (`CREDENTIAL_KINDS`).
    """
    if record.get("ok") is True:
        return True
    if record.get("kind") in CREDENTIAL_KINDS:
        return False
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
    unreadable: int = 0
    """Lines that are not JSON objects, ignored."""

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
                    record = None
                if isinstance(record, dict):
                    state._add(record)
                elif text.strip():
                    state.unreadable += 1
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
        unkeyed_or_same = request is not None and request.idempotency_key in (None, previous)
        if previous is not None and unkeyed_or_same:
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


class ResultsFile:
    """
    Appends JSON lines; flushes each line, fsyncs every `fsync_interval` seconds.

    Holds an advisory lock on the file while open: a second run on the same results file
    (each would count the other's lines and send what the other is sending) is refused
    with `InputError`, naming the process that holds it when the system says.
    """

    def __init__(self, path: str, *, fsync_interval: float = 1.0) -> None:
        self._path = path
        self._created = not os.path.lexists(path)
        try:
            self._handle = open(path, "a+b")  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        try:
            _lock(self._handle.fileno())
        except OSError:
            holder = _lock_holder(self._handle.fileno())
            self._handle.close()
            who = f"process {holder}" if holder else "another process"
            raise InputError(
                f"--out {path} is in use by {who} (another cancel-batch on the same results "
                "file?): wait for it to finish, or write to another file"
            ) from None
        self._fsync_interval = fsync_interval
        self._last_sync = time.monotonic()
        self.written = 0
        self.repaired = self._end_whole()
        """Bytes of a torn last line removed (an earlier run stopped mid-write), or 0."""

    def _end_whole(self) -> int:
        """
        Make the file end with a whole line: remove a torn last line, or end a whole one.

        A run killed mid-write leaves a line cut short, which no rerun can read: it is
        removed (its item has no final line, so it is sent again with the same key).  A
        last line that is JSON but lacks its line break only gets one; a tail longer than
        any line of ours is no line of ours, and is left alone.
        """
        handle = self._handle
        size = handle.seek(0, os.SEEK_END)
        start = max(size - _LONGEST_LINE, 0)
        handle.seek(start)
        tail = handle.read()
        if not tail or tail.endswith(b"\n"):
            return 0
        cut = tail.rfind(b"\n") + 1
        last = tail[cut:]
        if (cut == 0 and start > 0) or not _torn_line_of_ours(last):
            handle.write(b"\n")  # a file of another kind, or a whole line: kept as it is
            return 0
        os.ftruncate(handle.fileno(), start + cut)
        handle.seek(0, os.SEEK_END)
        return len(last)

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._handle.flush()
        self.written += 1
        now = time.monotonic()
        if now - self._last_sync >= self._fsync_interval:
            _sync(self._handle.fileno())
            self._last_sync = now

    def close(self) -> None:
        """Flush, fsync and close; a file this run made and wrote nothing to is removed."""
        if self._handle.closed:
            return
        if self._created and not self.written:
            with contextlib.suppress(OSError):
                os.unlink(self._path)  # a usage error must not leave an empty file behind
        self._handle.flush()
        _sync(self._handle.fileno())
        self._handle.close()


_LINE_START = b'{"payment_id":'
"""How every line a run writes begins (`to_record()` puts `payment_id` first)."""


def _torn_line_of_ours(text: bytes) -> bool:
    """Whether *text*, a last line without its line break, is a line of ours cut short."""
    if not (text.startswith(_LINE_START) or _LINE_START.startswith(text)):
        return False  # another kind of file: never cut
    try:
        json.loads(text)
    except ValueError:
        return True
    return False  # whole, only its line break missing


def _sync(fd: int) -> None:
    """fsync, where the file can be synced (`--out /dev/null` cannot: EINVAL)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
            raise


def _lock_holder(fd: int) -> int | None:
    """The PID holding a lock on *fd*'s file, from /proc/locks (Linux); None elsewhere."""
    inode = os.fstat(fd).st_ino
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()  # `1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> ...`
            mine = len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}")
            if mine and int(fields[4]) != os.getpid():
                return int(fields[4])
    return None


def _lock(fd: int) -> None:
    """An exclusive advisory lock on *fd*, or `OSError` at once if another holds one."""
    if sys.platform == "win32":  # pragma: no cover - no flock there; runs are not guarded
        return
    import fcntl  # POSIX only: imported here, so the module loads on Windows

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
