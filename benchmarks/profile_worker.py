"""
Profile a `CancelWorker` in this process beside `cancel_many`, per cancel.

    python benchmarks/profile_worker.py [--n 5000] [--concurrency 64] [--top 20]
    python benchmarks/profile_worker.py --once N --nats-url URL --base BASE


Starts `server.py` and a nats-server (JetStream, temp store), queues N cancels and runs
one worker until every record is stored; then `cancel_many` over the same N.  For each,
prints tasks created and event-loop iterations (wakeups) per cancel, counted without
the profiler, then the profiled run's share of time per area and its top functions.
cProfile inflates every Python call: read the shares and the counts, not the µs.

With `--once`, runs one worker over a warm-up of N/10 requests and then N, the requests
queued by a child process (so that `instructions.py --worker`, running this under
callgrind, counts the worker's instructions only), and prints nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import server
from fleet import nats_server
from nats.js.api import AckPolicy, ConsumerConfig
from profile_hot_path import own_times, print_tables

from klavi_async import CancelRequest, KlaviClient
from klavi_async.nats import (
    REQUESTS_STREAM,
    RESULTS_STREAM,
    RESULTS_SUBJECT,
    CancelWorker,
    connect,
    enqueue,
    ensure_streams,
)

DOCUMENT = "52998224725"


class Counts:
    """Tasks created, event-loop iterations and CPU seconds, while counting."""

    def __init__(self) -> None:
        self.tasks = self.wakeups = 0
        self.cpu = 0.0


def counted(loop: asyncio.AbstractEventLoop, counts: Counts) -> None:
    original_run_once = loop._run_once  # type: ignore[attr-defined]

    def run_once() -> None:
        counts.wakeups += 1
        original_run_once()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        counts.tasks += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop._run_once = run_once  # type: ignore[attr-defined]
    loop.set_task_factory(factory)


def requests(n: int) -> list[CancelRequest]:
    return [CancelRequest(str(uuid.uuid4()), DOCUMENT) for _ in range(n)]


ENQUEUE = """
import asyncio, sys, uuid
from klavi_async import CancelRequest
from klavi_async.nats import connect, enqueue
async def main():
    nc = await connect(sys.argv[1])
    n = int(sys.argv[2])
    requests = [CancelRequest(str(uuid.uuid4()), "52998224725") for _ in range(n)]
    assert await enqueue(nc.jetstream(), requests) == n
    await nc.close()
