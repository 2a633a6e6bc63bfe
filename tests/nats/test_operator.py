"""
The streams are the operator's: `worker` and `enqueue` keep what an operator set, and
`ensure_streams()` and `klavi-async streams` change only what they are given.  (A worker
no longer warns about an `ack_wait` near the duplicate window: records keep one per
subject whatever the window.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import signal
from pathlib import Path
from typing import Any, cast

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from klavi_async._cli._streamcmds import describe
from klavi_async.nats import (
    DEAD_SUBJECT,
    REQUESTS_STREAM,
    RESULTS_STREAM,
    RESULTS_SUBJECT,
    LegacyStreamError,
    _streams,
    ensure_streams,
)

from ..conftest import CPF
from .conftest import NatsServer
from .test_records import CLI, cli

STREAMS = (REQUESTS_STREAM, RESULTS_STREAM)
DAY = 86400.0
OPERATOR: dict[str, Any] = {
    "max_age": 30 * DAY,
    "max_bytes": 10 * 10**9,
    "max_msgs": 5 * 10**6,
    "duplicate_window": 600.0,
}


async def configs(js: JetStreamContext) -> dict[str, StreamConfig]:
    return {name: (await js.stream_info(name)).config for name in STREAMS}


async def operator_edits(js: JetStreamContext) -> dict[str, StreamConfig]:
    """What `nats stream edit` does: the operator's limits, and a description of theirs."""
    for name, config in (await configs(js)).items():
        edited = dataclasses.replace(config, description=f"{name}, ours", **OPERATOR)
        await js.update_stream(edited)
    return await configs(js)


def idle_worker_env() -> dict[str, str]:
    return {
        **os.environ,
        "KLAVI_TOKEN": "tok-for-an-idle-worker",
        "KLAVI_BASE_URL": "http://127.0.0.1:9",
    }


async def start_worker(url: str, *options: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """A `klavi-async worker` process, once it says it is consuming; its stderr so far."""
    process = await asyncio.create_subprocess_exec(
        CLI,
        "worker",
        "--nats-url",
        url,
        *options,
        env=idle_worker_env(),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    while not any("worker: consuming" in line for line in lines):
        line = (await asyncio.wait_for(process.stderr.readline(), timeout=30)).decode()
        assert line, f"the worker exited: {lines}"
        lines.append(line)
    return process, lines


async def stop_worker(process: asyncio.subprocess.Process, lines: list[str]) -> str:
    process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    rest = await asyncio.wait_for(process.stderr.read(), timeout=30)
    assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    return "".join(lines) + rest.decode()


async def test_worker_and_enqueue_keep_the_operators_settings(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    edited = await operator_edits(js)
    assert edited[RESULTS_STREAM].max_age == 30 * DAY
    process, lines = await start_worker(nats_server.url)
    err = await stop_worker(process, lines)
    assert "ack_wait" not in err  # 30 s is well below 600 s
    assert await configs(js) == edited
    path = tmp_path / "in.csv"
    path.write_text(f"payment_id,cancelled_by\npay-1,{CPF}\n")
    code, out, err = await cli("enqueue", str(path), "--nats-url", nats_server.url)
    assert code == 0, err
    assert out.startswith("published 1,")
    assert await configs(js) == edited


async def test_ensure_streams_alone_keeps_and_given_settings_change_only_those(
    js: JetStreamContext,
) -> None:
    edited = await operator_edits(js)
    kept = await ensure_streams(js)
    assert kept == edited == await configs(js)
    changed = await ensure_streams(js, duplicate_window=300.0, max_msgs=0)
    for name, config in (await configs(js)).items():
        assert config == dataclasses.replace(edited[name], duplicate_window=300.0, max_msgs=-1)
        assert changed[name] == config
    # The legacy keyword call (before: always updated) still sets the window.
    await ensure_streams(js, duplicate_window=120.0)
    assert {c.duplicate_window for c in (await configs(js)).values()} == {120.0}


async def test_ensure_streams_creates_missing_streams_with_the_settings_given(
    js: JetStreamContext,
) -> None:
    for name in STREAMS:
        await js.delete_stream(name)
    created = await ensure_streams(js, max_age=DAY, max_bytes=10**6)
    for name in STREAMS:
        config = (await js.stream_info(name)).config
        assert created[name] == config
        assert (config.max_age, config.max_bytes, config.max_msgs) == (DAY, 10**6, -1)
        assert (config.duplicate_window, config.num_replicas) == (120.0, 1)
    results = created[RESULTS_STREAM]
    assert results.subjects == [f"{RESULTS_SUBJECT}.>", f"{DEAD_SUBJECT}.>"]
    assert results.max_msgs_per_subject == 1


BAD_SETTINGS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"replicas": True}, TypeError, "replicas must be an int"),
    ({"replicas": 3.0}, TypeError, "replicas must be an int"),
    ({"replicas": "3"}, TypeError, "replicas must be an int"),
    ({"replicas": 0}, ValueError, "replicas must be from 1 to 5"),
    ({"replicas": 6}, ValueError, "replicas must be from 1 to 5"),
    ({"duplicate_window": 0}, ValueError, "duplicate_window must be a finite"),
    ({"duplicate_window": -1.0}, ValueError, "duplicate_window must be a finite"),
    ({"duplicate_window": math.nan}, ValueError, "duplicate_window must be a finite"),
    ({"duplicate_window": math.inf}, ValueError, "duplicate_window must be a finite"),
    ({"duplicate_window": False}, TypeError, "duplicate_window must be a number"),
    ({"duplicate_window": "600"}, TypeError, "duplicate_window must be a number"),
    ({"max_age": -1}, ValueError, "max_age must be a finite"),
    ({"max_age": math.nan}, ValueError, "max_age must be a finite"),
    ({"max_age": -math.inf}, ValueError, "max_age must be a finite"),
    ({"max_age": 1e10}, ValueError, "max_age must be at most"),
    ({"max_bytes": -1}, ValueError, "max_bytes must be from 0"),
    ({"max_bytes": 1.5}, TypeError, "max_bytes must be an int"),
    ({"max_bytes": True}, TypeError, "max_bytes must be an int"),
    ({"max_msgs": 2**63}, ValueError, "max_msgs must be from 0"),
    ({"max_msgs": None, "max_age": 60.0, "duplicate_window": 120.0}, ValueError, "longer than"),
]


