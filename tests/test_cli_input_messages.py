"""
What `cancel-batch` says about input it cannot use, through the real `klavi-async` process.

An empty file, an open quote, a number where a string belongs, CSV on stdin and a results
file torn by a killed run: each has its own message, and nothing is lost or sent twice.
"""

from __future__ import annotations

import codecs
import json
import subprocess
from pathlib import Path

import pytest

from klavi_async import deterministic_idempotency_key
from klavi_async.testing import KlaviEmulator

from .conftest import CPF, CPF_BARE
from .test_cli_process import CLI, cli_env, emulator_in_thread, records


def batch(
    emu: KlaviEmulator, source: str, out: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "cancel-batch", source, "--out", str(out), "--concurrency", "1"],
        env=cli_env(emu),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_empty_csv_says_it_is_empty(tmp_path: Path) -> None:
    # Before: "the CSV header of ... lacks payment_id, cancelled_by".
    source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    source.write_text("")
    with emulator_in_thread() as emu:
        done = batch(emu, str(source), out)
    assert done.returncode == 2
    assert f"{source} is empty: a CSV needs a header line" in done.stderr
    assert "lacks" not in done.stderr
    assert not out.exists() or out.read_text() == ""


@pytest.mark.parametrize(
    ("name", "text"), [("in.csv", "payment_id,cancelled_by\n"), ("in.jsonl", "\n")]
)
def test_an_input_without_rows_says_so(tmp_path: Path, name: str, text: str) -> None:
    source, out = tmp_path / name, tmp_path / "out.jsonl"
    source.write_text(text)
    with emulator_in_thread() as emu:
        done = batch(emu, str(source), out)
    assert done.returncode == 0, done.stderr
    assert f"{source} has no rows: nothing to cancel" in done.stderr


def test_an_open_quote_stops_the_batch_instead_of_swallowing_rows(tmp_path: Path) -> None:
    # Before: the quote swallowed every row after it into one field, and the batch
    # reported one "missing cancelled_by" row, the others gone without a word.
    source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    with emulator_in_thread() as emu:
        ids = [emu.add_payment() for _ in range(4)]
        rows = [f"{ids[0]},{CPF}", f'"{ids[1]},{CPF}', f"{ids[2]},{CPF}", f"{ids[3]},{CPF}"]
        source.write_text("payment_id,cancelled_by\n" + "\n".join(rows) + "\n")
        done = batch(emu, str(source), out)
        assert done.returncode == 2, done.stderr
        assert f"{source}: line 3 opens a quote that runs to line 5, so the lines after it " in (
            done.stderr
        )
        assert [r["payment_id"] for r in records(out)] == [ids[0]]
        assert [r.payment_id for r in emu.records("cancel")] == [ids[0]]
        # Quote fixed, the rerun sends the rest and only the rest.
        source.write_text("payment_id,cancelled_by\n" + "\n".join(rows).replace('"', "") + "\n")
        again = batch(emu, str(source), out)
        assert again.returncode == 0, again.stderr
        assert sorted(r.payment_id for r in emu.records("cancel")) == sorted(ids)
        assert all(emu.effects[p] == 1 for p in ids)


def test_a_number_in_a_jsonl_row_is_invalid_not_coerced(tmp_path: Path) -> None:
    # Before: {"payment_id": 5} was sent as "5"; a CPF as a number loses leading zeros.
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    with emulator_in_thread() as emu:
        good = emu.add_payment()
        rows = [
            {"payment_id": 5, "cancelled_by": CPF},
            {"payment_id": good, "cancelled_by": int(CPF_BARE)},
        ]
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
        done = batch(emu, str(source), out)
        assert done.returncode == 1, done.stderr
        lines = records(out)
        assert [line["kind"] for line in lines] == ["invalid_request", "invalid_request"]
        assert [line["message"] for line in lines] == [
            "malformed input row 1: payment_id must be a JSON string, not a number: put it in "
            "quotes",
            "malformed input row 2: cancelled_by must be a JSON string, not a number: put it in "
            "quotes",
        ]
        assert emu.records("cancel") == []
        assert CPF_BARE not in out.read_text() + done.stderr
        # Quoted, the same rows are new requests: sent on the rerun, not skipped as final.
        rows = [{"payment_id": good, "cancelled_by": CPF}]
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
        again = batch(emu, str(source), out)
        assert again.returncode == 0, again.stderr
        assert emu.effects[good] == 1


