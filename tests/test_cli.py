"""The `klavi-async` CLI in-process: commands, JSON output, exit codes, batch files."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from klavi_async import RetryPolicy, deterministic_idempotency_key
from klavi_async._cli import main

from .conftest import CPF, CPF_BARE, TOKEN
from .threaded import serve_in_thread

PENDING = "PAYMENT_PENDING"


class Lookalike:
    """A small stateful Klavi: cancellable payments, refusals, idempotent replays."""

    def __init__(self, statuses: dict[str, str], flaky: int = 0) -> None:
        self.status = dict(statuses)
        self.effects: dict[str, int] = dict.fromkeys(statuses, 0)
        self.keys: list[str] = []
        self.flaky = flaky

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/payment/customer/v1/instant/payments/{id}/cancel", self.cancel)
        app.router.add_get("/payment/customer/v1/instant/payments/{id}/status", self.read)
        return app

    async def cancel(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        self.keys.append(request.headers["x-idempotency-key"])
        if self.flaky:
            self.flaky -= 1
            return web.json_response({}, status=503)
        pid = request.match_info["id"]
        if pid not in self.status:
            return web.json_response({"message": "unknown"}, status=404)
        if self.status[pid] == PENDING:
            self.status[pid] = "CANCELED"
            self.effects[pid] += 1
            return web.json_response({"id": pid, "status": "CANCELED"})
        return web.json_response({"statusCode": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"}, status=416)

    async def read(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        if pid not in self.status:
            return web.json_response({"message": "unknown"}, status=404)
        return web.json_response({"id": pid, "status": self.status[pid], "amount": "10.00"})


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("KLAVI_ACCESS_KEY", "KLAVI_SECRET_KEY", "KLAVI_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLAVI_TOKEN", TOKEN)
    return monkeypatch


@pytest.fixture
def klavi(env: pytest.MonkeyPatch) -> Iterator[Lookalike]:
    fake = Lookalike({"p1": PENDING, "p2": PENDING, "p3": "PAYMENT_COMPLETED", "p4": "CANCELED"})
    with serve_in_thread(fake.app) as url:
        env.setenv("KLAVI_BASE_URL", url)
        yield fake


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    code = exited.value.code
    assert isinstance(code, int)
    return code


def test_cancel_prints_one_json_object(
    klavi: Lookalike, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["cancel", "p1", "--cancelled-by", CPF]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["payment_id"] == "p1"
    assert record["ok"] is True
    assert record["kind"] is None
    assert record["http_status"] == 200
    assert record["attempts"] == 1
    assert record["idempotency_key"] == klavi.keys[0]
    assert klavi.effects["p1"] == 1


def test_cancel_failure_exits_one(klavi: Lookalike, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cancel", "p3", "--cancelled-by", CPF, "--idempotency-key", "k-1"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["ok"] is False
    assert record["kind"] == "not_cancellable"
    assert record["payment_status"] == "PAYMENT_COMPLETED"
    assert record["idempotency_key"] == "k-1"
    assert klavi.keys == ["k-1"]


def test_cancel_with_invalid_document_sends_nothing(
    klavi: Lookalike, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["cancel", "p1", "--cancelled-by", "529.982.247-26"]) == 1
    out = capsys.readouterr().out
    assert json.loads(out)["kind"] == "invalid_request"
    assert "52998224726" not in out
    assert klavi.keys == []


def test_status_prints_json(klavi: Lookalike, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["status", "p3"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "PAYMENT_COMPLETED"
    assert record["amount"] == "10.00"
    assert run(["status", "nope"]) == 1
    assert json.loads(capsys.readouterr().out)["kind"] == "not_found"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["cancel", "p1"], "--cancelled-by"),
        (["cancel", "p1", "--cancelled-by", CPF, "--identifier-type", "RG"], "RG"),
        (["cancel-batch", "in.csv"], "--out"),
        (["cancel-batch", "in.csv", "--out", "o.jsonl", "--concurrency", "0"], "concurrency"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors_exit_two_with_one_line(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("klavi-async: error:")
    assert needle in err


def test_missing_credentials_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("KLAVI_TOKEN", "KLAVI_ACCESS_KEY", "KLAVI_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert run(["cancel", "p1", "--cancelled-by", CPF]) == 2
    err = capsys.readouterr().err
    assert "KLAVI_ACCESS_KEY" in err
    assert err.count("\n") == 1


def test_unreadable_input_is_a_usage_error(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("KLAVI_BASE_URL", "http://127.0.0.1:9")
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not out.exists()
    weird = tmp_path / "input.txt"
    weird.write_text("x")
    assert run(["cancel-batch", str(weird), "--out", str(out)]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    bad_header = tmp_path / "input.csv"
    bad_header.write_text("id,doc\np1,x\n")
    assert run(["cancel-batch", str(bad_header), "--out", str(out)]) == 2
    assert "lacks payment_id, cancelled_by" in capsys.readouterr().err


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_from_csv_writes_one_line_per_item(
    klavi: Lookalike, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "payment_id,cancelled_by,identifier_type\n"
        f"p1,{CPF},\n"
        f"p2,{CPF_BARE},CPF\n"
        f"p3,{CPF},\n"
        f"p4,{CPF},\n"
        ",x,\n"
        "p9,529.982.247-26,\n"
    )
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out), "--concurrency", "2"]) == 1
    records = {r["input_line"]: r for r in lines(out)}
    assert len(records) == 6
    assert records[1]["ok"] and records[2]["ok"]
    assert records[3]["kind"] == "not_cancellable"
    assert records[4]["ok"] and records[4]["already_cancelled"] is True
    assert records[5]["kind"] == "invalid_request"
    assert records[6]["kind"] == "invalid_request"
    assert records[1]["idempotency_key"] == deterministic_idempotency_key("p1", CPF)
    err = capsys.readouterr().err
    assert "failed 3" in err
    assert "52998224726" not in out.read_text()


def test_batch_rerun_sends_only_unfinished_items_with_the_same_keys(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fast = functools.partial(RetryPolicy, initial_backoff=0.001, max_backoff=0.002)
    env.setattr("klavi_async._client.RetryPolicy", fast)
    fake = Lookalike({"p1": PENDING, "p2": PENDING, "p3": PENDING}, flaky=100)
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(json.dumps({"payment_id": p, "cancelled_by": CPF}) for p in ("p1", "p2", "p3"))
        + "\n{broken\n"
    )
    out = tmp_path / "out.jsonl"
    with serve_in_thread(fake.app) as url:
        env.setenv("KLAVI_BASE_URL", url)
        assert run(["cancel-batch", str(source), "--out", str(out)]) == 3  # not final yet
        first = lines(out)
        assert {r["kind"] for r in first if r["payment_id"]} == {"server_error"}
        first_keys = {r["payment_id"]: r["idempotency_key"] for r in first}
        fake.flaky = 0
        sent_before = len(fake.keys)
        assert run(["cancel-batch", str(source), "--out", str(out)]) == 1  # the broken row
        second = lines(out)[len(first) :]
        assert sorted(r["payment_id"] for r in second) == ["p1", "p2", "p3"]
        assert all(r["ok"] for r in second)
        assert set(fake.keys[sent_before:]) == {first_keys[p] for p in ("p1", "p2", "p3")}
        sent = len(fake.keys)
        assert run(["cancel-batch", str(source), "--out", str(out)]) == 1
        assert len(fake.keys) == sent  # everything is final now: nothing is sent
    assert all(n == 1 for n in fake.effects.values())


def test_batch_from_stdin_and_rate_limit(
    klavi: Lookalike,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io
    import sys

    rows = [{"payment_id": p, "cancelled_by": CPF} for p in ("p1", "p2")]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", "-", "--out", str(out), "--rate-limit", "50"]) == 0
    assert sorted(r["payment_id"] for r in lines(out)) == ["p1", "p2"]
    assert "cancelled 2" in capsys.readouterr().err
