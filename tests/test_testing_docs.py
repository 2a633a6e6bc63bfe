"""
The testing story as the docs tell it: each snippet run, as written, in a fresh project.

README.md ("Testing your code") and docs/testing.md ("pytest fixtures", "Mocking with
aioresponses") are read here, their code blocks copied into a temporary directory with the
configuration they show, and pytest is run on it in a subprocess, as a user's project would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest
from aioresponses import aioresponses

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TESTING = ROOT / "docs" / "testing.md"
URL = "https://api-sandbox.klavi.ai/payment/customer/v1/instant/payments/pay-1/status"


def section(path: Path, heading: str) -> str:
    """The text under *heading* (a markdown heading line), up to the next heading as high."""
    level = len(heading.split(" ", 1)[0])
    lines = path.read_text().splitlines(keepends=True)
    start = lines.index(heading + "\n")
    fenced = False
    for end in range(start + 1, len(lines)):
        line = lines[end]
        fenced ^= line.startswith("```")
        hashes = len(line) - len(line.lstrip("#"))
        if not fenced and 1 <= hashes <= level and line[hashes : hashes + 1] == " ":
            return "".join(lines[start:end])
    return "".join(lines[start:])


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of *language* in *text*, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def run_pytest(project: Path) -> subprocess.CompletedProcess[str]:
    """pytest in *project*, as its owner would run it, warnings as errors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def counts(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error|skipped)", tail)}


def project(tmp_path: Path, config: tuple[str, str], tests: str) -> Path:
    name, content = config
    (tmp_path / name).write_text(content)
    (tmp_path / "test_from_docs.py").write_text(tests)
    return tmp_path


def only_block(text: str, language: str) -> str:
    found = blocks(text, language)
    assert len(found) == 1, f"expected one {language} block, found {len(found)}"
    return found[0]


def test_the_readme_snippet_runs_in_a_fresh_auto_mode_project(tmp_path: Path) -> None:
    text = section(README, "## Testing your code")
    assert "pytest-asyncio" in text and "@pytest.mark.asyncio" in text
    toml = only_block(text, "toml")
    result = run_pytest(project(tmp_path, ("pyproject.toml", toml), only_block(text, "python")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(result) == {"passed": 1}


def test_in_strict_mode_an_unmarked_snippet_does_not_run(tmp_path: Path) -> None:
    # What the README warns about: strict mode without the marker does not run the test.
    readme = section(README, "## Testing your code")
    ini = only_block(section(TESTING, "## pytest fixtures"), "ini")
    result = run_pytest(project(tmp_path, ("pytest.ini", ini), only_block(readme, "python")))
    assert result.returncode != 0
    assert "passed" not in counts(result)
    assert "async def functions are not natively supported" in result.stdout


def test_the_docs_auto_mode_snippet_runs(tmp_path: Path) -> None:
    text = section(TESTING, "## pytest fixtures")
    auto, _strict = blocks(text, "python")
    assert "mark.asyncio" not in auto
    result = run_pytest(project(tmp_path, ("pyproject.toml", only_block(text, "toml")), auto))
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(result) == {"passed": 1}


def test_the_docs_strict_mode_snippet_runs(tmp_path: Path) -> None:
    text = section(TESTING, "## pytest fixtures")
    _auto, strict = blocks(text, "python")
    ini = only_block(text, "ini")
    assert "asyncio_mode = strict" in ini
    result = run_pytest(project(tmp_path, ("pytest.ini", ini), strict))
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(result) == {"passed": 1}


def test_the_docs_aioresponses_snippet_runs(tmp_path: Path) -> None:
    config = only_block(section(TESTING, "## pytest fixtures"), "toml")
    snippet = only_block(section(TESTING, "## Mocking with aioresponses"), "python")
    result = run_pytest(project(tmp_path, ("pyproject.toml", config), snippet))
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(result) == {"passed": 1}


def _release(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version(name))[:3])


async def test_the_aioresponses_claim_matches_the_installed_versions() -> None:
    # docs/testing.md says aioresponses 0.7.9 fails on aiohttp 3.14 and works before it.
    # Plain aiohttp here (not the SDK), so the claim is about aioresponses alone.  When a
    # fixed aioresponses is installed this fails: update the docs' table then.
    text = section(TESTING, "## Mocking with aioresponses")
    assert f"aioresponses {version('aioresponses')} (the current release)" in text
    with aioresponses() as mocked:
        mocked.get(URL, status=200, payload={"status": "CANCELED"})
        async with aiohttp.ClientSession() as session:
            if _release("aiohttp") >= (3, 14):
                with pytest.raises(TypeError, match="stream_writer"):
                    await session.get(URL)
            else:  # pragma: no cover - the suite's environment pins aiohttp 3.14
                async with session.get(URL) as response:
                    assert (await response.json())["status"] == "CANCELED"
