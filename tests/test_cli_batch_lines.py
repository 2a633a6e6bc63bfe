"""`cancel-batch` result lines: every row's line has the fields of every other's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klavi_async._cli import main

from .conftest import CPF
from .test_cli_process import cli_env, emulator_in_thread


def test_a_malformed_rows_line_has_the_fields_of_a_result_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The malformed row's line is a `CancelFailed` record, so it cannot drift from it."""
    with emulator_in_thread() as emu:
        paid = emu.add_payment()
        source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
        # A cancel, a row without a document, a document the client rejects itself.
        source.write_text(f"payment_id,cancelled_by\n{paid},{CPF}\np2,\np3,529.982.247-26\n")
        for name, value in cli_env(emu).items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as exit_info:
            main(["cancel-batch", str(source), "--out", str(out)])
    assert exit_info.value.code == 1
    lines = {r["input_line"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert lines[1]["ok"] is True
    assert lines[2]["message"] == "malformed input row 2: missing cancelled_by"
    assert lines[2]["kind"] == lines[3]["kind"] == "invalid_request"
    assert list(lines[2]) == list(lines[1]) == list(lines[3])
    assert lines[2]["attempts"] == 0 and lines[2]["elapsed"] == 0.0
    assert lines[2]["retry_after"] is None and lines[2]["idempotency_key"] is None


def test_a_stop_with_nothing_outstanding_but_unread_input_says_to_go_on() -> None:
    # After Ctrl-C on an idle stdin the summary said "not final yet: 0 (...); rerun
    # with the same --out to send them": there was nothing to send again.
    from klavi_async._cli._summary import BatchSummary

    summary = BatchSummary(cancelled=3, unread=True)
    lines = list(summary.lines(1.0, "interrupted"))
    assert "rerun with the same --out to go on with the rest of the input" in lines
    assert not any(line.startswith("not final yet") for line in lines)
    summary.unfinished = 2
    assert any(line.startswith("not final yet: 2") for line in summary.lines(1.0))
