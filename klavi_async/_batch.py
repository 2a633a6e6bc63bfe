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


async def stream(
    client: KlaviClient,
    requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
    concurrency: int,
) -> AsyncGenerator[CancelResult, None]:
    """The body of `KlaviClient.cancel_many()`.  Strictly private."""
    sync_source, async_source = _sources(requests)
    finished: deque[asyncio.Task[CancelResult]] = deque()
    running: set[asyncio.Task[CancelResult]] = set()
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] | None = None
    exhausted = False
    input_error: BaseException | None = None

    def on_done(task: asyncio.Task[CancelResult]) -> None:
        running.discard(task)
        finished.append(task)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    client._batches[id(running)] = running  # lets client.aclose() cancel what is in flight
    try:
        while True:
            while not exhausted and len(running) < concurrency:
                try:
                    if sync_source is not None:
                        item = next(sync_source)
                    else:
                        item = await anext(cast("AsyncIterator[Any]", async_source))
                except (StopIteration, StopAsyncIteration):
                    exhausted = True
                    break
                except Exception as exc:
                    # Stop taking input, deliver what is in flight, then re-raise.
                    exhausted = True
                    input_error = exc
                    break
                if not isinstance(item, CancelRequest):
                    raise TypeError(
                        f"cancel_many expects CancelRequest items, got {type(item).__name__}"
                    )
                task = loop.create_task(client._request_call(item))
                running.add(task)
                task.add_done_callback(on_done)
            if not finished:
                if not running:
                    break
                waiter = loop.create_future()
                await waiter
                waiter = None
            yield finished.popleft().result()
        if input_error is not None:
            raise input_error
    finally:
        client._batches.pop(id(running), None)
        pending = list(running)
        for task in pending:
            task.remove_done_callback(on_done)
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if async_source is not None:
            closer = getattr(async_source, "aclose", None)
            if closer is not None:
                await closer()
        else:
            closer = getattr(sync_source, "close", None)
            if closer is not None:
                closer()
