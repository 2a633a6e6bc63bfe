"""
`cancel_many`: bounded-concurrency streaming over a sync or async iterable.

Input is pulled only when a slot frees up, so memory is bounded by `concurrency`, not by
the input's length.  Each finished task lands in a deque; the generator yields from
it in completion order.  Closing the generator (explicitly, by
`aclosing()`, or when a `break` drops the last reference) cancels the tasks in flight
and waits for them, so no task outlives it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from ._errors import ClientClosedError
from ._results import CancelRequest, CancelResult

if TYPE_CHECKING:
    from ._client import KlaviClient

__all__ = ["stream"]


def _sources(requests: object) -> tuple[Iterator[Any] | None, AsyncIterator[Any] | None]:
    """A sync or an async iterator over *requests* (a sync one is pulled without awaiting)."""
    if isinstance(requests, AsyncIterable):
        return None, aiter(requests)
    if isinstance(requests, Iterable) and not isinstance(requests, str | bytes):
        return iter(requests), None
    raise TypeError(
        f"requests must be an iterable or async iterable of CancelRequest, "
        f"got {type(requests).__name__}"
    )


class _Input:
    """The batch's input, pulled by whichever worker is free.  Strictly private."""

    __slots__ = ("_async", "_pulling", "_sync", "_waiters", "error", "exhausted")

    def __init__(self, requests: object) -> None:
        self._sync, self._async = _sources(requests)
        # An async generator serves one anext() at a time.  What asyncio.Lock does, inline:
        # a pull that meets no other (the usual case) costs a flag, not two coroutines.
        self._pulling = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.exhausted = False
        self.error: Exception | None = None

    async def next(self) -> CancelRequest | None:
        """The next request, or None once the input is over (or failed: see `error`)."""
        try:
            if self._sync is not None:
                if self.exhausted:
                    return None
                item = next(self._sync)
            else:
                if self._pulling or self._waiters:
                    await self._wait_turn()
                else:
                    self._pulling = True
                try:
                    if self.exhausted:
                        return None
                    item = await anext(cast("AsyncIterator[Any]", self._async))
                finally:
                    self._pulling = False
                    self._wake_first()
        except (StopIteration, StopAsyncIteration):
            self.exhausted = True
            return None
        except Exception as exc:
            # Stop taking input; the results in flight are delivered, then this is raised.
            self.exhausted = True
            self.error = exc
            return None
        if not isinstance(item, CancelRequest):
            self.exhausted = True
            raise TypeError(f"cancel_many expects CancelRequest items, got {type(item).__name__}")
        return item

    async def _wait_turn(self) -> None:
        """Queue behind the pull in progress; return holding the turn (`_pulling` set)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        except asyncio.CancelledError:
            if not self._pulling:
                self._wake_first()  # we were handed the turn: pass it on
            raise
        self._pulling = True

    def _wake_first(self) -> None:
        """Hand the turn to the longest-waiting worker (one, not all: no herd)."""
        if self._waiters and not self._waiters[0].done():
            self._waiters[0].set_result(None)

    async def close(self) -> None:
        if self._async is not None:
            closer = getattr(self._async, "aclose", None)
            if closer is not None:
                await closer()
        else:
            closer = getattr(self._sync, "close", None)
            if closer is not None:
                closer()


async def stream(
    client: KlaviClient,
    requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
    concurrency: int,
) -> AsyncGenerator[CancelResult, None]:
    """
    The body of `KlaviClient.cancel_many()`.  Strictly private.

    *concurrency* workers each pull a request, cancel it and hand the result over; a slot
    is given back only when the consumer takes a result, so requests in flight plus results
    not yet taken never exceed *concurrency*.  Workers run the cancel coroutine themselves:
    no task per item.
    """
    source = _Input(requests)
    loop = asyncio.get_running_loop()
    finished: deque[CancelResult] = deque()
    slots = asyncio.Semaphore(concurrency)
    waiter: asyncio.Future[None] | None = None

    def wake(_: object = None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def work() -> None:
        while True:
            await slots.acquire()
            request = await source.next()
            if request is None:
                slots.release()
                return
            finished.append(await client._request_call(request))
            wake()

    workers = {loop.create_task(work()) for _ in range(concurrency)}
    for worker in workers:
        worker.add_done_callback(wake)
    client._batches[id(workers)] = workers  # lets client.aclose() cancel what is in flight
    try:
        while True:
            if finished:
                result = finished.popleft()
                slots.release()
                yield result
                continue
            for worker in workers:
                if not worker.done():
                    continue
                if worker.cancelled():  # not by us: our own cancels happen in `finally`
                    raise ClientClosedError("the client was closed while cancel_many was running")
                error = worker.exception()
                if error is not None:
                    raise error  # misuse (a wrong item type), or a bug
            if all(worker.done() for worker in workers):
                break
            waiter = loop.create_future()
            await waiter
            waiter = None
        if source.error is not None:
            raise source.error
    finally:
        client._batches.pop(id(workers), None)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await source.close()
