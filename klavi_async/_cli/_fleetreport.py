"""
What a `demo-fleet` run must show, and the summary it prints: `FleetRun` holds what the
run left (records, dead letters, the emulator's effects and statuses, the exits), and
`check_fleet()` lists every invariant it breaks.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

from attrs import define

from ..testing import CANCELLABLE, KlaviEmulator
from ._fleetprocs import Echo

__all__ = ["FleetRun", "check_fleet", "summary"]


@define
class FleetRun:
    """What one run of the demo saw; `check_fleet()` judges it."""

    planned: dict[str, str]
    """Payment id -> the status it was seeded with."""
    records: list[dict[str, Any]]
    """Everything on `klavi.cancel.results`."""
    dead: list[dict[str, Any]]
    """Everything on `klavi.cancel.dead`."""
    effects: dict[str, int]
    """The emulator's count of cancels applied, per payment."""
    statuses: dict[str, str]
    """Each payment's status at the end."""
    exits: list[int | None]
    """Each worker's exit status; the first one was the SIGKILLed one."""
    killed_at: int
    """Records stored when the kill was sent."""
    requeued: int
    """How many of the second, identical enqueue the server stored (should be none)."""


def check_fleet(run: FleetRun) -> list[str]:
    """Every invariant the demo promises that *run* broke, in words (empty: all held)."""
    problems: list[str] = []
    total = len(run.planned)
    if run.dead:
        problems.append(f"{len(run.dead)} dead letters (expected none)")
    per_payment = Counter(record.get("payment_id") for record in run.records)
    missing = [p for p in run.planned if per_payment[p] == 0]
    doubled = [p for p, n in per_payment.items() if n > 1]
    strangers = [p for p in per_payment if p not in run.planned]
    if missing:
        problems.append(f"{len(missing)} requests without a record, e.g. {missing[0]}")
    if doubled:
        problems.append(f"{len(doubled)} requests with more than one record, e.g. {doubled[0]}")
    if strangers:
        problems.append(f"{len(strangers)} records for payments never queued")
    wrong = [
        record["payment_id"]
        for record in run.records
        if record.get("payment_id") in run.planned
        and record.get("ok") is not _should_end_ok(run.planned[record["payment_id"]])
    ]
    if wrong:
        problems.append(f"{len(wrong)} records with an unplanned outcome, e.g. {wrong[0]}")
    twice = [p for p, n in run.effects.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} payments cancelled more than once, e.g. {twice[0]}")
    cancellable = {p for p, status in run.planned.items() if status in CANCELLABLE}
    touched = {p for p, n in run.effects.items() if n > 0}
    if touched - cancellable:
        problems.append(f"{len(touched - cancellable)} payments cancelled that could not be")
    not_cancelled = [p for p in cancellable if run.statuses.get(p) != "CANCELED"]
    if not_cancelled:
        problems.append(f"{len(not_cancelled)} cancellable payments not CANCELED at the end")
    if not run.exits or run.exits[0] != -signal.SIGKILL:
        problems.append("the first worker was not SIGKILLed")
    for number, code in enumerate(run.exits[1:], start=2):
        if code != 0:
            problems.append(f"worker {number} exited {code} on SIGTERM (expected 0)")
    if not 0 < run.killed_at < total:
        problems.append(f"the kill came at {run.killed_at} of {total} records, not mid-way")
    if run.requeued:
        problems.append(f"the second enqueue stored {run.requeued} requests again")
    return problems


def _should_end_ok(status: str) -> bool:
    return status in CANCELLABLE or status == "CANCELED"


def summary(
    echo: Echo,
    run: FleetRun,
    emulator: KlaviEmulator,
    survivors: tuple[int, int, int],
    requeue_dropped: int,
    started: float,
    outage: str,
) -> None:
    rows = _summary_rows(run, survivors, requeue_dropped, started, outage)
    faults = Counter(r.fault for r in emulator.records("cancel") if r.fault)
    cancellable = sum(1 for status in run.planned.values() if status in CANCELLABLE)
    cancelled = sum(1 for n in run.effects.values() if n > 0)
    echo("")
    echo("fleet summary")
    for name, value in rows:
        echo(f"  {name:<19}{value}")
    echo("emulator (the proof)")
    echo(
        f"  {len(emulator.records('cancel'))} cancel requests, faults injected: "
        + ", ".join(f"{name} {count}" for name, count in sorted(faults.items()))
    )
    echo(
        f"  payments cancelled {cancelled} of {cancellable} cancellable; "
        f"max effects per payment {max(run.effects.values(), default=0)}; "
        f"cancelled twice {sum(1 for n in run.effects.values() if n > 1)}"
    )


def _summary_rows(
    run: FleetRun,
    survivors: tuple[int, int, int],
    requeue_dropped: int,
    started: float,
    outage: str,
) -> list[tuple[str, str]]:
    """The fleet summary's rows: what the records and the survivors' goodbyes say."""
    ok = [r for r in run.records if r.get("ok")]
    failed = Counter(str(r.get("kind")) for r in run.records if not r.get("ok"))
    already = sum(1 for r in ok if r.get("already_cancelled"))
    reconciled = sum(1 for r in ok if r.get("reconciled"))
    again = [r["deliveries"] for r in run.records if r.get("deliveries", 1) > 1]
    redelivered, duplicates, outages = survivors
    exits = ", ".join(
        f"worker {i} {'SIGKILL' if code == -signal.SIGKILL else code}"
        for i, code in enumerate(run.exits, start=1)
    )
    return [
        ("requests", f"{len(run.planned)}"),
        (
            "records",
            f"{len(run.records) + len(run.dead)} (results {len(run.records)}, "
            f"dead letters {len(run.dead)})",
        ),
        (
            "ok",
            f"{len(ok)} ({len(ok) - already - reconciled} by Klavi's answer, {reconciled} "
            f"confirmed by a status check, {already} answered already cancelled)",
        ),
        (
            "failed",
            f"{sum(failed.values())}"
            + (" (" + ", ".join(f"{k} {n}" for k, n in sorted(failed.items())) + ")")
            * bool(failed),
        ),
        (
            "redeliveries",
            f"{redelivered} deliveries to the survivors; {len(again)} records took more "
            f"than one delivery (most {max(again, default=1)})",
        ),
        (
            "duplicates dropped",
            f"{duplicates} republished records (survivors), {requeue_dropped} re-enqueued requests",
        ),
        ("Klavi outage", f"{outage}; recognised by {outages} of the surviving workers"),
        ("worker exits", exits),
        ("elapsed", f"{time.monotonic() - started:.1f} s"),
    ]
