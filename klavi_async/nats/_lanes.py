"""
A worker's lanes: the coroutines it runs (one per message), each on a long-lived task.

A task per message costs a task, its first step and its done callbacks, every time;
`CancelWorker` ran thousands a second.  A lane is a task that runs one coroutine, then
waits to be handed the next: handing one over is a future's result.  A lane is started
only when none is free, so there are never more lanes than coroutines ever run at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

__all__ = ["Lanes", "cancel_until_done", "raise_if_cancelled"]

logger = logging.getLogger("klavi_async.nats")

Work = Coroutine[Any, Any, None]


class Lanes:
    """
    Run coroutines on reused tasks.  *ended* is called after each one ends (however it
    ends); `busy` counts the coroutines given and not ended.  Strictly private.
    """

    __slots__ = ("_ended", "_free", "_lanes", "_unstarted", "busy")

    def __init__(self, ended: Callable[[], None]) -> None:
        self._ended = ended
        self._free: list[asyncio.Future[Work]] = []  # lanes waiting for work
        self._lanes: set[asyncio.Task[None]] = set()
        self._unstarted: dict[asyncio.Task[None], Work] = {}  # new lanes, not run yet
        self.busy = 0

    def run(self, work: Work) -> None:
        """Start *work* now, on a free lane or a new one."""
        self.busy += 1
        while self._free:
            free = self._free.pop()
            if not free.done():
                free.set_result(work)
                return
        lane = asyncio.get_running_loop().create_task(self._lane())
        self._unstarted[lane] = work
        self._lanes.add(lane)
        lane.add_done_callback(self._lanes.discard)

    async def close(self) -> None:
        """Cancel every lane and what it runs; return once they have ended."""
        await cancel_until_done(self._lanes)
        self._free.clear()
        for work in self._unstarted.values():  # cancelled before their first step
            work.close()
            self.busy -= 1
        self._unstarted.clear()

    async def _lane(self) -> None:
        loop = asyncio.get_running_loop()
        work = self._unstarted.pop(asyncio.current_task())  # type: ignore[arg-type]
        while True:
            try:
                await work
            except Exception:  # the worker's own catch what they can: a bug, then
                logger.exception("a worker coroutine failed")
            finally:
                self.busy -= 1
                self._ended()
            free: asyncio.Future[Work] = loop.create_future()
            self._free.append(free)
            try:
                work = await free
            except asyncio.CancelledError:
                if free.done() and not free.cancelled():  # handed over, never started
                    free.result().close()
                    self.busy -= 1
                raise


def raise_if_cancelled() -> None:
    """
    Raise the cancel a nats-py request swallowed (see `cancel_until_done`): the task was
    cancelled, and went on as if it had not been (a start that never ended once).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_until_done(tasks: Iterable[asyncio.Task[None]]) -> None:
    """
    Cancel *tasks* and return once they have all ended.  A cancel that comes as a
    nats-py request is answered can be swallowed by its `asyncio.wait_for` (Python
    3.11): the task goes on (a lane to wait for work for ever, a loop to its next turn),
    so a task still running a second later is cancelled again.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