async def test_bad_settings_are_refused_before_anything_changes(js: JetStreamContext) -> None:
    before = await configs(js)
    for settings, error, message in BAD_SETTINGS:
        with pytest.raises(error, match=message):
            await ensure_streams(js, **settings)
    # A window longer than what the operator set as max_age: refused for both streams.
    await js.update_stream(dataclasses.replace(before[RESULTS_STREAM], max_age=300.0))
    before = await configs(js)
    with pytest.raises(ValueError, match=r"KLAVI_CANCEL_RESULTS: duplicate_window \(600 s\)"):
        await ensure_streams(js, duplicate_window=600.0)
    assert await configs(js) == before


async def test_a_stream_created_meanwhile_by_another_process_is_kept(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    edited = await operator_edits(js)
    real = js.stream_info
    missed: list[str] = []

    async def stream_info(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == REQUESTS_STREAM and not missed:  # looked before the other one made it
            missed.append(name)
            raise NotFoundError
        return await real(name, *args, **kwargs)

    monkeypatch.setattr(js, "stream_info", stream_info)
    assert await ensure_streams(js) == edited
    assert missed == [REQUESTS_STREAM]
    missed.clear()
    changed = await ensure_streams(js, max_msgs=7)
    assert changed[REQUESTS_STREAM] == dataclasses.replace(edited[REQUESTS_STREAM], max_msgs=7)


async def test_streams_command_changes_only_the_duplicate_window(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    edited = await operator_edits(js)
    url = nats_server.url
    code, out, err = await cli("streams", "--nats-url", url, "--duplicate-window", "300")
    assert code == 0, err
    now = await configs(js)
    for name in STREAMS:
        assert now[name] == dataclasses.replace(edited[name], duplicate_window=300.0)
    assert out.splitlines() == [describe(now[name]) for name in STREAMS]
    assert out.splitlines()[1] == (
        "KLAVI_CANCEL_RESULTS: replicas 1, duplicate window 300 s (5 min), "
        "max age 2592000 s (30 d), max bytes 10000000000 (10 GB), max msgs 5000000 (5 M), "
        "storage file, retention limits, subjects klavi.cancel.results.> klavi.cancel.dead.>"
    )


async def test_streams_command_without_options_creates_missing_streams(
    nats_server: NatsServer,
) -> None:
    code, out, err = await cli("streams", "--nats-url", nats_server.url)
    assert code == 0, err
    assert out.splitlines() == [
        "KLAVI_CANCEL: replicas 1, duplicate window 120 s (2 min), max age unlimited, "
        "max bytes unlimited, max msgs unlimited, storage file, retention workqueue, "
        "subjects klavi.cancel.requests",
        "KLAVI_CANCEL_RESULTS: replicas 1, duplicate window 120 s (2 min), max age unlimited, "
        "max bytes unlimited, max msgs unlimited, storage file, retention limits, "
        "subjects klavi.cancel.results.> klavi.cancel.dead.>",
    ]
    again = await cli("streams", "--nats-url", nats_server.url, "--max-age", "3600")
    assert again[0] == 0
    assert "max age 3600 s (1 h)" in again[1]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--replicas", "0", "replicas must be from 1 to 5"),
        ("--replicas", "three", "'three' is not a valid integer"),
        ("--duplicate-window", "0", "duplicate_window must be a finite number of seconds"),
        ("--max-age", "nan", "max_age must be a finite number of seconds"),
        ("--max-age", "-1", "max_age must be a finite number of seconds"),
        ("--max-bytes", "-5", "max_bytes must be from 0"),
        ("--max-msgs", "1.5", "'1.5' is not a valid integer"),
    ],
)
async def test_streams_command_usage_errors(
    nats_server: NatsServer, option: str, value: str, message: str
) -> None:
    code, out, err = await cli("streams", "--nats-url", nats_server.url, option, value)
    assert code == 2
    assert message in err
    assert option in err
    assert out == ""


async def test_streams_command_refusals(nats_server: NatsServer, js: JetStreamContext) -> None:
    # A window longer than the streams keep messages: a usage error, nothing changed.
    await ensure_streams(js, max_age=600.0)
    before = await configs(js)
    url = nats_server.url
    code, out, err = await cli("streams", "--nats-url", url, "--duplicate-window", "900")
    assert code == 2
    assert "must not be longer than max_age (600 s); nothing was changed" in err
    # Three replicas on a server that is not a cluster: the server's reason, then the state.
    code, out, err = await cli("streams", "--nats-url", nats_server.url, "--replicas", "3")
    assert code == 1
    assert "the server refused: replicas > 1 not supported in non-clustered mode" in err
    assert out.splitlines() == [describe(before[name]) for name in STREAMS]
    assert await configs(js) == before
    # A results stream from before one record per request is never converted.
    await js.delete_stream(RESULTS_STREAM)
    legacy = StreamConfig(name=RESULTS_STREAM, subjects=[RESULTS_SUBJECT, DEAD_SUBJECT])
    await js.add_stream(legacy)
    code, out, err = await cli("streams", "--nats-url", nats_server.url, "--max-msgs", "10")
    assert code == 1
    assert "predates one record per request" in err
    assert (await js.stream_info(REQUESTS_STREAM)).config.max_msgs == -1
    with pytest.raises(LegacyStreamError):
        await ensure_streams(js)


def test_the_settings_line_reads_well() -> None:
    config = StreamConfig(
        name="S", subjects=["a", "b.>"], duplicate_window=90.0, max_age=5400.0, max_bytes=999
    )
    assert describe(config) == (
        "S: replicas None, duplicate window 90 s, max age 5400 s (90 min), max bytes 999, "
        "max msgs unlimited, storage None, retention None, subjects a b.>"
    )


class Unanswered:
    """
    A JetStream context whose stream requests go unanswered while *lost* says so: the
    request is either never sent ("before") or done and its answer lost ("after"), the
    two ways a request times out while a cluster elects a leader; None is answered.
    """

    def __init__(self, js: JetStreamContext, lost: list[str | None]) -> None:
        self._js = js
        self.lost = lost
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._js, name)
        if name not in {"stream_info", "add_stream", "update_stream"}:
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            how = self.lost.pop(0) if self.lost else None
            if how == "refused":  # as a meta leader that has not yet heard its peers
                raise nats.js.errors.BadRequestError(
                    code=400, err_code=10005, description="no suitable peers for placement"
                )
            if how == "after":
                await real(*args, **kwargs)
            if how is not None:
                raise nats.errors.TimeoutError
            return await real(*args, **kwargs)

        return call


