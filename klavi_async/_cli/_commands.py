"""
`klavi-async cancel` and `klavi-async status`: one payment, one JSON line on stdout.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from .._client import KlaviClient
from .._errors import CancelResult, KlaviError
from .._kinds import ErrorKind
from .._results import CancelRequest
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    client_from_env,
    emit,
    single_use_tokens_option,
)

__all__ = ["cancel", "status"]


def _exit_status(record: dict[str, Any]) -> int:
    """0 ok; 2 when the credentials were refused (as `cancel-batch`); 1 another failure."""
    if record["ok"]:
        return EXIT_OK
    kind = record.get("kind")
    if kind == ErrorKind.UNAUTHORIZED.value or (
        kind == ErrorKind.AUTHENTICATION_FAILED.value and record.get("retryable") is False
    ):
        return EXIT_USAGE
    return EXIT_FAILED


async def _status_record(
    client: KlaviClient, payment_id: str, consent_id: str | None
) -> dict[str, Any]:
    async with client:
        try:
            status = await client.get_payment_status(payment_id, consent_id=consent_id)
        except KlaviError as exc:
            return {
                "payment_id": payment_id,
                "ok": False,
                "kind": exc.kind.value,
                "http_status": exc.http_status,
                "code": exc.code,
                "message": exc.message,
                "retryable": exc.retryable,
            }
        return {
            "payment_id": status.payment_id,
            "ok": True,
            "status": status.status,
            "client_request_id": status.client_request_id,
            "amount": status.amount,
            "currency": status.currency,
            "status_reason_code": status.status_reason_code,
            "status_reason_message": status.status_reason_message,
            "status_update_at": status.status_update_at,
        }


@click.command()
@click.argument("payment_id")
@click.option("--cancelled-by", required=True, help="CPF or CNPJ of who asks to cancel.")
@click.option(
    "--identifier-type",
    type=click.Choice(["CPF", "CNPJ"], case_sensitive=False),
    help="Default: from the document's length.",
)
@click.option("--idempotency-key", help="Default: a new UUID4.")
@click.option("--consent-id", help="Cancel an Automatic Pix payment of this consent.")
@single_use_tokens_option
def cancel(
    payment_id: str,
    cancelled_by: str,
    identifier_type: str | None,
    idempotency_key: str | None,
    consent_id: str | None,
    single_use_tokens: bool,
) -> None:
    """Cancel one payment and print the result as JSON."""
    client = client_from_env(single_use_tokens=single_use_tokens)
    request = CancelRequest(
        payment_id,
        cancelled_by,
        identifier_type=identifier_type,
        idempotency_key=idempotency_key,
        consent_id=consent_id,
    )

    async def run() -> CancelResult:
        async with client:
            return await client.cancel_request(request)

    record = asyncio.run(run()).to_record()
    emit(record)
    sys.exit(_exit_status(record))


@click.command()
@click.argument("payment_id")
@click.option("--consent-id", help="Read an Automatic Pix payment of this consent.")
@single_use_tokens_option
def status(payment_id: str, consent_id: str | None, single_use_tokens: bool) -> None:
    """Print a payment's status as JSON."""
    client = client_from_env(single_use_tokens=single_use_tokens)
    record = asyncio.run(_status_record(client, payment_id, consent_id))
    emit(record)
    sys.exit(_exit_status(record))
