"""
A FastAPI app that cancels payments through one shared `KlaviClient`.

`POST /payments/{payment_id}/cancel` with a JSON body
`{"cancelled_by": "...", "identifier_type"?: "...", "idempotency_key"?: "...",
"consent_id"?: "..."}` answers the result record with the status of `examples/_web.py`.

The lifespan opens the app's one client (one token cache, one connection pool, one retry
budget) and closes it at shutdown; handlers get it through the `get_klavi` dependency, so
a test can hand them its own with `app.dependency_overrides[get_klavi]`.  uvicorn stops
in this order: stop accepting, wait up to `timeout_graceful_shutdown` for the requests in
flight, then run the lifespan's shutdown; so the client closes after the last cancel.

Run it from the repository root, with `KLAVI_*` variables set (see `KlaviClient.from_env`):

    python -m examples.fastapi_app --port 8000
    # or: uvicorn examples.fastapi_app:app --timeout-graceful-shutdown 30
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from examples._web import SHUTDOWN_TIMEOUT, http_answer, klavi_from_env, shutting_down
from klavi_async import ClientClosedError, KlaviClient

__all__ = ["CancelBody", "app", "create_app", "get_klavi", "main"]


class CancelBody(BaseModel):
    """The request body.  Strings only: `12345678909` as a JSON number is refused."""

    model_config = ConfigDict(extra="forbid")

    # repr=False: error reporters that capture locals show the model, not the document.
    cancelled_by: StrictStr = Field(repr=False)
    identifier_type: StrictStr | None = None
    idempotency_key: StrictStr | None = None
    consent_id: StrictStr | None = None


def get_klavi(request: Request) -> KlaviClient:
    """The app's shared client, opened by the lifespan."""
    klavi: KlaviClient = request.app.state.klavi
    return klavi


def create_app(client_factory: Callable[[], KlaviClient] = klavi_from_env) -> FastAPI:
    """
    The web app; *client_factory* builds its one client when the lifespan starts.

    Tests pass a factory bound to an emulator; the default reads `KLAVI_*` variables.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with client_factory() as klavi:
            app.state.klavi = klavi
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _unprocessable)

    @app.post("/payments/{payment_id}/cancel")
    async def cancel(
        payment_id: str, body: CancelBody, klavi: Annotated[KlaviClient, Depends(get_klavi)]
    ) -> JSONResponse:
        """Cancel one payment; the body is validated by FastAPI, the values by the client."""
        try:
            if body.consent_id is not None:
                result = await klavi.cancel_automatic_payment(
                    body.consent_id,
                    payment_id,
                    cancelled_by=body.cancelled_by,
                    identifier_type=body.identifier_type,
                    idempotency_key=body.idempotency_key,
                )
            else:
                result = await klavi.cancel_payment(
                    payment_id,
                    cancelled_by=body.cancelled_by,
                    identifier_type=body.identifier_type,
                    idempotency_key=body.idempotency_key,
                )
        except ClientClosedError:
            answer = shutting_down()
        else:
            answer = http_answer(result)
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)

    return app


async def _unprocessable(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without its `input` and `ctx` echoes: they can hold the document."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail: list[dict[str, Any]] = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


app = create_app()
"""The app `uvicorn examples.fastapi_app:app` serves (the client opens at startup)."""


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app until SIGINT/SIGTERM, finishing the requests in flight first."""
    parser = argparse.ArgumentParser(description="Cancel Klavi payments over HTTP (FastAPI).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    # The SDK's own records are safe to show: documents masked, no token or secret key.
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(
        app, host=args.host, port=args.port, timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT)
    )


if __name__ == "__main__":
    main()