@pytest.mark.parametrize("how", ["before", "after", "refused"])
async def test_ensure_streams_asks_again_when_a_request_goes_unanswered(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(_streams, "API_PAUSE", 0.0)
    for name in STREAMS:
        await js.delete_stream(name)
    flaky = Unanswered(js, ["before", None, None, how])  # a read, the first creation
    created = await ensure_streams(cast(JetStreamContext, flaky), max_age=DAY)
    assert flaky.calls == ["stream_info"] * 3 + ["add_stream"] * 3
    assert created == await configs(js)
    assert {c.max_age for c in created.values()} == {DAY}
    # Changing them goes through a lost answer as well.
    flaky.lost = [how]
    changed = await ensure_streams(cast(JetStreamContext, flaky), max_msgs=7)
    assert {c.max_msgs for c in changed.values()} == {7}
    assert changed == await configs(js)


async def test_ensure_streams_gives_up_after_its_attempts(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_streams, "API_PAUSE", 0.0)
    silent = Unanswered(js, ["before"] * 100)
    with pytest.raises(nats.errors.TimeoutError):
        await ensure_streams(cast(JetStreamContext, silent))
    assert silent.calls == ["stream_info"] * _streams.API_ATTEMPTS
    # A change refused for want of peers, as with a node really down: refused in the end.
    refused = Unanswered(js, [None, None] + ["refused"] * 100)
    with pytest.raises(nats.js.errors.BadRequestError, match="no suitable peers"):
        await ensure_streams(cast(JetStreamContext, refused), max_msgs=7)
    assert refused.calls == ["stream_info"] * 2 + ["update_stream"] * _streams.API_ATTEMPTS


async def test_ensure_streams_does_not_ask_again_what_was_refused_for_good(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_streams, "API_PAUSE", 0.0)
    asked: list[str] = []

    async def refuse(config: Any) -> Any:
        asked.append(config.name)
        raise nats.js.errors.BadRequestError(
            code=400, err_code=10074, description="replicas > 1 not supported in non-clustered mode"
        )

    monkeypatch.setattr(js, "update_stream", refuse)
    with pytest.raises(nats.js.errors.BadRequestError, match="non-clustered"):
        await ensure_streams(js, replicas=3)
    assert len(asked) == 1
