"""The CLI as a real subprocess against the emulator: interrupt a batch, resume it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from klavi_async import deterministic_idempotency_key
from klavi_async.testing import KlaviEmulator

from .conftest import CPF

CLI = shutil.which("klavi-async") or str(Path(sys.executable).with_name("klavi-async"))


@contextmanager
def emulator_in_thread(**kwargs: object) -> Iterator[KlaviEmulator]:
    """A started emulator on its own loop in a thread, for tests that drive subprocesses."""
    ready = threading.Event()
    holder: dict[str, object] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        emulator = KlaviEmulator(**kwargs)  # type: ignore[arg-type]
        loop.run_until_complete(emulator.start())
        stop = loop.create_future()
        holder.update(emulator=emulator, loop=loop, stop=stop)
        ready.set()
        loop.run_until_complete(stop)
        loop.run_until_complete(emulator.close())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        emulator = holder["emulator"]
        assert isinstance(emulator, KlaviEmulator)
        yield emulator
    finally:
        loop = holder["loop"]
        stop = holder["stop"]
        assert isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Future)
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)


def cli_env(emu: KlaviEmulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAVI_")}
    env.update(
        KLAVI_BASE_URL=emu.url, KLAVI_ACCESS_KEY=emu.access_key, KLAVI_SECRET_KEY=emu.secret_key
    )
    return env


def batch_of_40(
    emu: KlaviEmulator, tmp_path: Path, *, concurrency: int
) -> tuple[list[str], Path, list[str]]:
    """Forty payments in a CSV: their ids, the results file, the `cancel-batch` command."""
    ids = [emu.add_payment() for _ in range(40)]
    source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    source.write_text("payment_id,cancelled_by\n" + "".join(f"{p},{CPF}\n" for p in ids))
    command = [CLI, "cancel-batch", str(source), "--out", str(out)]
    return ids, out, [*command, "--concurrency", str(concurrency)]


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_lines(path: Path, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {count} lines")


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "grace"), [(signal.SIGINT, "10"), (signal.SIGTERM, "0")])
def test_interrupt_and_resume(tmp_path: Path, signum: int, grace: str) -> None:
    """Kill a batch mid-way, rerun it: one final line per item, one effect per payment."""
    with emulator_in_thread(fault_rates={"latency": 1.0}, latency=0.2) as emu:
        ids, out, command = batch_of_40(emu, tmp_path, concurrency=4)
        first = subprocess.Popen(
            [*command, "--grace", grace],
            env=cli_env(emu),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_lines(out, 6)
        first.send_signal(signum)
        _, err = first.communicate(timeout=30)
        assert first.returncode == 130, err
        assert "interrupted" in err
        done_first = {r["payment_id"] for r in records(out)}
        assert 6 <= len(done_first) < 40

        emu.fault_routes = frozenset()  # the rerun meets no latency
        second = subprocess.run(
            command, env=cli_env(emu), capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 0, second.stderr

        final = records(out)
        assert sorted(r["payment_id"] for r in final) == sorted(ids)  # exactly one line each
        assert all(r["ok"] for r in final)
        assert all(emu.effects[p] == 1 for p in ids)
        sent: dict[str, list[str | None]] = {}
        for record in emu.records("cancel"):
            assert record.payment_id is not None
            sent.setdefault(record.payment_id, []).append(record.idempotency_key)
        for payment_id, keys in sent.items():
            assert set(keys) == {deterministic_idempotency_key(payment_id, CPF)}
        resent = [p for p, keys in sent.items() if len(keys) > 1]
        assert not set(resent) & done_first  # recorded items are never sent again
        if signum == signal.SIGTERM:
            assert resent  # cut off in flight, unrecorded, sent again with the same key
            assert any(r.replayed for r in emu.records("cancel"))


@pytest.mark.slow
def test_demo_runs_the_story() -> None:
    result = subprocess.run(
        [CLI, "demo", "--payments", "60"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "the story ran as planned" in result.stderr
    assert "0 cancelled twice" in result.stderr


@pytest.mark.slow
def test_emulator_command_serves_and_writes_payments(tmp_path: Path) -> None:
    listing = tmp_path / "payments.csv"
    server = subprocess.Popen(
        [
            CLI,
            "emulator",
            "--port",
            "0",
            "--payments",
            "10",
            "--payments-csv",
            str(listing),
            "--fault",
            "503=0.1",
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("Klavi emulator listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[1].strip()
        lines = [server.stdout.readline() for _ in range(5)]
        assert any("KLAVI_SECRET_KEY=" in line for line in lines)
        wait_for_lines(listing, 11)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLAVI_")}
        env.update(
            KLAVI_BASE_URL=url,
            KLAVI_ACCESS_KEY="test-access-key",
            KLAVI_SECRET_KEY="test-secret-key",
        )
        out = tmp_path / "out.jsonl"
        batch = subprocess.run(
            [CLI, "cancel-batch", str(listing), "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert batch.returncode == 1  # the seeded set holds a few planned refusals
        assert len(records(out)) == 10
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=20)
    assert server.returncode == 0
    assert "max effects per payment 1" in output


def test_bad_fault_flag_is_a_usage_error() -> None:
    result = subprocess.run(
        [CLI, "emulator", "--fault", "teapot=0.5"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.startswith("klavi-async: error: unknown fault 'teapot'")
    result = subprocess.run(
        [CLI, "emulator", "--fault", "503"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "NAME=RATE" in result.stderr


def test_a_second_batch_on_the_same_results_file_is_refused(tmp_path: Path) -> None:
    # Two runs on one --out both ran: 595 lines for 300 rows, each summary counting the
    # other's work.  The second now exits 2 at once, naming the first.
    with emulator_in_thread(fault_rates={"latency": 1.0}, latency=0.2) as emu:
        _, out, command = batch_of_40(emu, tmp_path, concurrency=2)
        first = subprocess.Popen(
            command, env=cli_env(emu), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for_lines(out, 1)
            second = subprocess.run(
                command, env=cli_env(emu), capture_output=True, text=True, timeout=60
            )
        finally:
            first.send_signal(signal.SIGINT)
            first.communicate(timeout=30)
        assert second.returncode == 2, second.stderr
        assert f"is in use by process {first.pid}" in second.stderr
        assert second.stdout == ""
        lines = records(out)
        assert len(lines) == len({r["payment_id"] for r in lines})  # the first run's alone


def test_a_double_interrupt_tells_cut_off_from_never_sent(tmp_path: Path) -> None:
    # After a second Ctrl-C the summary called "never sent" the cancels cut off in
    # flight, which Klavi had received.
    with emulator_in_thread(fault_rates={"latency": 1.0}, latency=2.0) as emu:
        _, out, command = batch_of_40(emu, tmp_path, concurrency=4)
        batch = subprocess.Popen(
            command, env=cli_env(emu), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_for_lines(out, 4)  # the first four answered: the next four are in flight (2 s)
        batch.send_signal(signal.SIGINT)
        time.sleep(0.2)  # the first signal's message, then the second
        batch.send_signal(signal.SIGINT)
        _, err = batch.communicate(timeout=30)
        assert batch.returncode == 130, err
        found = re.search(r"(\d+) never sent, (\d+) cut off in flight", err)
        assert found is not None, err
        never_sent, cut_off = int(found.group(1)), int(found.group(2))
        # Slots were busy (2 s per answer): those are cut off, not "never sent".
        assert 1 <= cut_off <= 4
        items = re.search(r"items (\d+):", err)
        assert items is not None
        assert len(records(out)) + cut_off + never_sent == int(items.group(1))
        assert f"{cut_off} cut off, " in err  # and the rerun line counts them apart too


def test_the_emulators_latency_alone_is_a_usage_error_and_its_help_says_why() -> None:
    alone = subprocess.run(
        [CLI, "emulator", "--latency", "2", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert alone.returncode == 2
    assert "--latency alone delays nothing: add --fault latency=RATE" in alone.stderr
    shown = subprocess.run([CLI, "emulator", "--help"], capture_output=True, text=True, timeout=30)
    help_text = " ".join(shown.stdout.split())
    assert "Seconds a `latency` fault delays an answer; it needs --fault latency=RATE" in help_text
    assert "the share of requests it hits (0 to 1)" in help_text


def test_the_demo_says_why_an_item_is_not_final_and_reruns_it() -> None:
    # The demo advised "rerun with the same --out" (it has no --out) and printed
    # "outcome unknown 1" beside "the story ran as planned" without a word of why.
    result = subprocess.run([CLI, "demo"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "demo: not final yet: 1 outcome unknown (a fault cut the cancel's answer" in err
    assert "rerunning with the same results file" in err
    rerun = err.rsplit("rerunning with the same results file", 1)[1]
    assert "items 300:" in rerun and "outcome unknown 0" in rerun  # the rerun settled it
    assert "not final yet" not in rerun
    assert "the story ran as planned" in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_single_use_tokens_end_a_concurrent_batch_ok(tmp_path: Path, how: str) -> None:
    # Tokens that serve one payment initiation: at concurrency 32 the shared token failed
    # 93 % of the cancels UNAUTHORIZED.  A token per payment ends every one ok.
    with emulator_in_thread(single_use_tokens=True) as emu:
        ids, out, command = batch_of_40(emu, tmp_path, concurrency=32)
        env = cli_env(emu)
        if how == "flag":
            command.append("--single-use-tokens")
        else:
            env["KLAVI_SINGLE_USE_TOKENS"] = "1"
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert all(r["ok"] for r in records(out)) and len(records(out)) == len(ids)
        assert emu.auth_calls == len(ids)
        assert not [r for r in emu.records() if r.status == 401]
        assert all(emu.effects[p] == 1 for p in ids)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"KLAVI_SINGLE_USE_TOKENS": "1"}, "a fixed KLAVI_TOKEN cannot be renewed"),
        ({"KLAVI_SINGLE_USE_TOKENS": "maybe"}, "'maybe' is not a valid boolean"),
    ],
)
def test_single_use_tokens_with_a_fixed_token_or_a_bad_value_is_a_usage_error(
    tmp_path: Path, setting: dict[str, str], message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAVI_")}
    env.update(KLAVI_BASE_URL="http://127.0.0.1:9", KLAVI_TOKEN="t0k3n", **setting)
    source = tmp_path / "in.csv"
    source.write_text(f"payment_id,cancelled_by\np1,{CPF}\n")
    command = [CLI, "cancel-batch", str(source), "--out", str(tmp_path / "out.jsonl")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "t0k3n" not in done.stderr + done.stdout
    assert not (tmp_path / "out.jsonl").exists() or not (tmp_path / "out.jsonl").read_text()


def test_without_the_flag_a_single_use_account_is_told_about_it(tmp_path: Path) -> None:
    # Before: "Klavi rejected the credentials (invalid token) ... Check KLAVI_ACCESS_KEY
    # and KLAVI_SECRET_KEY", with the right keys: nothing pointed at the account's tokens.
    with emulator_in_thread(single_use_tokens=True) as emu:
        _, _, command = batch_of_40(emu, tmp_path, concurrency=32)
        done = subprocess.run(
            command, env=cli_env(emu), capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 2, done.stderr
    assert "rerun with --single-use-tokens (KLAVI_SINGLE_USE_TOKENS=1)" in done.stderr
    assert "Klavi refused a token fetched with these access keys and then a fresh one" in (
        done.stderr
    )
    assert emu.secret_key not in done.stderr


@pytest.mark.parametrize("command", ["cancel", "status"])
@pytest.mark.parametrize("credentials", ["keys", "token"])
def test_cancel_and_status_exit_2_on_refused_credentials(command: str, credentials: str) -> None:
    # Exit 2 is "missing or rejected credentials" for every command; these exited 1.
    with emulator_in_thread() as emu:
        payment = emu.add_payment()
        env = cli_env(emu)
        if credentials == "keys":
            env["KLAVI_SECRET_KEY"] = "not-the-secret"
        else:
            del env["KLAVI_ACCESS_KEY"], env["KLAVI_SECRET_KEY"]
            env["KLAVI_TOKEN"] = "not-a-token"
        args = [payment, "--cancelled-by", CPF] if command == "cancel" else [payment]
        done = subprocess.run(
            [CLI, command, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, (done.stdout, done.stderr)
        record = json.loads(done.stdout)
        assert record["kind"] in ("authentication_failed", "unauthorized")
        assert "not-the-secret" not in done.stdout and "not-a-token" not in done.stdout
        assert emu.effects.get(payment, 0) == 0


def test_careless_emulator_and_bare_invocations_get_clear_answers(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60)

    bare = run()
    assert bare.returncode == 2
    assert bare.stderr.startswith("Usage: klavi-async") and "error" not in bare.stderr.lower()
    alone = run("emulator", "--port", "0", "--payments-csv", str(tmp_path / "p.csv"))
    assert alone.returncode == 2 and "add --payments N" in alone.stderr
    wrong = run("emulator", "--port", "0", "--payments", "3", "--payments-csv", "p.jsonl")
    assert wrong.returncode == 2 and "name it *.csv, not p.jsonl" in wrong.stderr
    assert not (tmp_path / "p.csv").exists()
    assert "Retry-After" in run("emulator", "--help").stdout


def test_one_bad_token_answer_does_not_stop_a_single_use_batch(tmp_path: Path) -> None:
    # One unusable /auth answer among good ones stopped the whole batch as "credentials
    # rejected", each rerun getting a few rows further.  Now it is one line, not final,
    # and the rerun sends that row.
    from klavi_async.testing import Fault

    with emulator_in_thread(single_use_tokens=True) as emu:
        ids, out, command = batch_of_40(emu, tmp_path, concurrency=1)
        emu.script("auth", [None] * 5 + [Fault.malformed_json(200)])
        command.append("--single-use-tokens")
        done = subprocess.run(
            command, env=cli_env(emu), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 3, done.stderr  # not final yet: the refused one
        assert "rejected" not in done.stderr
        failed = [r for r in records(out) if not r["ok"]]
        assert [r["kind"] for r in failed] == ["authentication_failed"]
        assert sum(emu.effects.values()) == 39
        again = subprocess.run(
            command, env=cli_env(emu), capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stderr
        assert all(emu.effects[p] == 1 for p in ids)


def test_refused_keys_with_fewer_rows_than_the_stop_needs_still_say_so(tmp_path: Path) -> None:
    # With two rows the three-in-a-row stop never came: exit 3, "not final yet: 2".
    with emulator_in_thread() as emu:
        ids = [emu.add_payment() for _ in range(2)]
        source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
        source.write_text("payment_id,cancelled_by\n" + "".join(f"{p},{CPF}\n" for p in ids))
        env = cli_env(emu)
        env["KLAVI_SECRET_KEY"] = "not-the-secret"
        command = [CLI, "cancel-batch", str(source), "--out", str(out)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "Klavi rejected the credentials" in done.stderr
        assert not out.exists() or records(out) == []


def test_a_stop_for_refused_tokens_records_the_cancels_in_flight(tmp_path: Path) -> None:
    # Three refused fetches in a row at concurrency 16 stopped the batch and cut off the
    # cancels in flight: 7 applied cancels were "cut off, may have reached Klavi".
    from klavi_async.testing import Fault

    with emulator_in_thread(
        single_use_tokens=True, fault_rates={"latency": 1.0}, latency=0.2
    ) as emu:
        ids, out, command = batch_of_40(emu, tmp_path, concurrency=16)
        # Every fetch after the first 16 is refused, so three refusals come in a row
        # whatever order the answers arrive in (three alone could be split by oks).
        emu.script("auth", [None] * 16 + [Fault.of_status(401)] * 40)
        command.append("--single-use-tokens")
        done = subprocess.run(
            command, env=cli_env(emu), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr
        assert "cut off" not in done.stderr
        recorded = {str(r["payment_id"]) for r in records(out) if r["ok"]}
        applied = {p for p in ids if emu.effects.get(p)}
        assert applied and applied == recorded  # every applied cancel has its line
        assert "items 40:" in done.stderr  # the rows not taken are counted as not sent
