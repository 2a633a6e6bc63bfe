"""`cancel-batch --rate-limit RPS [--no-adaptive]`: the client's rate limiter from the CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from klavi_async import KlaviClient, RateLimit
from klavi_async._cli import _batchcmd
from klavi_async._cli._batchcmd import rate_limit_option
from klavi_async._ratequeue import _CATCH_UP

from .conftest import CPF, TOKEN
from .threaded import serve_in_thread


class Recording:
    """Cancels every payment; keeps when each cancel arrived (this process's clock)."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/payment/customer/v1/instant/payments/{id}/cancel", self.cancel)
        return app

    async def cancel(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        return web.json_response({"id": request.match_info["id"], "status": "CANCELED"})


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recording]:
    for name in ("KLAVI_ACCESS_KEY", "KLAVI_SECRET_KEY", "KLAVI_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLAVI_TOKEN", TOKEN)
    fake = Recording()
    with serve_in_thread(fake.app) as url:
        monkeypatch.setenv("KLAVI_BASE_URL", url)
        yield fake


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every client the command builds."""
    seen: list[dict[str, Any]] = []
    original = _batchcmd.client_from_env

    def recording(**kwargs: Any) -> KlaviClient:
        seen.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(_batchcmd, "client_from_env", recording)
    return seen


def run(argv: list[str]) -> int:
    from klavi_async._cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    code = exited.value.code
    assert isinstance(code, int)
    return code


def rows(tmp_path: Path, n: int) -> Path:
    source = tmp_path / "in.jsonl"
    lines = (json.dumps({"payment_id": f"p{i}", "cancelled_by": CPF}) for i in range(n))
    source.write_text("".join(line + "\n" for line in lines))
    return source


@pytest.mark.parametrize(
    ("rate_limit", "adaptive", "expected"),
    [
        (None, True, RateLimit()),
        (50.0, True, RateLimit(50.0)),
        (50.0, False, RateLimit(50.0, adaptive=False)),
        (0.5, True, RateLimit(0.5, min_rate=0.5)),
        (0.5, False, RateLimit(0.5, adaptive=False, min_rate=0.5)),
    ],
)
def test_the_flags_as_a_rate_limit(
    rate_limit: float | None, adaptive: bool, expected: RateLimit
) -> None:
    assert rate_limit_option(rate_limit, adaptive) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], RateLimit()),
        (["--rate-limit", "40"], RateLimit(40.0)),
        (["--rate-limit", "40", "--no-adaptive"], RateLimit(40.0, adaptive=False)),
    ],
)
def test_the_flags_reach_the_client(
    server: Recording,
    built: list[dict[str, Any]],
    tmp_path: Path,
    flags: list[str],
    expected: RateLimit,
) -> None:
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(rows(tmp_path, 3)), "--out", str(out), *flags]) == 0
    assert [kwargs["rate_limit"] for kwargs in built] == [expected]
    assert len(server.arrivals) == 3


def test_no_adaptive_without_a_rate_is_a_usage_error(
    server: Recording,
    built: list[dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.jsonl"
    assert run(["cancel-batch", str(rows(tmp_path, 3)), "--out", str(out), "--no-adaptive"]) == 2
    assert "--no-adaptive needs --rate-limit" in capsys.readouterr().err
    assert built == [] and server.arrivals == [] and not out.exists()


@pytest.mark.parametrize("value", ["0", "-3", "fast", "nan", "inf", "1e7", "0.0001"])
def test_a_bad_rate_is_a_usage_error(
    server: Recording, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    out = tmp_path / "out.jsonl"
    assert (
        run(["cancel-batch", str(rows(tmp_path, 1)), "--out", str(out), "--rate-limit", value]) == 2
    )
    assert "--rate-limit" in capsys.readouterr().err
    assert server.arrivals == []


def test_a_fixed_rate_spaces_the_batch_on_the_wire(server: Recording, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    flags = ["--rate-limit", "20", "--no-adaptive", "--concurrency", "8"]
    assert run(["cancel-batch", str(rows(tmp_path, 6)), "--out", str(out), *flags]) == 0
    arrivals = sorted(server.arrivals)
    assert len(arrivals) == 6
    # Six sends at 20/s: five intervals of 50 ms, however many are in flight at once (a
    # head that wakes late may take its slot up to _CATCH_UP back; the server stamps a
    # request when its loop gets to it).
    assert arrivals[-1] - arrivals[0] >= 5 / 20 - _CATCH_UP - 0.01
    assert all(json.loads(line)["ok"] for line in out.read_text().splitlines())


def test_the_help_shows_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cancel-batch", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--rate-limit RPS" in text and "--no-adaptive" in text