asyncio.run(main())
"""


async def queue(js: Any, url: str, n: int, *, child: bool) -> None:
    """Empty both streams, then queue *n* requests (from a child process if *child*)."""
    await ensure_streams(js)
    await js.purge_stream(REQUESTS_STREAM)
    await js.purge_stream(RESULTS_STREAM)
    if not child:
        await enqueue(js, requests(n))
        return
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", ENQUEUE, url, str(n))
    assert await process.wait() == 0


async def run_worker(
    url: str, base: str, n: int, concurrency: int, measure: Any, *, child: bool = False
) -> None:
    nc = await connect(url)
    js = nc.jetstream()
    try:
        await queue(js, url, n, child=child)
        async with KlaviClient(
            "bench-token", base_url=base, max_connections=max(100, concurrency)
        ) as client:
            worker = CancelWorker(client, js, concurrency=concurrency)
            stop = asyncio.Event()

            async def until_done() -> None:
                while worker.stats.done < n:  # noqa: ASYNC110  # the worker has no "done" event
                    await asyncio.sleep(0.05)
                stop.set()

            await measure(lambda: asyncio.gather(worker.run(stop), until_done()))
            assert worker.stats.done == n, worker.stats.line()
            assert worker.stats.ok == n, worker.stats.line()
    finally:
        await nc.close()


async def run_cancel_many(base: str, n: int, concurrency: int, measure: Any) -> None:
    async with KlaviClient(
        "bench-token", base_url=base, max_connections=max(100, concurrency)
    ) as client:

        async def work() -> None:
            async for _ in client.cancel_many(requests(n), concurrency=concurrency):
                pass

        await measure(work)


def profile(
    name: str,
    n: int,
    run: Callable[[Any], Awaitable[None]],
    top: int,
) -> None:
    counts = Counts()

    async def count(work: Callable[[], Awaitable[Any]]) -> None:
        counted(asyncio.get_running_loop(), counts)
        cpu = time.process_time()
        await work()
        counts.cpu = time.process_time() - cpu
        asyncio.get_running_loop().set_task_factory(None)

    asyncio.run(run(count))
    profiler = cProfile.Profile()

    async def profiled(work: Callable[[], Awaitable[Any]]) -> None:
        profiler.enable()
        await work()
        profiler.disable()

    asyncio.run(run(profiled))
    by_area, total, rows = own_times(pstats.Stats(profiler))
    print(
        f"\n## {name}: {n} cancels; {counts.tasks / n:.2f} tasks and "
        f"{counts.wakeups / n:.2f} loop iterations per cancel; "
        f"{counts.cpu / n * 1e6:.0f} µs CPU per cancel (unprofiled, counting); "
        f"{total / n * 1e6:.0f} µs profiled per cancel\n"
    )
    print_tables(by_area, total, rows, n, top)


async def broker_floor(url: str, n: int, concurrency: int) -> None:
    """
    The least a worker's broker work can cost with nats-py, no Klavi call at all: pull
    *concurrency* messages at a time, publish a record for each (one reply inbox for
    all, answers awaited together), then ack each.  What `instructions.py --worker`
    reports as `nats_floor`.
    """
    nc = await connect(url)
    js = nc.jetstream()
    try:
        await queue(js, url, n, child=True)
        config = ConsumerConfig(
            durable_name="klavi-cancel", ack_policy=AckPolicy.EXPLICIT, max_deliver=-1
        )
        await js.add_consumer(REQUESTS_STREAM, config)  # the worker's
        answers, inbox, arrived = nc.new_inbox(), nc.new_inbox(), asyncio.Event()
        ready: list[Any] = []
        waiting: dict[str, Any] = {}
        settled = asyncio.Event()

        async def delivered(msg: Any) -> None:
            if not (msg.headers and msg.headers.get("Status")):
                ready.append(msg)
                arrived.set()

        async def answered(msg: Any) -> None:
            waiting.pop(msg.subject.rsplit(".", 1)[1])
            if not waiting:
                settled.set()

        await nc.subscribe(inbox, cb=delivered)
        await nc.subscribe(answers + ".*", cb=answered)
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{REQUESTS_STREAM}.klavi-cancel"
        record = b'{"payment_id":"pay","ok":true,"status":"CANCELLED","deliveries":1}'
        done = sent = 0
        while done < n:
            want = min(concurrency, n - done)
            request = json.dumps({"batch": want, "expires": int(5e9)}).encode()
            await nc.publish(pull, request, reply=inbox)
            while len(ready) < want:
                arrived.clear()
                await arrived.wait()
            batch, ready[:] = ready[:want], ready[want:]
            settled.clear()
            for msg in batch:
                sent += 1
                waiting[str(sent)] = msg
                meta = msg.metadata
                headers = {"Nats-Msg-Id": f"floor-{meta.sequence.stream}"}
                subject = f"{RESULTS_SUBJECT}.floor-{meta.sequence.stream}"
                await nc.publish(subject, record, reply=f"{answers}.{sent}", headers=headers)
            await settled.wait()
            for msg in batch:
                await msg.ack()
            done += len(batch)
    finally:
        await nc.close()


async def once(url: str, base: str, n: int, concurrency: int, *, floor: bool) -> None:
    async def run(work: Callable[[], Awaitable[Any]]) -> None:
        await work()

    for count in (max(n // 10, concurrency), n):  # the warm-up, then the run
        if floor:
            await broker_floor(url, count, concurrency)
        else:
            await run_worker(url, base, count, concurrency, run, child=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--once", type=int, metavar="N")
    parser.add_argument("--nats-url")
    parser.add_argument("--base")
    parser.add_argument("--floor", action="store_true", help="with --once: the broker floor")
    args = parser.parse_args()
    if args.once:
        asyncio.run(once(args.nats_url, args.base, args.once, args.concurrency, floor=args.floor))
        return
    n, conc = args.n, args.concurrency
    with server() as base, nats_server() as (url, _pid):
        profile(
            "CancelWorker",
            n,
            lambda measure: run_worker(url, base, n, conc, measure),
            args.top,
        )
        profile("cancel_many", n, lambda measure: run_cancel_many(base, n, conc, measure), args.top)


if __name__ == "__main__":
    main()
