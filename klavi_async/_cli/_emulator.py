"""
`klavi-async emulator`: the Klavi emulator served until a signal, and its seeded payments.
"""

from __future__ import annotations

import asyncio
import csv
import random
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import click

from .._signals import on_stop_signals
from ..testing import REFUSAL_CODE, KlaviEmulator
from ._common import fail_usage

__all__ = ["emulator", "reachable_url", "seed_payments", "serve_emulator", "write_payments_csv"]

_DOCUMENTS: Final = ("529.982.247-25", "111.444.777-35", "11.222.333/0001-81", "12.ABC.345/01DE-35")
_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}  # noqa: S104  # nosec B104


def seed_payments(emulator: KlaviEmulator, count: int, *, rng: random.Random) -> dict[str, str]:
    """Add *count* payments: 80 % cancellable, 10 % settled, 10 % already cancelled."""
    planned: dict[str, str] = {}
    for i in range(count):
        roll = i % 10
        if roll == 8:
            status = rng.choice(["PAYMENT_COMPLETED", "PAYMENT_SETTLEMENT_PROCESSING"])
        elif roll == 9:
            status = "CANCELED"
        else:
            status = rng.choice(["PAYMENT_PENDING", "PAYMENT_SCHEDULED", "CONSENT_AUTHORIZED"])
        payment_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))  # from the seed
        planned[emulator.add_payment(status, payment_id=payment_id)] = status
    return planned


def reachable_url(url: str) -> str:
    """*url* with a wildcard host (0.0.0.0, ::) replaced by loopback: what a client dials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host not in _WILDCARDS:
        return url
    netloc = _WILDCARDS[host] + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def write_payments_csv(path: Path, payment_ids: list[str]) -> None:
    """Write an input file for `cancel-batch`: payment_id, cancelled_by."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["payment_id", "cancelled_by"])
        for i, payment_id in enumerate(payment_ids):
            writer.writerow([payment_id, _DOCUMENTS[i % len(_DOCUMENTS)]])


def _describe(emulator: KlaviEmulator) -> list[str]:
    """The banner's lines about what differs from a default emulator."""
    lines = []
    if emulator.random_faults.rates:
        rates = emulator.random_faults.rates.items()
        lines.append("  faults: " + ", ".join(f"{k}={v}" for k, v in rates))
    if emulator.tps_limit is not None:
        lines.append(f"  TPS limit: {emulator.tps_limit:g} requests/s, then 429")
    if emulator.refusal_code != REFUSAL_CODE:
        lines.append(f"  416 refusals carry statusCode {emulator.refusal_code!r}")
    if emulator.empty_cancel_body:
        lines.append("  a cancel's 200 has no body")
    if emulator.single_use_tokens:
        lines.append("  a token serves one payment initiation")
    return lines


async def serve_emulator(
    echo: Callable[[str], None],
    emulator: KlaviEmulator,
    *,
    seed: int | None,
    payments: int,
    payments_csv: Path | None,
) -> int:
    """Serve *emulator* until SIGINT/SIGTERM; seed *payments* first, listed in *payments_csv*."""
    async with emulator:
        # Test data, not secrets.
        rng = random.Random(seed)  # noqa: S311  # nosec B311
        planned = seed_payments(emulator, payments, rng=rng) if payments else {}
        url = reachable_url(emulator.url)
        where = "" if url == emulator.url else f" (all interfaces; here: {url})"
        echo(f"Klavi emulator listening on {emulator.url}{where}")
        echo(f"  export KLAVI_BASE_URL={url}")
        echo(f"  export KLAVI_ACCESS_KEY={emulator.access_key}")
        echo(f"  export KLAVI_SECRET_KEY={emulator.secret_key}")
        if planned:
            echo(f"  {len(planned)} payments seeded")
        if payments_csv is not None and planned:
            try:
                write_payments_csv(payments_csv, list(planned))
            except OSError as exc:
                # A usage error about the file, not about listening.
                raise ValueError(
                    f"cannot write --payments-csv {payments_csv}: {exc.strerror or exc}"
                ) from None
            echo(f"  their ids are in {payments_csv}")
        for line in _describe(emulator):
            echo(line)
        echo("Ctrl-C stops it.")
        stop = asyncio.Event()
        with on_stop_signals(stop.set):
            await stop.wait()
        cancels = emulator.records("cancel")
        echo(
            f"stopped: {len(cancels)} cancel requests, {sum(emulator.effects.values())} payments "
            f"cancelled, max effects per payment {max(emulator.effects.values(), default=0)}"
        )
    return 0


