"""
The CLI's own process starts with glibc's mmap threshold raised (klavi_async/_process.py).

The effect is checked in a fresh subprocess, since this one's allocator state is its
history's: it reads glibc's `mallinfo2().hblks` (blocks now served by mmap) while it holds a
256 KiB `bytearray`, the size of asyncio's read buffer.  In the slow state the count goes up
by one, in the fast state the block comes from the heap.  The probe shrinks the block before
it frees it, as asyncio does: a block freed whole would raise the threshold itself.

That the commands call it is checked in this process, by stopping each command at the call:
without the call, a CLI process may still start fast by accident (what its imports free
depends on PYTHONHASHSEED), so its end state alone cannot tell.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from klavi_async import _process
from klavi_async._cli import _batchcmd, _demo, _fleetcmds as nats_cli
from klavi_async._cli._batchcmd import cancel_batch
from klavi_async._cli._demo import demo
from klavi_async._process import KEEP_ALLOCATOR_ENV, start_in_fast_allocator_state

from .conftest import CPF
from .test_cli_process import cli_env, emulator_in_thread, records

on_glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc",
    reason="glibc's dynamic mmap threshold is what the call changes; elsewhere it is a no-op",
)

PROBE = textwrap.dedent(
    """
    import ctypes, json, sys

    class _Info(ctypes.Structure):  # mallinfo2 (glibc >= 2.33): size_t fields
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    class _OldInfo(ctypes.Structure):  # mallinfo: the same fields as int
        _fields_ = [(name, ctypes.c_int) for name, _ in _Info._fields_]

    _libc = ctypes.CDLL(None)
    if hasattr(_libc, "mallinfo2"):
        _mallinfo = _libc.mallinfo2
        _mallinfo.restype = _Info
    else:
        _mallinfo = _libc.mallinfo
        _mallinfo.restype = _OldInfo

    def mmapped_256k():
        \"\"\"1 if a 256 KiB block is served by mmap now (hblks up by one while held), else 0.\"\"\"
        before = _mallinfo().hblks
        block = bytearray(256 * 1024)
        held = _mallinfo().hblks
        del block[64:]  # shrunk before it is freed, as asyncio's buffer is: freed whole,
        del block  # it would raise the threshold itself, and the probe would change the state
        return held - before
    """
)

DIRECT = PROBE + textwrap.dedent(
    """
    # The module alone, from the path in argv: importing the package (aiohttp and all)
    # might free a large block on its own, and the check before would then say nothing.
    import importlib.util
    spec = importlib.util.spec_from_file_location("_process", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = mmapped_256k()
    acted = module.start_in_fast_allocator_state()
    print(json.dumps({"before": before, "acted": acted, "after": mmapped_256k()}))
    """
)

CLI_RUN = PROBE + textwrap.dedent(
    """
    from klavi_async._cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"code": code, "after": mmapped_256k()}))
    """
)


class Started(Exception):
    """Raised by the stand-in for the call, to stop a command right there."""


def clean_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """*base* (or ours) without anything that fixes malloc's thresholds or sets the switch."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name.startswith("MALLOC_") or name in ("GLIBC_TUNABLES", KEEP_ALLOCATOR_ENV):
            del env[name]
    return env


def last_json(stdout: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(stdout.strip().splitlines()[-1])
    return result


def test_switch_off_leaves_the_allocator_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[None] = []
    monkeypatch.setattr(_process, "raise_mmap_threshold", lambda: calls.append(None))
    monkeypatch.setenv(KEEP_ALLOCATOR_ENV, "1")
    assert start_in_fast_allocator_state() is False
    assert calls == []
    monkeypatch.setenv(KEEP_ALLOCATOR_ENV, "0")  # only "1" switches it off
    assert start_in_fast_allocator_state() is True
    monkeypatch.delenv(KEEP_ALLOCATOR_ENV)
    assert start_in_fast_allocator_state() is True
    assert calls == [None, None]


@on_glibc
def test_the_call_moves_256k_buffers_from_mmap_to_the_heap() -> None:
    result = subprocess.run(
        [sys.executable, "-c", DIRECT, _process.__file__],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout) == {"before": 1, "acted": True, "after": 0}


@on_glibc
def test_the_switch_keeps_the_slow_state_for_benchmarks() -> None:
    env = {**clean_env(), KEEP_ALLOCATOR_ENV: "1"}
    result = subprocess.run(
        [sys.executable, "-c", DIRECT, _process.__file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout) == {"before": 1, "acted": False, "after": 1}


def command(name: str) -> click.Command:
    return {"cancel-batch": cancel_batch, "demo": demo, "worker": nats_cli.worker}[name]


@pytest.mark.parametrize(
    ("name", "module", "args"),
    [
        ("cancel-batch", _batchcmd, ["in.csv", "--out", "out.jsonl"]),
        ("worker", nats_cli, ["--nats-url", "nats://127.0.0.1:9"]),
        ("demo", _demo, []),
    ],
)
def test_commands_that_own_their_process_call_it_first(
    monkeypatch: pytest.MonkeyPatch, name: str, module: object, args: list[str]
) -> None:
    """Before anything else: no credentials are set, so anything else would fail first."""
    for variable in [v for v in os.environ if v.startswith("KLAVI_")]:
        monkeypatch.delenv(variable)
    calls: list[str] = []

    def started() -> bool:
        calls.append(name)
        raise Started

    monkeypatch.setattr(module, "start_in_fast_allocator_state", started)
    result = CliRunner().invoke(command(name), args)
    assert isinstance(result.exception, Started), result.output
    assert calls == [name]


@on_glibc
@pytest.mark.slow
def test_a_cancel_batch_process_ends_in_the_fast_state(tmp_path: Path) -> None:
    """The real entry point, end to end: the batch is right and its process is fast."""
    with emulator_in_thread() as emu:
        ids = [emu.add_payment() for _ in range(20)]
        source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
        source.write_text("payment_id,cancelled_by\n" + "".join(f"{p},{CPF}\n" for p in ids))
        args = ["cancel-batch", str(source), "--out", str(out), "--concurrency", "4"]
        result = subprocess.run(
            [sys.executable, "-c", CLI_RUN, *args],
            env=clean_env(cli_env(emu)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout) == {"code": 0, "after": 0}
    assert sorted(str(r["payment_id"]) for r in records(out)) == sorted(ids)
    assert all(r["ok"] for r in records(out))
