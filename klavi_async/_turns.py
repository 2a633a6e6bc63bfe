"""
`asyncio.Lock` and `asyncio.Semaphore`, with their free path inline: `_speedups`' trick 5.

Strictly private.  Listed (and re-exported) by `_speedups`, with the other hot-path
tricks; here only to keep that module within its size.  tests/test_speedups.py holds
each next to the asyncio primitive it replaces.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

__all__ = ["Slots", "Turns"]


class _Queue:
    """The queue `Turns` and `Slots` share: waiters first come first served."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def _wait(self, cancelled: Callable[[asyncio.Future[None]], None]) -> None:
        """Queue until woken; if cancelled meanwhile, `cancelled(waiter)` then re-raise."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        except asyncio.CancelledError:
            cancelled(waiter)
            raise


class Turns(_Queue):
    """
    One holder at a time, first come first served: `asyncio.Lock`'s rules, inline.

    `take()` is a coroutine only when someone holds the turn or waits; the usual case
    (nobody else pulling) is a flag.  Pair every `take()` with `give()`, in `finally`.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        super().__init__()
        self._held = False

    @property
    def free(self) -> bool:
        """Nobody holds the turn and nobody waits: `take_now()` may be used."""
        return not (self._held or self._waiters)

    def take_now(self) -> None:
        """Take a free turn without awaiting."""
        self._held = True

    def try_take(self) -> bool:
        """`free`, then `take_now()`, in one call: True when the turn was free and is taken."""
        if self._held or self._waiters:
            return False
        self._held = True
        return True

    async def take(self) -> None:
        """Queue behind the holder; return holding the turn (at once if it is free)."""
        if not self._held and all(waiter.cancelled() for waiter in self._waiters):
            self._held = True  # `asyncio.Lock.acquire()`'s own first test
            return
        await self._wait(self._pass_on)
        self._held = True

    def _pass_on(self, waiter: asyncio.Future[None]) -> None:
        if not self._held:
            self._wake_first()  # we were handed the turn: pass it on

    def give(self) -> None:
        """Give the turn back; the longest-waiting one gets it (one, not all: no herd)."""
        self._held = False
        if self._waiters:
            self._wake_first()

    def _wake_first(self) -> None:
        if self._waiters and not self._waiters[0].done():
            self._waiters[0].set_result(None)


class Slots(_Queue):
    """
    `asyncio.Semaphore(count)` as Python 3.11 has it, with its free path inline.

    `take_now()` takes a slot when one is free and nobody queues (True), without a
    coroutine; otherwise `take()` is `Semaphore.acquire()`: a slot at once if one is free
    and every queued waiter was cancelled, else a place in the queue, first come first
    served.  `give()` is `release()`: the slot goes to the first waiter not done, if any.
    """

    __slots__ = ("_free",)

    def __init__(self, count: int) -> None:
        super().__init__()
        self._free = count

    def take_now(self) -> bool:
        """Take a slot without awaiting if one is free and nobody queues; False otherwise."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, queueing for one if none is free (`Semaphore.acquire()`)."""
        if self._free > 0 and all(waiter.cancelled() for waiter in self._waiters):
            self._free -= 1
            return
        await self._wait(self._pass_on)
        if self._free > 0:
            self._wake_next()

    def _pass_on(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.cancelled():  # handed a slot, then cancelled: pass it on
            self._free += 1
            self._wake_next()

    def give(self) -> None:
        """Give a slot back; the first waiter not done gets it."""
        self._free += 1
        if self._waiters:
            self._wake_next()

    def _wake_next(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                self._free -= 1
                waiter.set_result(None)
                return
