"""cancel-batch and the CLI hardened: same-file refusal, resume rules, exit 3, fast stops."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from klavi_async import RetryPolicy, deterministic_idempotency_key
from klavi_async._cli._demo import run_demo
from klavi_async._cli._emulator import reachable_url
from klavi_async._cli._runner import DEAD_ENDPOINT_AFTER

from .conftest import CPF, CPF_BARE, TOKEN
from .test_cli import run
from .test_cli_process import CLI, cli_env, emulator_in_thread, records, wait_for_lines
from .threaded import serve_in_thread

CNPJ_DOC = "11.222.333/0001-81"


class Klavi:
    """A stateful fake: PENDING payments cancel once; `mode` scripts trouble for all."""

    def __init__(self, ids: list[str]) -> None:
        self.status = dict.fromkeys(ids, "PAYMENT_PENDING")
        self.effects = dict.fromkeys(ids, 0)
        self.sent: list[tuple[str, str]] = []  # (payment id, idempotency key)
        self.mode = "ok"  # "ok", "unknown" (500 + unreadable status), "503", "401"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/payment/customer/v1/instant/payments/{id}/cancel", self.cancel)
        app.router.add_get("/payment/customer/v1/instant/payments/{id}/status", self.read)
        return app

    async def cancel(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        self.sent.append((pid, request.headers["x-idempotency-key"]))
        if self.mode == "401":
            return web.json_response({"message": "bad token"}, status=401)
        if self.mode == "503":
            return web.json_response({}, status=503)
        if self.status.get(pid) == "PAYMENT_PENDING":
            self.status[pid] = "CANCELED"
            self.effects[pid] += 1
        elif self.status.get(pid) != "CANCELED":
            refusal = {"statusCode": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"}
            return web.json_response(refusal, status=416)
        if self.mode == "unknown":
            return web.json_response({}, status=500)  # applied, but who knows
        return web.json_response({"id": pid, "status": self.status.get(pid, "CANCELED")})

    async def read(self, request: web.Request) -> web.Response:
        if self.mode == "unknown":
            return web.json_response({}, status=503)
        pid = request.match_info["id"]
        return web.json_response({"id": pid, "status": self.status[pid], "amount": "1.00"})


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("KLAVI_ACCESS_KEY", "KLAVI_SECRET_KEY", "KLAVI_ENVIRONMENT", "KLAVI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLAVI_TOKEN", TOKEN)
    fast = functools.partial(RetryPolicy, initial_backoff=0, max_backoff=0, jitter=False)
    monkeypatch.setattr("klavi_async._client.RetryPolicy", fast)
    return monkeypatch


@pytest.fixture
def klavi(env: pytest.MonkeyPatch) -> Iterator[Klavi]:
    fake = Klavi([f"p{i}" for i in range(1, 6)])
    with serve_in_thread(fake.app) as url:
        env.setenv("KLAVI_BASE_URL", url)
        yield fake


def jsonl(path: Path, *rows: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary_counts(err: str) -> dict[str, int]:
    match = re.search(r"items (\d+): (.*), elapsed", err)
    assert match is not None, err
    counts = {"items": int(match.group(1))}
    for part in match.group(2).split(", "):
        name, _, number = part.rpartition(" ")
        counts[name] = int(number)
    return counts


# -- item 13: the same file as input and --out -------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("how", ["path", "symlink", "hardlink", "relative"])
def test_the_input_as_out_is_refused_and_nothing_is_written(
    klavi: Klavi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
    how: str,
) -> None:
    source = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        source.write_text(f"payment_id,cancelled_by\np1,{CPF}\n")
    else:
        jsonl(source, {"payment_id": "p1", "cancelled_by": CPF})
    before = source.read_bytes()
    out = tmp_path / f"out{suffix}"
    if how == "path":
        out = source
    elif how == "symlink":
        out.symlink_to(source)
    elif how == "hardlink":
        os.link(source, out)
    else:
        monkeypatch.chdir(tmp_path)
        out = Path(".") / "sub" / ".." / source.name
        (tmp_path / "sub").mkdir()
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "same file" in err and err.count("\n") == 1
    assert source.read_bytes() == before
    assert klavi.sent == []


def test_stdin_redirected_from_out_is_refused(
    klavi: Klavi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = jsonl(tmp_path / "out.jsonl", {"payment_id": "p1", "cancelled_by": CPF})
    before = out.read_bytes()
    with out.open() as handle:
        monkeypatch.setattr(sys, "stdin", handle)
        assert run(["cancel-batch", "-", "--out", str(out)]) == 2
    assert "same file" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert klavi.sent == []


# -- item 17: usage errors ----------------------------------------------------------------


def test_out_naming_a_directory_says_so(
    klavi: Klavi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = jsonl(tmp_path / "in.jsonl", {"payment_id": "p1", "cancelled_by": CPF})
    assert run(["cancel-batch", str(source), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and err.count("\n") == 1
    assert klavi.sent == []


@pytest.mark.parametrize("value", ["0", "10001", "200000"])
def test_concurrency_is_bounded(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    source = jsonl(tmp_path / "in.jsonl", {"payment_id": "p1", "cancelled_by": CPF})
    argv = ["cancel-batch", str(source), "--out", str(tmp_path / "o.jsonl")]
    assert run([*argv, "--concurrency", value]) == 2
    err = capsys.readouterr().err
    assert "--concurrency" in err and "10000" in err


def test_the_largest_concurrency_runs(klavi: Klavi, tmp_path: Path) -> None:
    source = jsonl(tmp_path / "in.jsonl", {"payment_id": "p1", "cancelled_by": CPF})
    out = tmp_path / "o.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out), "--concurrency", "10000"]) == 0
    assert [r["ok"] for r in lines(out)] == [True]


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_base_url_is_a_usage_error(
    klavi: Klavi, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    env.setenv("KLAVI_BASE_URL", value)
    assert run(["cancel", "p1", "--cancelled-by", CPF]) == 2
    err = capsys.readouterr().err
    assert "KLAVI_BASE_URL is set but empty" in err and err.count("\n") == 1
    assert klavi.sent == []


def test_a_bad_payments_csv_path_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing-dir" / "payments.csv"
    argv = ["emulator", "--port", "0", "--payments", "3", "--payments-csv", str(target)]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "cannot listen" not in err
    assert f"cannot write --payments-csv {target}" in err


def test_reachable_url_maps_wildcards_to_loopback() -> None:
    assert reachable_url("http://0.0.0.0:8080") == "http://127.0.0.1:8080"
    assert reachable_url("http://[::]:8080") == "http://[::1]:8080"
    assert reachable_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert reachable_url("http://10.1.2.3:80") == "http://10.1.2.3:80"


@pytest.mark.slow
def test_emulator_on_all_interfaces_prints_a_usable_export(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [CLI, "emulator", "--host", "0.0.0.0", "--port", "0", "--payments", "2"],  # noqa: S104
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("Klavi emulator listening on http://0.0.0.0:"), first
        export = server.stdout.readline().strip()
        assert export.startswith("export KLAVI_BASE_URL=http://127.0.0.1:")
        url = export.split("=", 1)[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLAVI_")}
        env.update(KLAVI_BASE_URL=url, KLAVI_TOKEN="anything")
        status = subprocess.run(
            [CLI, "status", "no-such-payment"], env=env, capture_output=True, text=True, timeout=30
        )
        # The URL was accepted and dialled: the emulator answered (401 to a made-up token).
        assert json.loads(status.stdout)["http_status"] == 401, status.stderr
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=20)


@pytest.mark.slow
def test_demo_with_a_seed_prints_the_same_figures_every_run() -> None:
    import asyncio

    def story() -> list[str]:
        said: list[str] = []
        assert asyncio.run(run_demo(said.append, payments=300, seed=11, progress=False)) == 0
        masked = [re.sub(r"\d+\.\d s\b", "T s", line) for line in said]
        return [re.sub(r"127\.0\.0\.1:\d+", "HOST", line) for line in masked]

    first, second, third = story(), story(), story()  # timing used to change the figures
    assert first == second == third
    assert any("injected" in line for line in first)


# -- items 14 and 15: what a line answers, and exit 3 -------------------------------------


def test_outcome_unknown_lines_are_resent_with_the_same_key(
    klavi: Klavi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = jsonl(
        tmp_path / "in.jsonl",
        {"payment_id": "p1", "cancelled_by": CPF},
        {"payment_id": "p2", "cancelled_by": CPF},
    )
    out = tmp_path / "out.jsonl"
    klavi.mode = "unknown"
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 3
    first = lines(out)
    assert all(r["outcome_unknown"] is True for r in first)
    counts = summary_counts(capsys.readouterr().err)
    assert counts["outcome unknown"] == 2 and counts["items"] == 2
    klavi.mode = "ok"
    sent_before = len(klavi.sent)
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 0
    resent = klavi.sent[sent_before:]
    assert sorted(p for p, _ in resent) == ["p1", "p2"]
    assert {k for _, k in resent} == {deterministic_idempotency_key(p, CPF) for p in ("p1", "p2")}
    assert all(r["ok"] for r in lines(out)[len(first) :])
    assert klavi.effects == {"p1": 1, "p2": 1, "p3": 0, "p4": 0, "p5": 0}
    sent = len(klavi.sent)
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 0
    assert len(klavi.sent) == sent  # final now


def test_a_row_corrected_after_a_final_line_is_sent_again(
    klavi: Klavi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "payment_id,cancelled_by,identifier_type,idempotency_key\n"
        "p1,529.982.247-26,,\n"  # bad check digits
        f"p2,{CPF},RG,\n"  # no such identifier type
        "p3,,,\n"  # missing document
        f"p4,{CPF},,k-old\n"
        f"p5,{CPF},,\n"
    )
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 1
    first = lines(out)
    failed = {r["payment_id"]: r["kind"] for r in first if not r["ok"]}
    assert failed == dict.fromkeys(["p1", "p2", "p3"], "invalid_request")
    assert CPF_BARE not in out.read_text()
    assert all("request_digest" in r for r in first)
    assert sorted(klavi.sent) == [("p4", "k-old"), ("p5", deterministic_idempotency_key("p5", CPF))]
    capsys.readouterr()

    source.write_text(
        "payment_id,cancelled_by,identifier_type,idempotency_key\n"
        f"p1,{CPF},,\n"
        f"p2,{CPF},CPF,\n"
        f"p3,{CPF},,\n"
        f"p4,{CPF},,k-4\n"
        f"p5,{CPF_BARE},,\n"  # the same document, written another way: the same request
    )
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 0
    assert sorted(p for p, _ in klavi.sent[2:]) == ["p1", "p2", "p3", "p4"]  # p5 unchanged
    assert ("p4", "k-4") in klavi.sent  # another key: another request
    second = lines(out)[len(first) :]
    assert sorted(r["payment_id"] for r in second) == ["p1", "p2", "p3", "p4"]
    assert all(r["ok"] for r in second)
    counts = summary_counts(capsys.readouterr().err)
    assert counts["items"] == 5
    assert counts["cancelled"] + counts["already cancelled"] == 4
    assert CPF_BARE not in out.read_text()


def test_a_changed_document_is_sent_again_with_its_own_key(klavi: Klavi, tmp_path: Path) -> None:
    """A final failure answers its request only; another cancelled_by is another request."""
    klavi.status["p1"] = "PAYMENT_COMPLETED"
    source = jsonl(tmp_path / "in.jsonl", {"payment_id": "p1", "cancelled_by": CPF})
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 1
    jsonl(source, {"payment_id": "p1", "cancelled_by": CNPJ_DOC})
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 1
    assert [k for _, k in klavi.sent] == [
        deterministic_idempotency_key("p1", CPF),
        deterministic_idempotency_key("p1", CNPJ_DOC),
    ]
    jsonl(source, {"payment_id": "p1", "cancelled_by": CNPJ_DOC})
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 1
    assert len(klavi.sent) == 2  # unchanged and final: not sent again


def test_retryable_failures_exit_three_and_the_summary_adds_up(
    klavi: Klavi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    klavi.status["p3"] = "PAYMENT_COMPLETED"
    rows = [{"payment_id": p, "cancelled_by": CPF} for p in ("p1", "p2", "p3")]
    source = jsonl(tmp_path / "in.jsonl", *rows)
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out), "--concurrency", "1"]) == 1
    capsys.readouterr()
    jsonl(source, *rows, {"payment_id": "p4", "cancelled_by": CPF})
    klavi.mode = "503"
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    counts = summary_counts(err)
    assert counts == {
        "items": 4,
        "cancelled": 0,
        "already cancelled": 0,
        "failed": 1,
        "outcome unknown": 0,
        "retried": 1,
        "reconciled": 0,
    }
    assert "already final in the results file: 2 cancelled, 1 failed" in err
    assert "not final yet: 1 (1 retryable" in err
    klavi.mode = "ok"
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 1  # p3 failed for good
    assert all(n <= 1 for n in klavi.effects.values())


# -- item 16: rejected credentials and a dead endpoint stop at once ------------------------


def test_a_rejected_static_token_stops_at_once(
    klavi: Klavi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    klavi.mode = "401"
    rows = [{"payment_id": f"p{i % 5 + 1}", "cancelled_by": CPF} for i in range(200)]
    source = jsonl(tmp_path / "in.jsonl", *rows)
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out), "--concurrency", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("rejected the credentials") == 1
    assert not out.exists() or out.read_text() == ""
    assert len(klavi.sent) <= 2 * 4 * 2  # the first cancels in flight, not 200


@pytest.mark.slow
def test_a_wrong_secret_over_500_rows_stops_at_once(tmp_path: Path) -> None:
    with emulator_in_thread() as emu:
        ids = [emu.add_payment() for _ in range(500)]
        source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
        source.write_text("payment_id,cancelled_by\n" + "".join(f"{p},{CPF}\n" for p in ids))
        env = cli_env(emu)
        env["KLAVI_SECRET_KEY"] = "not-the-secret"
        for _ in range(2):  # a rerun appends nothing either
            started = time.monotonic()
            done = subprocess.run(
                [CLI, "cancel-batch", str(source), "--out", str(out)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            assert done.stderr.count("\n") == 1
            assert "rejected the credentials" in done.stderr
            assert "not-the-secret" not in done.stderr
            assert time.monotonic() - started < 30  # a generous bound; it was 43 s
        assert not out.exists() or out.read_text() == ""
        assert emu.records("cancel") == []
        assert emu.auth_calls <= 4


def batch_against_a_dead_port(
    env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    concurrency: int = 4,
) -> tuple[str, list[dict[str, object]]]:
    """300 rows against a port nobody listens on: stderr and the lines written."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env.setenv("KLAVI_BASE_URL", f"http://127.0.0.1:{port}")
    rows = [{"payment_id": f"p{i}", "cancelled_by": CPF} for i in range(300)]
    source = jsonl(tmp_path / "in.jsonl", *rows)
    out = tmp_path / "out.jsonl"
    command = ["cancel-batch", str(source), "--out", str(out), "--concurrency", str(concurrency)]
    assert run(command) == 3
    err = capsys.readouterr().err
    assert f"{DEAD_ENDPOINT_AFTER} cancels in a row could not reach" in err
    # The cancels in flight when it stopped end (they fail fast) and are recorded: none is
    # "cut off in flight, may have reached Klavi", which nothing could.
    assert "cut off" not in err
    written = lines(out)
    # cancel_many keeps up to twice `concurrency` requests in flight or results waiting.
    assert DEAD_ENDPOINT_AFTER <= len(written) < DEAD_ENDPOINT_AFTER + 2 * concurrency
    return err, written


