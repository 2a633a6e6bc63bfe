"""
An aiohttp.web app that cancels payments through one shared `KlaviClient`.

`POST /payments/{payment_id}/cancel` with a JSON body
`{"cancelled_by": "...", "identifier_type"?: "...", "idempotency_key"?: "...",
"consent_id"?: "..."}` answers the result record with the status of `examples/_web.py`.

The client lives in a cleanup context behind a `web.AppKey`: one client per app, so every
handler shares one token cache, one connection pool and one retry budget, and it closes
when the app cleans up.  aiohttp stops a server in this order: stop accepting, run
`on_shutdown`, wait up to `shutdown_timeout` for the handlers in flight, then run the
cleanup contexts; so the client closes only after the last cancel has its answer (closing
it in `on_shutdown` instead would cut those cancels off).

Run it from the repository root, with `KLAVI_*` variables set (see `KlaviClient.from_env`):

    python -m examples.aiohttp_app --port 8000
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

from aiohttp import web

from examples._web import (
    SHUTDOWN_TIMEOUT,
    exit_unless_configured,
    extra_inputs_message,
    http_answer,
    klavi_from_env,
    shutting_down,
)
from klavi_async import ClientClosedError, KlaviClient

__all__ = ["KLAVI", "create_app", "main", "parse_cancel_body"]

KLAVI: Final = web.AppKey("klavi", KlaviClient)
"""The app's client: `request.app[KLAVI]`."""

_FIELDS: Final = ("cancelled_by", "identifier_type", "idempotency_key", "consent_id")


def create_app(client_factory: Callable[[], KlaviClient] = klavi_from_env) -> web.Application:
    """
    The web app; *client_factory* builds its one client when the app starts.

    Tests pass a factory bound to an emulator; the default reads `KLAVI_*` variables.
    """

    async def klavi_context(app: web.Application) -> AsyncIterator[None]:
        async with client_factory() as klavi:
            app[KLAVI] = klavi
            yield

    app = web.Application()
    app.cleanup_ctx.append(klavi_context)
    app.router.add_post("/payments/{payment_id}/cancel", cancel)
    return app


async def cancel(request: web.Request) -> web.Response:
    """Cancel one payment; the body is validated here, the values by the client."""
    fields, problems = parse_cancel_body(await request.read())
    if problems:
        # Nothing of the body is echoed or logged: it holds a CPF/CNPJ.
        return web.json_response({"detail": problems}, status=422)
    klavi = request.app[KLAVI]
    try:
        if "consent_id" in fields:
            result = await klavi.cancel_automatic_payment(
                fields["consent_id"],
                request.match_info["payment_id"],
                cancelled_by=fields["cancelled_by"],
                identifier_type=fields.get("identifier_type"),
                idempotency_key=fields.get("idempotency_key"),
            )
        else:
            result = await klavi.cancel_payment(
                request.match_info["payment_id"],
                cancelled_by=fields["cancelled_by"],
                identifier_type=fields.get("identifier_type"),
                idempotency_key=fields.get("idempotency_key"),
            )
    except ClientClosedError:
        answer = shutting_down()
    else:
        answer = http_answer(result)
    return web.json_response(answer.body, status=answer.status, headers=answer.headers)


def parse_cancel_body(raw: bytes) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """
    The body's fields, or the problems with it, in FastAPI's `detail` shape.

    `cancelled_by` is required; the other fields are optional strings (null is absent);
    unknown fields are refused, so a misspelt `cancelledBy` is not silently ignored, in
    one problem that counts them and names none.
    """
    if not raw.strip():
        return {}, [_problem((), "Field required", "missing")]
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8/16/32, or nested too deep
        return {}, [_problem((), "JSON decode error", "json_invalid")]
    if not isinstance(data, dict):
        return {}, [_problem((), "the body must be a JSON object", "model_attributes_type")]
    fields: dict[str, str] = {}
    problems: list[dict[str, Any]] = []
    for name in _FIELDS:
        value = data.get(name)
        if value is None:
            if name == "cancelled_by":
                problems.append(_problem((name,), "Field required", "missing"))
        elif isinstance(value, str):
            fields[name] = value
        else:
            problems.append(_problem((name,), "Input should be a valid string", "string_type"))
    # One problem with a count, never the names: a key may be a CPF, and 60,000 of them
    # echoed back would make a small body a large answer.
    extra = sum(1 for name in data if name not in _FIELDS)
    if extra:
        problems.append(_problem((), extra_inputs_message(extra), "extra_forbidden"))
    return fields, problems


def _problem(loc: tuple[str, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app until SIGINT/SIGTERM, then finish the requests in flight and exit 0."""
    parser = argparse.ArgumentParser(description="Cancel Klavi payments over HTTP (aiohttp).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    exit_unless_configured()
    # The SDK's own records are safe to show: documents masked, no token or secret key.
    logging.basicConfig(level=logging.INFO)
    web.run_app(create_app(), host=args.host, port=args.port, shutdown_timeout=SHUTDOWN_TIMEOUT)


if __name__ == "__main__":
    main()
