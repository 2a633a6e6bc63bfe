"""
`_kinds`: the one table that says what is retryable, and everything that reads it.
"""

from __future__ import annotations

import pytest

from klavi_async import ErrorKind, RetryPolicy
from klavi_async._auth import auth_failure
from klavi_async._kinds import (
    AUTH_REJECTED_STATUSES,
    DEFAULT_RETRY_STATUSES,
    RETRYABLE_KINDS,
    TRANSPORT_KINDS,
    attempt_retryable,
    provider_error_retryable,
    result_retryable,
)
from klavi_async._outcome import Outcome
from klavi_async._tokens import TokenError


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_a_kind_is_retryable_exactly_when_the_table_says(kind: ErrorKind) -> None:
    assert kind.retryable is (kind in RETRYABLE_KINDS)
    if kind is not ErrorKind.AUTHENTICATION_FAILED:
        assert result_retryable(kind, auth_retryable=True) is kind.retryable
        assert result_retryable(kind, auth_retryable=False) is kind.retryable


def test_an_auth_failure_is_retryable_as_its_failure_says() -> None:
    assert result_retryable(ErrorKind.AUTHENTICATION_FAILED, auth_retryable=True)
    assert not result_retryable(ErrorKind.AUTHENTICATION_FAILED, auth_retryable=False)
    assert not result_retryable(None, auth_retryable=True)
    for exc, retryable in (
        (TokenError("down", retryable=True), True),
        (TokenError("rejected", retryable=False), False),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (ValueError("bad"), False),
    ):
        outcome, said = auth_failure(exc)
        assert outcome.kind is ErrorKind.AUTHENTICATION_FAILED
        assert said is retryable
        if not isinstance(exc, TokenError):
            assert provider_error_retryable(exc) is retryable


@pytest.mark.parametrize("status", range(100, 600, 7))
def test_the_policy_and_the_table_agree_on_every_status(status: int) -> None:
    policy = RetryPolicy()
    assert policy.retry_statuses == DEFAULT_RETRY_STATUSES
    outcome = Outcome(ErrorKind.SERVER_ERROR, status)
    expected = status in DEFAULT_RETRY_STATUSES
    assert policy.should_retry(outcome) is expected
    assert attempt_retryable(ErrorKind.SERVER_ERROR, status, False, DEFAULT_RETRY_STATUSES) is (
        expected
    )


def test_transport_failures_refusals_and_safe_reads() -> None:
    statuses = DEFAULT_RETRY_STATUSES
    for kind in TRANSPORT_KINDS:
        assert attempt_retryable(kind, None, False, statuses)
        assert not attempt_retryable(kind, 200, False, statuses)  # a 2xx cut short: a POST
        assert attempt_retryable(kind, 200, False, statuses, safe=True)  # ... a GET is retried
    assert not attempt_retryable(ErrorKind.NETWORK, 503, True, statuses)  # a refusal: never
    assert not attempt_retryable(None, 503, False, statuses)  # a success: never
    assert not attempt_retryable(ErrorKind.UNEXPECTED_RESPONSE, None, False, statuses)


def test_what_an_auth_status_means() -> None:
    assert {400, 401, 403, 404, 422} == AUTH_REJECTED_STATUSES
    assert not AUTH_REJECTED_STATUSES & DEFAULT_RETRY_STATUSES