def test_csv_in_a_jsonl_file_is_named_once(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(f"payment_id,cancelled_by\np1,{CPF}\n")
    with emulator_in_thread() as emu:
        done = batch(emu, str(source), out)
    assert done.returncode == 2
    assert done.stderr == (
        f"klavi-async: error: {source} holds CSV (its first line is a header), but its name "
        "says JSON lines: rename it to end in .csv\n"
    )
    assert not out.exists()


def test_csv_piped_to_stdin_is_told_stdin_takes_json_lines(tmp_path: Path) -> None:
    # Before: one "the line is not valid JSON" invalid_request per row.
    out = tmp_path / "out.jsonl"
    with emulator_in_thread() as emu:
        payment = emu.add_payment()
        done = batch(emu, "-", out, stdin=f"payment_id,cancelled_by\n{payment},{CPF}\n")
        assert done.returncode == 2
        assert done.stderr == (
            "klavi-async: error: stdin holds CSV (its first line is a header), but stdin "
            "takes JSON lines: give the CSV file's path (a name ending in .csv)\n"
        )
        assert not out.exists()  # no empty results file left behind
        assert emu.records("cancel") == []


def test_a_torn_last_line_is_removed_and_its_item_sent_again(tmp_path: Path) -> None:
    # A run killed mid-write left half a line; it stayed unreadable for ever after.
    source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    with emulator_in_thread() as emu:
        ids = [emu.add_payment() for _ in range(2)]
        source.write_text("payment_id,cancelled_by\n" + "".join(f"{p},{CPF}\n" for p in ids))
        first = batch(emu, str(source), out)
        assert first.returncode == 0, first.stderr
        whole, last = out.read_text().splitlines(keepends=True)
        torn = last[: len(last) // 2]
        out.write_text(whole + torn)
        again = batch(emu, str(source), out)
        assert again.returncode == 0, again.stderr
        assert f"--out {out}: removed its last line, cut short ({len(torn)} bytes)" in (
            again.stderr
        )
        lines = out.read_text().splitlines()
        assert all(isinstance(json.loads(line), dict) for line in lines)  # readable again
        resent = json.loads(last)["payment_id"]
        assert [r["payment_id"] for r in records(out)][-1] == resent
        keys = [r.idempotency_key for r in emu.records("cancel") if r.payment_id == resent]
        assert keys == [deterministic_idempotency_key(resent, CPF)] * 2


def test_lines_of_another_kind_in_out_are_counted(tmp_path: Path) -> None:
    source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    out.write_text("not json\n[1, 2]\n")
    with emulator_in_thread() as emu:
        payment = emu.add_payment()
        source.write_text(f"payment_id,cancelled_by\n{payment},{CPF}\n")
        done = batch(emu, str(source), out)
    assert done.returncode == 0, done.stderr
    assert "2 line(s) are not JSON records and were ignored" in done.stderr
    assert out.read_text().startswith("not json\n[1, 2]\n")  # left as they were


def test_a_lone_carriage_return_inside_a_jsonl_row_does_not_split_it(tmp_path: Path) -> None:
    # `\r` is JSON white space; read as a line end it made one row two invalid ones.
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    with emulator_in_thread() as emu:
        payments = [emu.add_payment() for _ in range(2)]
        source.write_bytes(
            f'{{"payment_id": "{payments[0]}",\r "cancelled_by": "{CPF}"}}\r\n'
            f'{{"payment_id": "{payments[1]}", "cancelled_by": "{CPF}"}}\n'.encode()
        )
        done = batch(emu, str(source), out)
        assert done.returncode == 0, done.stderr
        assert sorted(r["payment_id"] for r in records(out)) == sorted(payments)
        piped = tmp_path / "piped.jsonl"
        done = batch(emu, "-", piped, stdin=source.read_bytes().decode())
        assert done.returncode == 0, done.stderr
        assert sorted(r["payment_id"] for r in records(piped)) == sorted(payments)


def test_a_misspelt_field_is_refused_not_ignored(tmp_path: Path) -> None:
    # Before: {"consentId": ...} was ignored and the payment cancelled as an instant one;
    # "identifer_type" likewise.  A column unlike ours (an export's others) still passes.
    out = tmp_path / "out.jsonl"
    with emulator_in_thread() as emu:
        payment = emu.add_payment()
        rows = tmp_path / "in.jsonl"
        row = {"payment_id": payment, "cancelled_by": CPF, "consentId": "c-1"}
        rows.write_text(json.dumps(row) + "\n")
        done = batch(emu, str(rows), out)
        assert done.returncode == 1, done.stderr
        [line] = records(out)
        assert line["kind"] == "invalid_request"
        assert "unknown field consentId (consent_id?)" in str(line["message"])
        assert emu.records("cancel") == []
        table = tmp_path / "in.csv"
        table.write_text(f"payment_id,cancelled_by,identifer_type\n{payment},{CPF},CPF\n")
        done = batch(emu, str(table), tmp_path / "csv-out.jsonl")
        assert done.returncode == 2
        assert "has the column identifer_type (identifier_type?)" in done.stderr
        table.write_text(f"payment_id,cancelled_by,amount,payment_date\n{payment},{CPF},1,x\n")
        done = batch(emu, str(table), tmp_path / "csv-out.jsonl")
        assert done.returncode == 0, done.stderr
        assert emu.effects[payment] == 1


def test_an_open_quote_past_the_field_limit_still_stops_the_batch(tmp_path: Path) -> None:
    # Past 128 KiB of swallowed rows the csv module fails on the field's size: the rows
    # inside vanished, the batch reporting one "not valid CSV" row (5,242 of 6,001 lost).
    source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    rows = "".join(f"p{i},{CPF}\n" for i in range(6000))
    source.write_text(f'payment_id,cancelled_by\n"p-open,{CPF}\n{rows}')
    with emulator_in_thread() as emu:
        done = batch(emu, str(source), out)
        assert emu.records("cancel") == []
    assert done.returncode == 2, done.stderr[-500:]
    assert f"{source}: line 2 opens a quote that runs to line " in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "stops"),
    [
        # A quoted line break in another column is valid CSV: no stop.
        ('payment_id,cancelled_by,note\n{p},{cpf},"two\nlines"\n', False),
        # One that holds what reads as a row is a quote left open.
        ('payment_id,cancelled_by,note\n{p},{cpf},"open\n{p},{cpf},x\n', True),
        # An open quote on the last line is never closed.
        ('payment_id,cancelled_by\n{p},{cpf}\n"{p},{cpf}\n', True),
        # An address over two lines in a three-column file is an address.
        ('payment_id,cancelled_by,address\n{p},{cpf},"Rua X, 12\nApto 4, Bloco B, SP"\n', False),
        # A quote opened in a column past the header swallows the rows after it.
        ('payment_id,cancelled_by\n{p},{cpf},"see note\np1,{cpf}\np2,{cpf}\n', True),
        # Rows that leave the empty last field off still read as rows.
        ('payment_id,cancelled_by,notes\n{p},{cpf},"open\np1,{cpf}\np2,{cpf}\n', True),
    ],
)
def test_quoted_line_breaks(tmp_path: Path, text: str, stops: bool) -> None:
    source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    with emulator_in_thread() as emu:
        payment = emu.add_payment()
        source.write_text(text.format(p=payment, cpf=CPF))
        done = batch(emu, str(source), out)
    assert (done.returncode == 2) is stops, done.stderr
    assert ("opens a quote" in done.stderr) is stops


