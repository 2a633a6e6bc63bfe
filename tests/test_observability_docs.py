"""The console-exporter script in docs/observability.md, run exactly as printed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from ._webapps import ROOT


def console_script() -> str:
    text = (ROOT / "docs" / "observability.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    found = [block for block in blocks if block.startswith("# console_spans.py")]
    assert len(found) == 1
    return found[0]


def spans_in(stdout: str) -> list[dict[str, object]]:
    """ConsoleSpanExporter prints one indented JSON object per span."""
    decoder = json.JSONDecoder()
    spans, position = [], 0
    while (start := stdout.find("{", position)) != -1:
        span, position = decoder.raw_decode(stdout, start)
        spans.append(span)
    return spans


def test_the_console_exporter_example_prints_the_spans(tmp_path: Path) -> None:
    script = tmp_path / "console_spans.py"
    script.write_text(console_script())
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "cancelled: True" in done.stdout
    spans = spans_in(done.stdout.replace("cancelled: True", ""))
    names = sorted(str(span["name"]) for span in spans)
    assert names == ["POST", "POST", "cancel_payment"]
    call = next(span for span in spans if span["name"] == "cancel_payment")
    attributes = call["attributes"]
    assert isinstance(attributes, dict) and attributes["klavi.outcome"] == "cancelled"
    assert "52998224725" not in done.stdout and "529.982.247-25" not in done.stdout
