"""The one status and header mapping of providers.http, as plain functions."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from providers.adapters.base import ProviderConfig
from providers.http import error_detail, error_for_status, redact, retry_after_from_headers
from providers.types import (
    ContentFiltered,
    ContextTooLong,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)

CONFIG = ProviderConfig(
    id=1, name="up", kind="openai", base_url="", secret="sk-the-real-secret-123"
)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, None, ProviderAuthError),
        (403, None, ProviderAuthError),
        (429, None, ProviderRateLimited),
        (400, {"error": {"message": "bad", "code": None}}, ProviderBadRequest),
        (404, {"error": {"message": "no such model"}}, ProviderBadRequest),
        (422, {"detail": [{"msg": "field required"}]}, ProviderBadRequest),
        (408, None, ProviderTimeout),
        (500, None, ProviderUnavailable),
        (503, {"error": "overloaded"}, ProviderUnavailable),
        (529, {"type": "error", "error": {"type": "overloaded_error"}}, ProviderUnavailable),
        (400, {"error": {"code": "context_length_exceeded", "message": "x"}}, ContextTooLong),
        (
            400,
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "prompt is too long: 1 > 0"},
            },
            ContextTooLong,
        ),
        (400, {"error": {"code": "content_filter", "message": "x"}}, ContentFiltered),
        (400, {"error": {"code": "content_policy_violation", "message": "x"}}, ContentFiltered),
        (
            400,
            {
                "error": {
                    "code": "invalid_request_error",
                    "innererror": {"code": "ResponsibleAIPolicyViolation"},
                    "message": "x",
                }
            },
            ContentFiltered,
        ),
    ],
)
def test_status_and_body_map_to_typed_errors(status, body, error):
    mapped = error_for_status(CONFIG, status, body=body)

    assert type(mapped) is error
    assert mapped.upstream_status == status


def test_upstream_message_is_kept_but_redacted():
    body = {"error": {"message": "Bad key sk-the-real-secret-123 and sk-proj-abcdefghijkl"}}
    mapped = error_for_status(CONFIG, 400, body=body)

    assert "sk-the-real-secret" not in mapped.message
    assert "abcdefghijkl" not in mapped.message
    assert "Bad key" in mapped.detail


def test_auth_errors_never_quote_the_upstream_text():
    mapped = error_for_status(CONFIG, 401, body={"error": {"message": "key abc123 is wrong"}})

    assert "abc123" not in mapped.message


def test_redact_masks_bearer_tokens_and_truncates():
    assert redact("Authorization: Bearer abc.def-ghi") == "Authorization: ***"
    assert len(redact("x" * 5000)) < 600


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"x-ratelimit-reset-requests": "1m30s"}, 90.0),
        ({"x-ratelimit-reset-tokens": "20ms", "x-ratelimit-reset-requests": "2s"}, 2.0),
        ({}, None),
        ({"retry-after": "soon"}, None),
    ],
)
def test_retry_after_from_headers(headers, seconds):
    assert retry_after_from_headers(headers) == (pytest.approx(seconds) if seconds else None)


def test_retry_after_accepts_http_dates_and_epoch_resets():
    in_ten = formatdate(time.time() + 10, usegmt=True)
    assert 8 <= retry_after_from_headers({"retry-after": in_ten}) <= 10
    assert 3 <= retry_after_from_headers({"x-ratelimit-reset": str(int(time.time()) + 5)}) <= 5


def test_error_detail_reads_every_known_shape():
    assert error_detail({"error": {"message": "m", "code": "c"}}).code == "c"
    assert error_detail({"type": "error", "error": {"type": "t", "message": "m"}}).code == "t"
    assert error_detail({"error": "plain"}).message == "plain"
    assert error_detail({"detail": "fastapi"}).message == "fastapi"
    assert error_detail("not a dict").message == ""