def _fault_rates(specs: tuple[str, ...]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            fail_usage(f"--fault expects NAME=RATE, got {spec!r}")
    return rates


def _refusal_code(code: str | None) -> str | int:
    """The emulator's `refusal_code` argument: digits are a JSON number, as Klavi sends."""
    if code is None:
        return REFUSAL_CODE
    return int(code) if code.isascii() and code.isdigit() else code


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="NAME=RATE",
    help=(
        "Random fault and the share of requests it hits (0 to 1), e.g. 503=0.1; "
        "latency=0.5 delays half the requests by --latency seconds (repeatable; see the docs)."
    ),
)
@click.option("--seed", type=int, help="Seed for reproducible random faults.")
@click.option(
    "--tps-limit",
    type=click.FloatRange(min=0, min_open=True),
    help="Answer 429 beyond this many requests in any second.",
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Seconds a `latency` fault delays an answer; it needs --fault latency=RATE.",
)
@click.option(
    "--retry-after",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds in the Retry-After of a `--fault 429=RATE` answer.",
)
@click.option("--payments", type=click.IntRange(min=0), default=0, help="Seed N payments.")
@click.option(
    "--payments-csv",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the seeded payments as a cancel-batch input file (.csv; needs --payments).",
)
@click.option(
    "--refusal-code",
    metavar="CODE",
    help="statusCode of a 416 refusal; digits send a JSON number, e.g. 4105.",
)
@click.option("--empty-cancel-body", is_flag=True, help="Answer a cancel's 200 with no body.")
@click.option(
    "--single-use-tokens",
    is_flag=True,
    help="A token serves one payment initiation; others answer 401.",
)
def emulator(
    host: str,
    port: int,
    faults: tuple[str, ...],
    seed: int | None,
    tps_limit: float | None,
    latency: float,
    retry_after: float,
    payments: int,
    payments_csv: Path | None,
    refusal_code: str | None,
    empty_cancel_body: bool,
    single_use_tokens: bool,
) -> None:
    """Serve the Klavi emulator (no credentials, no network).

    It serves until Ctrl-C.
    """
    rates = _fault_rates(faults)
    if payments_csv is not None and not payments:
        fail_usage("--payments-csv lists the seeded payments: add --payments N")
    if payments_csv is not None and payments_csv.suffix.lower() != ".csv":
        fail_usage(f"--payments-csv writes CSV: name it *.csv, not {payments_csv.name}")
    given = click.get_current_context().get_parameter_source("latency")
    if given is click.core.ParameterSource.COMMANDLINE and not rates.get("latency"):
        fail_usage(
            "--latency alone delays nothing: add --fault latency=RATE, the share of requests "
            "to delay (e.g. --fault latency=1 for every one)"
        )
    try:
        server = KlaviEmulator(
            host=host,
            port=port,
            fault_rates=rates,
            seed=seed,
            tps_limit=tps_limit,
            latency=latency,
            retry_after=retry_after,
            empty_cancel_body=empty_cancel_body,
            single_use_tokens=single_use_tokens,
            refusal_code=_refusal_code(refusal_code),
        )
        code = asyncio.run(
            serve_emulator(
                click.echo, server, seed=seed, payments=payments, payments_csv=payments_csv
            )
        )
    except ValueError as exc:
        fail_usage(str(exc))
    except OSError as exc:
        fail_usage(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sys.exit(code)