def test_a_dead_endpoint_fails_fast(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err, written = batch_against_a_dead_port(env, tmp_path, capsys)
    assert all(r["kind"] == "network" and r["retryable"] for r in written)
    counts = summary_counts(err)
    assert counts["items"] == 300  # the rows not taken are counted as not sent
    assert "never sent" in err


def test_a_dead_endpoint_with_access_keys_fails_fast(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's own setup: with access keys every cancel failed for want of a token
    # (retryable authentication_failed), which never counted: 1,001 lines in 85 s.
    env.delenv("KLAVI_TOKEN")
    env.setenv("KLAVI_ACCESS_KEY", "ak-dead-endpoint")
    env.setenv("KLAVI_SECRET_KEY", "sk-dead-endpoint")
    err, written = batch_against_a_dead_port(env, tmp_path, capsys, concurrency=32)
    assert "auth endpoint" in err and "sk-dead-endpoint" not in err
    assert all(r["kind"] == "authentication_failed" and r["retryable"] for r in written)
    assert summary_counts(err)["items"] == 300


# -- item 13: any batch stops on a signal, whatever the input ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_batch_reading_an_endless_stdin(tmp_path: Path, signum: int) -> None:
    with emulator_in_thread() as emu:
        ids = [emu.add_payment() for _ in range(3)]
        out = tmp_path / "out.jsonl"
        batch = subprocess.Popen(
            [CLI, "cancel-batch", "-", "--out", str(out), "--grace", "2"],
            env=cli_env(emu),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert batch.stdin is not None
        for payment_id in ids:
            batch.stdin.write(json.dumps({"payment_id": payment_id, "cancelled_by": CPF}) + "\n")
        batch.stdin.flush()  # ...and the pipe stays open: the input never ends
        wait_for_lines(out, 3)
        started = time.monotonic()
        batch.send_signal(signum)
        try:
            batch.wait(timeout=15)  # not communicate(): that would close stdin (an EOF)
        finally:
            batch.kill()
            batch.stdin.close()
        assert batch.stderr is not None and batch.stdout is not None
        err = batch.stderr.read()
        batch.stderr.close()
        batch.stdout.close()
        assert time.monotonic() - started < 10
        assert batch.returncode == 130, err
        assert "the rest of the input was not read" in err
        assert sorted(r["payment_id"] for r in records(out)) == sorted(ids)
        assert all(emu.effects[p] == 1 for p in ids)


@pytest.mark.slow
def wait_for_handler(pid: int, signum: int, timeout: float = 20.0) -> None:
    """Wait until process *pid* catches *signum* (Linux: `SigCgt` in /proc/PID/status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signum - 1)):
            time.sleep(0.2)  # the handler is in; let it reach the read it blocks on
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never installed a handler for signal {signum}")


def test_a_signal_stops_a_batch_whose_stdin_never_sends_a_row(tmp_path: Path) -> None:
    with emulator_in_thread() as emu:
        out = tmp_path / "out.jsonl"
        batch = subprocess.Popen(
            [CLI, "cancel-batch", "-", "--out", str(out), "--grace", "0"],
            env=cli_env(emu),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_handler(batch.pid, signal.SIGTERM)  # started: it blocks on the empty pipe
        batch.send_signal(signal.SIGTERM)
        assert batch.stdin is not None and batch.stderr is not None
        try:
            batch.wait(timeout=15)  # stdin stays open
        finally:
            batch.kill()
            batch.stdin.close()
        err = batch.stderr.read()
        batch.stderr.close()
        assert batch.stdout is not None
        batch.stdout.close()
        assert batch.returncode == 130, err
        assert "Fatal Python error" not in err
        assert emu.records("cancel") == []


# -- the results file and the input feed, edge by edge -------------------------------------


def test_lines_from_an_older_version_answer_only_the_same_request(
    klavi: Klavi, tmp_path: Path
) -> None:
    """Lines without request_digest match by item and the key the row would be sent with."""
    out = tmp_path / "out.jsonl"
    key1 = deterministic_idempotency_key("p1", CPF)
    old = [
        {"payment_id": "p1", "ok": True, "idempotency_key": key1},
        {"payment_id": "p2", "ok": False, "retryable": False, "outcome_unknown": False,
         "idempotency_key": deterministic_idempotency_key("p2", CPF)},
        {"payment_id": "p3", "ok": False, "retryable": False, "outcome_unknown": False,
         "idempotency_key": None},
    ]  # fmt: skip
    out.write_text("".join(json.dumps(r) + "\n" for r in old) + "{torn")
    rows = [
        {"payment_id": "p1", "cancelled_by": CPF},  # same request: final
        {"payment_id": "p2", "cancelled_by": CNPJ_DOC},  # another document: sent
        {"payment_id": "p3", "cancelled_by": CPF},  # no key to compare: sent
    ]
    source = jsonl(tmp_path / "in.jsonl", *rows)
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 0
    assert sorted(p for p, _ in klavi.sent) == ["p2", "p3"]


def test_an_unreadable_row_mid_file_is_one_invalid_line_and_the_batch_goes_on(
    klavi: Klavi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    huge = "x" * 200_000  # over the csv module's field limit
    source.write_text(f'payment_id,cancelled_by\np1,{CPF}\np2,"{huge}"\np3,{CPF}\n')
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out), "--concurrency", "1"]) == 1
    capsys.readouterr()
    found = [(r["input_line"], r["ok"]) for r in lines(out)]
    assert sorted(found) == [(1, True), (2, False), (3, True)]  # type: ignore[type-var]


def test_an_out_that_cannot_be_written_leaves_the_input_closed(
    klavi: Klavi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = jsonl(tmp_path / "in.jsonl", {"payment_id": "p1", "cancelled_by": CPF})
    out = tmp_path / "no-such-dir" / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 2  # no ResourceWarning
    assert "cannot write" in capsys.readouterr().err
    assert klavi.sent == []


async def test_the_feed_reads_ahead_a_bounded_number_of_rows(tmp_path: Path) -> None:
    from klavi_async._cli._feed import RowFeed

    source = jsonl(
        tmp_path / "in.jsonl", *({"payment_id": f"p{i}", "cancelled_by": CPF} for i in range(50))
    )
    feed = RowFeed(str(source), capacity=3)
    feed.start()
    got = []
    while (row := await feed.next()) is not None:
        assert len(feed._buffer) <= 3
        got.append(row.payment_id)
    assert got == [f"p{i}" for i in range(50)]
    assert feed.finished
    feed.close()
    feed.interrupt()
    assert await feed.next() is None
