"""
Hostile input rows: one bad row is one invalid line, the batch goes on, nothing leaks.

A CSV field over the csv module's limit, a JSON line nested too deep for the parser, and
a document where an id should be: each is a row with an error, never an exception that
stops `cancel-batch` (or `enqueue`) part-way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from klavi_async._cli import main
from klavi_async._cli._input import read_rows
from klavi_async.testing import KlaviEmulator

from .conftest import CPF, CPF_BARE
from .test_cli_process import emulator_in_thread, records

HUGE = "9" * 200_000  # over csv.field_size_limit() (131,072)


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    code = exited.value.code
    assert isinstance(code, int)
    return code


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[KlaviEmulator]:
    with emulator_in_thread(latency=0.0) as emu:
        for name in ("KLAVI_TOKEN", "KLAVI_ENVIRONMENT"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("KLAVI_BASE_URL", emu.url)
        monkeypatch.setenv("KLAVI_ACCESS_KEY", emu.access_key)
        monkeypatch.setenv("KLAVI_SECRET_KEY", emu.secret_key)
        yield emu


def test_a_csv_field_over_the_limit_is_one_invalid_row(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(f"payment_id,cancelled_by\np0,{CPF}\np1,{HUGE}\np2,{CPF}\n")
    rows = list(read_rows(str(path)))
    assert [row.line for row in rows] == [1, 2, 3]
    assert [row.request is not None for row in rows] == [True, False, True]
    assert rows[1].error is not None
    assert "not valid CSV" in rows[1].error
    assert HUGE[:20] not in rows[1].error
    assert rows[2].payment_id == "p2"


def test_a_jsonl_line_nested_too_deep_is_one_invalid_row(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = json.dumps({"payment_id": "p2", "cancelled_by": CPF})
    path.write_text("[" * 100_000 + "\n" + '{"a":' * 50_000 + "1" + "}" * 50_000 + "\n" + good)
    rows = list(read_rows(str(path)))
    assert [row.error for row in rows] == [
        "the line is not valid JSON",
        "the line is not valid JSON",
        None,
    ]
    assert rows[2].payment_id == "p2"


def test_cancel_batch_goes_on_past_an_unreadable_row(emu: KlaviEmulator, tmp_path: Path) -> None:
    first, last = emu.add_payment(), emu.add_payment()
    source = tmp_path / "in.csv"
    source.write_text(f"payment_id,cancelled_by\n{first},{CPF}\npay-big,{HUGE}\n{last},{CPF}\n")
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out), "--concurrency", "1"]) == 1
    found = {r["input_line"]: r for r in records(out)}
    assert sorted(found) == [1, 2, 3]
    assert found[1]["ok"] is True
    assert found[3]["ok"] is True
    assert found[2]["kind"] == "invalid_request"
    assert HUGE[:20] not in out.read_text()


def test_cancel_batch_goes_on_past_a_deeply_nested_line(emu: KlaviEmulator, tmp_path: Path) -> None:
    payment_id = emu.add_payment()
    source = tmp_path / "in.jsonl"
    good = json.dumps({"payment_id": payment_id, "cancelled_by": CPF})
    source.write_text("[" * 100_000 + "\n" + good + "\n")
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 1
    found = sorted(records(out), key=lambda r: r["input_line"])  # type: ignore[arg-type,return-value]
    assert [(r["input_line"], r["ok"]) for r in found] == [(1, False), (2, True)]


def test_an_invalid_row_shows_no_document_and_resume_still_matches_it(
    emu: KlaviEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"payment_id": CPF}) + "\n" + json.dumps({"payment_id": "p" * 300}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 1
    text = out.read_text()
    assert CPF not in text and CPF_BARE not in text
    shown = [r["payment_id"] for r in records(out)]
    assert shown[0] == "***.982.247-**"
    assert len(shown[1]) < 120  # type: ignore[arg-type]
    # The same invalid rows again: their final lines answer them (by digest), nothing new.
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 1
    assert len(records(out)) == 2
    assert "already final in the results file: 0 cancelled, 2 failed" in capsys.readouterr().err
    # Corrected, the row is another request: it is sent.
    payment_id = emu.add_payment()
    source.write_text(json.dumps({"payment_id": payment_id, "cancelled_by": CPF}) + "\n")
    assert run(["cancel-batch", str(source), "--out", str(out)]) == 0
    assert records(out)[-1]["ok"] is True
