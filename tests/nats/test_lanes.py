"""`_lanes.Lanes`: a worker's coroutines on reused tasks, counted, closed without leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings

import pytest

from klavi_async.nats._lanes import Lanes


async def test_lanes_are_reused_and_never_more_than_ran_at_once() -> None:
    ended: list[int] = []
    lanes = Lanes(lambda: ended.append(lanes.busy))
    gates = [asyncio.Event() for _ in range(3)]
    done: list[int] = []

    async def work(n: int) -> None:
        await gates[n % 3].wait()
        done.append(n)

    for n in range(3):
        lanes.run(work(n))
    assert lanes.busy == 3 and len(lanes._lanes) == 3
    for gate in gates:
        gate.set()
    while len(done) < 3:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert lanes.busy == 0 and ended == [2, 1, 0]
    for n in range(3, 30):  # one at a time, then three at once: still three lanes
        lanes.run(work(n))
        if n % 3 == 0:
            await asyncio.sleep(0.001)
    while lanes.busy:
        await asyncio.sleep(0.001)
    assert len(lanes._lanes) == 3
    assert sorted(done) == list(range(30))
    await lanes.close()
    assert not lanes._lanes


async def test_a_failing_coroutine_is_logged_counted_as_ended_and_its_lane_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lanes = Lanes(lambda: None)

    async def boom() -> None:
        raise RuntimeError("a bug")  # what the worker's coroutines do not catch

    async def fine() -> None:
        await asyncio.sleep(0)

    lanes.run(boom())
    lanes.run(fine())
    await asyncio.sleep(0.01)
    assert lanes.busy == 0
    assert "a worker coroutine failed" in caplog.text
    assert len(lanes._lanes) == 2  # neither lane ended
    lanes.run(fine())
    await asyncio.sleep(0.01)
    assert lanes.busy == 0 and len(lanes._lanes) == 2
    await lanes.close()


async def test_close_cancels_running_work_and_closes_work_never_started() -> None:
    ended: list[None] = []
    lanes = Lanes(lambda: ended.append(None))
    started = asyncio.Event()
    cancelled: list[str] = []

    async def long() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append("long")
            raise

    async def quick() -> None:
        await asyncio.sleep(0)

    lanes.run(quick())
    await asyncio.sleep(0.01)  # its lane is free now
    lanes.run(long())
    await started.wait()
    lanes.run(quick())  # handed to the free lane, not started before the close
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "never awaited" would be one
        await lanes.close()
        gc.collect()
    assert cancelled == ["long"]
    assert lanes.busy == 0


async def test_close_with_no_lane_returns() -> None:
    lanes = Lanes(lambda: None)
    await lanes.close()
    assert lanes.busy == 0


@pytest.mark.parametrize("count", [1, 64])
async def test_busy_counts_what_was_given_and_not_ended(count: int) -> None:
    lanes = Lanes(lambda: None)
    release = asyncio.Event()

    async def wait() -> None:
        await release.wait()

    for _ in range(count):
        lanes.run(wait())
    assert lanes.busy == count
    release.set()
    while lanes.busy:
        await asyncio.sleep(0.001)
    await lanes.close()


async def test_close_ends_a_lane_whose_work_swallowed_the_cancel() -> None:
    # nats-py's requests await `asyncio.wait_for`, which can swallow a cancel that comes
    # with the answer: the work goes on and ends, and its lane must still end.
    ended: list[None] = []
    inside = asyncio.Event()

    async def swallowing() -> None:
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)

    lanes = Lanes(lambda: ended.append(None))
    lanes.run(swallowing())
    await inside.wait()
    async with asyncio.timeout(10):
        await lanes.close()
    assert lanes.busy == 0 and len(ended) == 1
    assert [t for t in asyncio.all_tasks() if "Lanes._lane" in repr(t)] == []