def test_odd_encodings_are_named(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    utf16 = tmp_path / "in.csv"
    utf16.write_text(f"payment_id,cancelled_by\np1,{CPF}\n", encoding="utf-16")
    joined = tmp_path / "in.jsonl"  # two files joined with `cat`, each with its BOM
    with emulator_in_thread() as emu:
        first, second = emu.add_payment(), emu.add_payment()
        rows = [json.dumps({"payment_id": p, "cancelled_by": CPF}) + "\n" for p in (first, second)]
        joined.write_bytes(b"".join(codecs.BOM_UTF8 + row.encode() for row in rows))
        done = batch(emu, str(utf16), out)
        assert done.returncode == 2
        assert f"{utf16} is not UTF-8 (UTF-16?): save it as UTF-8" in done.stderr
        done = batch(emu, str(joined), out)
        assert done.returncode == 0, done.stderr
        assert emu.effects[first] == emu.effects[second] == 1


def test_a_results_file_of_another_kind_is_never_cut(tmp_path: Path) -> None:
    # The repair cut whatever followed the last line break: a notes file lost its text.
    source = tmp_path / "in.csv"
    notes = tmp_path / "notes.txt"
    notes.write_text("precious notes, no final newline")
    with emulator_in_thread() as emu:
        payment = emu.add_payment()
        source.write_text(f"payment_id,cancelled_by\n{payment},{CPF}\n")
        done = batch(emu, str(source), notes)
        assert done.returncode == 0, done.stderr
        assert "removed" not in done.stderr
        assert notes.read_text().startswith("precious notes, no final newline\n")
        # /dev/null cannot be fsynced: the run ends with its summary, not a traceback.
        other = emu.add_payment()
        source.write_text(f"payment_id,cancelled_by\n{other},{CPF}\n")
        done = batch(emu, str(source), Path("/dev/null"))
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr


def test_a_second_header_from_joined_files_sends_nothing(tmp_path: Path) -> None:
    source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    with emulator_in_thread() as emu:
        first, second = emu.add_payment(), emu.add_payment()
        header = "\ufeffpayment_id,cancelled_by\n"
        source.write_text(f"{header}{first},{CPF}\n{header}{second},{CPF}\n")
        done = batch(emu, str(source), out)
        assert done.returncode == 1, done.stderr
        assert emu.effects[first] == emu.effects[second] == 1
        refused = [r for r in records(out) if not r["ok"]]
        assert [r["message"] for r in refused] == [
            "malformed input row 2: a header line again (two files joined?)"
        ]
        assert [r.payment_id for r in emu.records("cancel")] == [first, second]


def test_utf16_json_lines_are_named(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"payment_id": "p1", "cancelled_by": CPF}) + "\n", "utf-16")
    with emulator_in_thread() as emu:
        done = batch(emu, str(source), out)
    assert done.returncode == 2
    assert f"{source} is not UTF-8 (UTF-16?)" in done.stderr
