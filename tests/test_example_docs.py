"""
docs/integrations.md shows parts of the example apps: they must be the apps' own code.
"""

from __future__ import annotations

import re

import pytest

from ._webapps import ROOT

EXAMPLES = ("examples/aiohttp_app.py", "examples/fastapi_app.py", "examples/_web.py")
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def excerpts() -> list[str]:
    text = (ROOT / "docs" / "integrations.md").read_text()
    # The blocks that define something are excerpts; the others show a test's side.
    return [block for block in _BLOCK.findall(text) if "def " in block]


def in_order(lines: list[str], source: list[str]) -> bool:
    position = 0
    for line in lines:
        try:
            position = source.index(line, position) + 1
        except ValueError:
            return False
    return True


def test_the_page_shows_excerpts() -> None:
    assert len(excerpts()) >= 3


@pytest.mark.parametrize("block", excerpts(), ids=lambda block: block.splitlines()[0].strip())
def test_each_excerpt_is_in_an_example_file(block: str) -> None:
    lines = [line for line in block.splitlines() if line.strip()]
    sources = [(ROOT / path).read_text().splitlines() for path in EXAMPLES]
    assert any(in_order(lines, source) for source in sources), block
