"""
docs/integrations.md shows parts of the example apps: they must be the apps' own code.
"""

from __future__ import annotations

import re

import pytest

from ._webapps import ROOT

EXAMPLES = ("examples/aiohttp_app.py", "examples/fastapi_app.py", "examples/_web.py")
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
_SCRIPT = re.compile(r"# [\w.]+\.py: ")


def excerpts() -> list[str]:
    text = (ROOT / "docs" / "integrations.md").read_text()
    # The blocks that define something are excerpts; the others show a test's side.  A
    # block headed `# name.py: ...` is a script of its own (test_integration_scripts.py).
    return [block for block in _BLOCK.findall(text) if "def " in block and not _SCRIPT.match(block)]


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


def test_every_extra_the_docs_name_exists_and_the_install_says_where_from() -> None:
    # docs/index.md told users to `pip install klavi-async`, which is on no index, and
    # the example apps' needs (FastAPI, uvicorn) were in no extra.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = set()
    for page in pages:
        for group in re.findall(r"(?:klavi-async|klavi_async)\[([a-z,]+)\]", page.read_text()):
            named.update(group.split(","))
    assert named and named <= extras, named - extras
    assert {"cli", "nats", "otel", "uvloop", "examples"} <= named
    install = (ROOT / "docs" / "index.md").read_text()
    assert "not on a package index yet" in install
    assert not re.search(r"^pip install klavi-async\b", install, re.MULTILINE)
    # The example apps' own needs are the `examples` extra.
    needs = {dep.split(">")[0] for dep in project["optional-dependencies"]["examples"]}
    assert needs == {"fastapi", "uvicorn"}


@pytest.mark.parametrize("module", ["examples.aiohttp_app", "examples.fastapi_app"])
def test_an_example_app_without_credentials_says_so_in_one_line(module: str) -> None:
    # It crashed with a traceback (the aiohttp app) or "Application startup failed".
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAVI_")}
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == (
        "cannot start: no Klavi credentials: set KLAVI_ACCESS_KEY and KLAVI_SECRET_KEY, "
        "or KLAVI_TOKEN\n"
    )
