"""
What every `klavi-async` command shares: exit statuses, usage errors, the client from env.
"""

from __future__ import annotations

import json
import os
from typing import Any, NoReturn

import click

from .._client import KlaviClient
from .._config import client_kwargs_from_env
from ._exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_FINAL, EXIT_OK, EXIT_USAGE

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FINAL",
    "EXIT_OK",
    "EXIT_USAGE",
    "client_from_env",
    "emit",
    "fail_usage",
    "say",
    "single_use_tokens_option",
]


def fail_usage(message: str) -> NoReturn:
    """Stop with exit status 2 and `klavi-async: error: <message>`."""
    raise click.UsageError(message)


single_use_tokens_option = click.option(
    "--single-use-tokens",
    is_flag=True,
    envvar="KLAVI_SINGLE_USE_TOKENS",
    show_envvar=True,
    help="Fetch a token for each payment, never shared (accounts whose tokens serve one "
    "payment initiation; needs access keys).",
)


def client_from_env(*, single_use_tokens: bool = False, **kwargs: Any) -> KlaviClient:
    """`KlaviClient.from_env()`, a bad setting being a usage error."""
    if "KLAVI_BASE_URL" in os.environ and not os.environ["KLAVI_BASE_URL"].strip():
        # Unset it, or give a URL: an empty one must not fall back to another target.
        fail_usage("KLAVI_BASE_URL is set but empty: unset it or give the API's base URL")
    try:
        kwargs = client_kwargs_from_env(kwargs, single_use=single_use_tokens)
        return KlaviClient(kwargs.pop("token_provider"), **kwargs)
    except ValueError as exc:
        fail_usage(str(exc))


def emit(record: dict[str, Any]) -> None:
    """Print *record* as one line of JSON on stdout."""
    click.echo(json.dumps(record, ensure_ascii=False))


def say(text: str) -> None:
    """Print *text* on stderr: progress and summaries, stdout being for records."""
    click.echo(text, err=True)
