"""
`RowFeed`: the input's rows, read by a thread so a stalled input never blocks the loop.

A stalled input (an idle pipe, a terminal) can block a read for ever; the loop only
waits on a future the reader thread resolves, so a signal or `close()` ends the wait at
once.  At most *capacity* rows are read ahead, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import stat
import sys
import threading
from collections import deque

from .._rows import InputError, Row
from ._input import open_rows

__all__ = ["RowFeed"]


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
        except InputError as exc:  # our own words, naming the input (an open quote, ...)
            self.error = str(exc)
        except Exception as exc:  # a read error mid-file
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
