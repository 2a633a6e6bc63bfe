"""
`cancel_many`: bounded-concurrency streaming over a sync or async iterable.

Input is pulled only when a slot frees up, so memory is bounded by `concurrency`, not by
the input's length.  Each finished task hands its result to a queue; the generator
yields from the queue in completion order.  Closing the generator (explicitly, by
`aclosing()`, or when a `break` drops the last reference) cancels the tasks in flight
and waits for them, so no task outlives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._results import CancelRequest, CancelResult

if TYPE_CHECKING:
    from ._client import KlaviClient

__all__ = ["stream"]


async def _aiter_sync(items: Iterator[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _as_async_iterator(requests: object) -> AsyncIterator[Any]:
    if isinstance(requests, AsyncIterable):
        return aiter(requests)
    if isinstance(requests, Iterable) and not isinstance(requests, str | bytes):
        return _aiter_sync(iter(requests))
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
    source = _as_async_iterator(requests)
    done: asyncio.Queue[asyncio.Task[CancelResult]] = asyncio.Queue()
    running: set[asyncio.Task[CancelResult]] = set()
    loop = asyncio.get_running_loop()
    exhausted = False
    input_error: BaseException | None = None

    def finished(task: asyncio.Task[CancelResult]) -> None:
        running.discard(task)
        done.put_nowait(task)

    try:
        while True:
            while not exhausted and len(running) < concurrency:
                try:
                    item = await anext(source)
                except StopAsyncIteration:
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
                task = loop.create_task(client.cancel_request(item))
                client._track(task)
                running.add(task)
                task.add_done_callback(finished)
            if not running and done.empty():
                break
            task = await done.get()
            yield task.result()
        if input_error is not None:
            raise input_error
    finally:
        pending = list(running)
        for task in pending:
            task.remove_done_callback(finished)
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()
