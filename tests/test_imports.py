"""
Imports where they are used: `klavi-async --help` loads click and none of the commands'
modules; `import klavi_async` (and its names) loads no CLI, broker or telemetry module.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

import klavi_async
from klavi_async._cli import COMMANDS, NATS_COMMANDS, _build, main

_MODULES_AFTER = """
import json, sys
{code}
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running *code*."""
    done = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER.format(code=code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def _roots(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_help_imports_click_and_no_command_module() -> None:
    modules = _modules_after(
        "from klavi_async._cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0"
    )
    assert "click" in _roots(modules)
    assert not _roots(modules) & {"aiohttp", "nats", "tqdm", "opentelemetry", "attrs"}
    ours = {name for name in modules if name.startswith("klavi_async.")}
    assert ours == {"klavi_async._cli", "klavi_async._cli._exits", "klavi_async._version"}


@pytest.mark.parametrize(
    "code",
    [
        "import klavi_async",
        "from klavi_async import KlaviClient, CancelRequest, RetryPolicy, RateLimit",
        "import klavi_async; klavi_async.__version__",
    ],
)
def test_the_library_loads_no_cli_broker_or_telemetry_module(code: str) -> None:
    modules = _modules_after(code)
    assert not _roots(modules) & {"click", "tqdm", "nats", "opentelemetry", "csv", "zipfile"}
    assert "importlib.metadata" not in modules
    ours = {name.split(".")[1] for name in modules if name.startswith("klavi_async.")}
    assert not ours & {"_cli", "nats", "testing", "_otel"}


def test_import_klavi_async_alone_loads_not_even_aiohttp() -> None:
    assert "aiohttp" not in _roots(_modules_after("import klavi_async"))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_listed_command_loads_under_its_name_with_its_help(name: str) -> None:
    group = _build()
    command = group.get_command(click.Context(group), name)
    assert command is not None and command.name == name
    listed = COMMANDS[name][2]
    # `klavi-async --help` lists the first line of the command's own help, word for word.
    assert listed == (command.help or "").strip().splitlines()[0]
    assert listed.endswith(".") and len(listed) <= 60


def test_an_unknown_command_is_a_usage_error() -> None:
    group = _build()
    assert group.get_command(click.Context(group), "cancel-bacth") is None
    assert set(COMMANDS) >= NATS_COMMANDS


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("cancel-bacth", "No such command 'cancel-bacth'.\nDid you mean 'cancel-batch'?"),
        ("wroker", "No such command 'wroker'.\nDid you mean 'worker'?"),
        ("xyzzy", "No such command 'xyzzy'."),
    ],
)
def test_a_misspelt_command_gets_a_suggestion(
    typed: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([typed, "--flag"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"klavi-async: error: {said}\n"


def test_the_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"klavi-async, version {klavi_async.__version__}\n"
