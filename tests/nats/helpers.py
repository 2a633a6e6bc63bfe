"""Helpers for the NATS tests: read the results stream, wait for records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from klavi_async import ClientCredentials, KlaviClient, RetryPolicy
from klavi_async.nats import REQUESTS_STREAM, RESULTS_STREAM, read_results
from klavi_async.testing import KlaviEmulator

FAST = RetryPolicy(initial_backoff=0, jitter=False)


def emulator_client(emu: KlaviEmulator, **kwargs: Any) -> KlaviClient:
    kwargs.setdefault("retry", FAST)
    credentials = ClientCredentials(emu.access_key, emu.secret_key)
    return KlaviClient(credentials, base_url=emu.url, **kwargs)


async def stored(js: JetStreamContext, stream: str = RESULTS_STREAM) -> int:
    info = await js.stream_info(stream)
    return info.state.messages


async def wait_for_records(js: JetStreamContext, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while await stored(js) < count:
        assert time.monotonic() < deadline, f"{await stored(js)} records, expected {count}"
        await asyncio.sleep(0.02)


async def records(js: JetStreamContext, subject: str) -> list[tuple[dict[str, Any], bytes]]:
    """
    Every record under *subject* (a root: `klavi.cancel.results.>`), parsed and raw, read
    as `klavi-async results` reads them: to the last message stored when it started, a
    slow pull waited for (a fetch with a short timeout once stopped early on a busy
    machine, and returned a short list).
    """
    root = subject.removesuffix(".>")
    found: list[tuple[dict[str, Any], bytes]] = []
    async with contextlib.aclosing(read_results(js)) as reading:
        async for message in reading:
            if message.subject.startswith(f"{root}."):
                found.append((json.loads(message.data), message.data))
    return found


async def queue_empty(js: JetStreamContext) -> bool:
    return await stored(js, REQUESTS_STREAM) == 0


async def at_least(js: JetStreamContext, count: int) -> bool:
    """Whether *count* records or more are stored."""
    return await stored(js) >= count


async def until(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll *condition* until it holds (a bound: it returns as soon as it does)."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A loopback port that accepts connections and never says a word (not NATS)."""
    accepted: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    silent = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield silent.sockets[0].getsockname()[1]
    finally:
        silent.close()
        await silent.wait_closed()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()


CLI = str(Path(sys.executable).parent / "klavi-async")


async def start_logged_worker(
    url: str, emu: KlaviEmulator, log: Path, *, ack_wait: float
) -> asyncio.subprocess.Process:
    """
    A `klavi-async worker` against *emu* (access keys), its stderr written to *log*, once
    it says it consumes: on a busy machine one still starting when a test ended was
    SIGTERMed before its handlers (exit -15), having done nothing.
    """
    env = {
        **os.environ,
        "KLAVI_BASE_URL": emu.url,
        "KLAVI_ACCESS_KEY": emu.access_key,
        "KLAVI_SECRET_KEY": emu.secret_key,
    }
    env.pop("KLAVI_TOKEN", None)
    with open(log, "wb") as handle:  # noqa: ASYNC230 - a log file, opened once
        process = await asyncio.create_subprocess_exec(
            CLI, "worker",
            "--nats-url", url,
            "--concurrency", "32",
            "--ack-wait", f"{ack_wait:g}",
            "--retry-delay", "0.2",
            "--progress-interval", "0.5",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=handle,
        )  # fmt: skip
    async with asyncio.timeout(120):
        while "worker: consuming" not in _said(log):
            assert process.returncode is None, _said(log)[-2000:]
            await asyncio.sleep(0.05)
    return process


def _said(log: Path) -> str:
    return log.read_text(errors="replace")


async def stranded(js: JetStreamContext, within: float = 8.0) -> int:
    """
    Messages left in the (work-queue) requests stream after a fresh pull took and acked
    all it could get for *within* s: the ones delivered to an inbox nobody reads, to
    come back only after ack_wait.
    """
    await js._nc.flush()
    sub = await js.pull_subscribe_bind(durable="klavi-cancel", stream=REQUESTS_STREAM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        while loop.time() < deadline:
            try:
                batch = await sub.fetch(256, timeout=1.0)
            except TimeoutError:
                if (await js.stream_info(REQUESTS_STREAM)).state.messages == 0:
                    break
                continue
            for msg in batch:
                await msg.ack()
    finally:
        await sub.unsubscribe()
    await js._nc.flush()
    for _ in range(100):  # the server removes acked messages as it handles the acks
        left = (await js.stream_info(REQUESTS_STREAM)).state.messages
        if not left:
            break
        await asyncio.sleep(0.02)
    return left
