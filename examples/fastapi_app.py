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
from typing import Annotated, Any, Final

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from examples._web import (
    SHUTDOWN_TIMEOUT,
    exit_unless_configured,
    extra_inputs_message,
    http_answer,
    klavi_from_env,
    shutting_down,
)
from klavi_async import ClientClosedError, KlaviClient

__all__ = [
    "MAX_BODY_SIZE",
    "BodySizeLimit",
    "CancelBody",
    "JsonBody",
    "app",
    "create_app",
    "get_klavi",
    "main",
]

MAX_BODY_SIZE: Final = 1024**2
"""Bytes a request body may hold (aiohttp's default `client_max_size`); larger is a 413."""


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
    app.add_exception_handler(StarletteHTTPException, _unparsable)
    app.add_middleware(BodySizeLimit, limit=MAX_BODY_SIZE)
    app.add_middleware(JsonBody)

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
    """
    FastAPI's 422 without its `input` and `ctx` echoes: they can hold the document.

    Unknown keys are one `extra_forbidden` problem with a count, as in the aiohttp app:
    a key may be a CPF, and one problem per key lets a small body make a large answer.
    """
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail: list[dict[str, Any]] = []
    extra = 0
    for error in errors:
        if error["type"] == "extra_forbidden":
            extra += 1
            continue
        problem = {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        if problem not in detail:
            detail.append(problem)
    if extra:
        detail.append(
            {"loc": ["body"], "msg": extra_inputs_message(extra), "type": "extra_forbidden"}
        )
    return JSONResponse({"detail": detail}, status_code=422)


async def _unparsable(request: Request, exc: Exception) -> JSONResponse:
    """
    A body FastAPI could not parse (not UTF-8, nested too deep) is a 422 `json_invalid`.

    FastAPI answers those 400 while other malformed JSON is a 422; the aiohttp app and
    the documented table say 422 for both.  Other HTTP errors keep their status.
    """
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
        problem = {"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}
        return JSONResponse({"detail": [problem]}, status_code=422)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


class JsonBody:
    """
    ASGI middleware: a request body is JSON whatever its `Content-Type` says.

    `curl -d '{...}'` sends `application/x-www-form-urlencoded`, and FastAPI would read a
    form and answer 422; the aiohttp app reads JSON whatever the header.  This API takes
    nothing but JSON, so the header is made to say so.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class BodySizeLimit:
    """
    ASGI middleware: a request body over *limit* bytes is a 413, read no further.

    By `Content-Length` before the app runs, and by counting the body as it streams (a
    chunked request has no length, and a length can lie).
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_SIZE) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._too_large()(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Raised inside FastAPI's body read, which re-raises HTTPExceptions.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.limit} bytes"

    def _too_large(self) -> JSONResponse:
        return JSONResponse({"detail": self._message()}, status_code=413)


app = create_app()
"""The app `uvicorn examples.fastapi_app:app` serves (the client opens at startup)."""


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app until SIGINT/SIGTERM, finishing the requests in flight first."""
    parser = argparse.ArgumentParser(description="Cancel Klavi payments over HTTP (FastAPI).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    exit_unless_configured()
    # The SDK's own records are safe to show: documents masked, no token or secret key.
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(
        app, host=args.host, port=args.port, timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT)
    )


if __name__ == "__main__":
    main()
