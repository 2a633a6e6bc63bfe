"""
`cancel_many`: bounded-concurrency streaming over a sync or async iterable.

Input is pulled only when a slot frees up, so memory is bounded by `concurrency`, not by
the input's length.  Workers start as input arrives (one more per item pulled, up to
`concurrency`), so a huge `concurrency` over a short input costs a few tasks, not one per
slot.  Each finished task lands in a deque; the generator yields from it in completion
order.  Closing the generator (explicitly, by
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
            self.fail(exc)
            return None
        if not isinstance(item, CancelRequest):
            self.fail(
                TypeError(f"cancel_many expects CancelRequest items, got {type(item).__name__}")
            )
            return None
        return item

    def fail(self, error: Exception) -> None:
        """Stop taking input; the results in flight are delivered, then *error* is raised."""
        self.exhausted = True
        if self.error is None:
            self.error = error

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

    Up to *concurrency* workers each pull a request, cancel it and hand the result over; a
    slot is given back only when the consumer takes a result, so requests in flight plus
    results not yet taken never exceed *concurrency*.  Workers run the cancel coroutine
    themselves: no task per item.  One worker starts at once and each item pulled starts
    one more while fewer than *concurrency* run, so the tasks alive never exceed the items
    pulled plus one.
    """
    source = _Input(requests)
    loop = asyncio.get_running_loop()
    finished: deque[CancelResult] = deque()
    ended: deque[asyncio.Task[None]] = deque()
    slots = asyncio.Semaphore(concurrency)
    waiter: asyncio.Future[None] | None = None
    workers: set[asyncio.Task[None]] = set()
    started = 0

    def wake(_: object = None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_end(worker: asyncio.Task[None]) -> None:
        ended.append(worker)
        wake()

    def start() -> None:
        nonlocal started
        started += 1
        worker = loop.create_task(work())
        workers.add(worker)
        worker.add_done_callback(on_end)

    async def work() -> None:
        while True:
            await slots.acquire()
            request = await source.next()
            if request is None:
                slots.release()
                return
            if started < concurrency and not source.exhausted:
                start()  # input is arriving: one more worker, until there are enough
            try:
                call = client._request_call(request)
            except TypeError as exc:  # a CancelRequest whose fields are not strings
                source.fail(exc)
                slots.release()
                return
            finished.append(await call)
            wake()

    start()
    client._batches[id(workers)] = workers  # lets client.aclose() cancel what is in flight
    try:
        while True:
            if finished:
                result = finished.popleft()
                slots.release()
                yield result
                continue
            while ended:
                worker = ended.popleft()
                workers.discard(worker)
                if worker.cancelled():  # not by us: our own cancels happen in `finally`
                    raise ClientClosedError("the client was closed while cancel_many was running")
                error = worker.exception()
                if error is not None:
                    raise error  # a bug, or the client closed under us
            if not workers:
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
