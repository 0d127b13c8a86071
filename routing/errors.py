"""Client-facing errors: one exception type and one place that shapes OpenAI error bodies."""

from __future__ import annotations

import logging
import math

import orjson
from django.http import HttpResponse

from providers.types import ProviderError
from tenants.admission import AdmissionDenied

logger = logging.getLogger("gateway.routing")


def provider_error_log(exc: ProviderError) -> None:
    """The details a client never sees (upstream body, provider and model names), for
    operators."""
    logger.warning(
        "routing.upstream_error",
        extra={
            "code": exc.code,
            "status": exc.status,
            "upstream_status": exc.upstream_status,
            "detail": exc.detail[:1000],
        },
    )


class GatewayError(Exception):
    def __init__(
        self,
        *,
        status: int,
        message: str,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


def gateway_error_from_provider(exc: ProviderError) -> GatewayError:
    """The client's view of a provider error: our status and code with a generic message
    (ProviderError.message); the details go to the log."""
    provider_error_log(exc)
    headers: dict[str, str] = {}
    # Rate limits keep the upstream's pause; an open circuit says when its probe is due.
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        headers["x-should-retry"] = "true"
    return GatewayError(
        status=exc.status,
        message=exc.message,
        error_type=exc.error_type,
        code=exc.code,
        headers=headers,
    )


def gateway_error_from_admission(exc: AdmissionDenied) -> GatewayError:
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(-(-exc.retry_after // 1))))
    return GatewayError(
        status=exc.status,
        message=exc.message,
        error_type=exc.error_type,
        code=exc.code,
        headers=headers,
    )


def error_response(
    error: GatewayError, extra_headers: dict[str, str] | None = None
) -> HttpResponse:
    response = HttpResponse(
        orjson.dumps(error.body()), status=error.status, content_type="application/json"
    )
    for name, value in {**(extra_headers or {}), **error.headers}.items():
        response[name] = value
    return response


# -- Anthropic's error shape (POST /v1/messages) -----------------------------------------------
# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    if status in _ANTHROPIC_ERROR_TYPES:
        return _ANTHROPIC_ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(*, status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


def anthropic_error_response(
    error: GatewayError, extra_headers: dict[str, str] | None = None
) -> HttpResponse:
    response = HttpResponse(
        orjson.dumps(anthropic_error_body(status=error.status, message=error.message)),
        status=error.status,
        content_type="application/json",
    )
    for name, value in {**(extra_headers or {}), **error.headers}.items():
        response[name] = value
    return response
