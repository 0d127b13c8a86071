from __future__ import annotations

import random
import time

import orjson
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponse

from gateway_project.logging import request_id_var
from routing.metrics import request_observation_begin, request_refused


def new_request_id() -> str:
    # Unique, not secret: the PRNG is enough and costs no syscall (uuid4 reads os.urandom).
    return f"req_{random.getrandbits(128):032x}"


class RequestIdMiddleware:
    """Gives every request the gateway's own id (`x-request-id`; the usage event's identity,
    never chosen by the client) and echoes the client's own id, when it sent a sane one in
    `X-Client-Request-Id` or `X-Request-Id`, as `x-client-request-id`."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _assign(self, request) -> tuple[str, str]:
        meta = request.META
        supplied = (meta.get("HTTP_X_CLIENT_REQUEST_ID") or meta.get("HTTP_X_REQUEST_ID") or "")[
            :128
        ]
        request_id = new_request_id()
        request.request_id = request_id
        request_id_var.set(request_id)
        return request_id, supplied if supplied.isprintable() else ""

    @staticmethod
    def _echo(response, request_id: str, client_id: str):
        response["x-request-id"] = request_id
        if client_id:
            response["x-client-request-id"] = client_id
        return response

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        request_id, client_id = self._assign(request)
        return self._echo(self.get_response(request), request_id, client_id)

    async def __acall__(self, request):
        request_id, client_id = self._assign(request)
        return self._echo(await self.get_response(request), request_id, client_id)


_PLAIN_ERRORS = {
    404: ("Unknown path: see /v1/docs for the endpoints", "invalid_request_error", "not_found"),
    405: ("Method not allowed on this path", "invalid_request_error", "method_not_allowed"),
}


# The endpoint label of refusals, by path (bounded: anything else is "other").
_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
    "/v1/models": "models",
    "/api/v1/generate": "generate",
}


def _error_code(response) -> str:
    """The error's code (OpenAI shape) or type (Anthropic shape) from a small JSON body."""
    try:
        body = orjson.loads(response.content)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return "unknown"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "unknown"
    code = error.get("code") or error.get("type") or "unknown"
    return str(code)


class InferenceErrorShapeMiddleware:
    """On the inference API every error is in OpenAI's shape: Django's and Ninja's own plain
    404/405 pages (unknown path, wrong method) are replaced by an OpenAI error body.

    It also counts refusals: an error response for which the routing service recorded no
    request (bad key, validation, rate limit, budget...) goes to `request_refused` with its
    error code, so refusals reach the request counters and `gateway_refusals_total`."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        started = time.perf_counter()
        observation = request_observation_begin()
        response = self._shaped(await self.get_response(request))
        if response.status_code >= 400 and not observation[0]:
            path = request.path.rstrip("/") or "/"
            request_refused(
                endpoint=_ENDPOINTS.get(path, "other"),
                code=_error_code(response),
                status=response.status_code,
                latency_s=time.perf_counter() - started,
                method=request.method if request.method in ("GET", "POST") else "other",
            )
        return response

    def _shaped(self, response):
        plain = _PLAIN_ERRORS.get(response.status_code)
        if plain is None or response.get("Content-Type", "").startswith("application/json"):
            return response
        message, error_type, code = plain
        replaced = HttpResponse(
            orjson.dumps(
                {"error": {"message": message, "type": error_type, "param": None, "code": code}}
            ),
            status=response.status_code,
            content_type="application/json",
        )
        if response.has_header("Allow"):
            replaced["Allow"] = response["Allow"]
        return replaced


class UnauthenticatedLimitMiddleware:
    """Refuses (429) requests from a client address that had too many 401s this minute,
    before the key is looked up; counts every 401 answered (tenants.unauth)."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        from django.conf import settings
        from django.core.exceptions import MiddlewareNotUsed

        if settings.GATEWAY_UNAUTH_PER_IP_PER_MINUTE <= 0:
            raise MiddlewareNotUsed
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        from tenants.keys import api_key_from_headers
        from tenants.unauth import unauth_failure_note, unauth_refusal

        client = request.META.get("REMOTE_ADDR") or ""
        raw_key = api_key_from_headers(
            request.META.get("HTTP_AUTHORIZATION"), request.META.get("HTTP_X_API_KEY")
        )
        wait_ms = await unauth_refusal(client=client, raw_key=raw_key)
        if wait_ms is not None:
            response = HttpResponse(
                orjson.dumps(
                    {
                        "error": {
                            "message": "Too many requests with a missing or invalid API key "
                            "from this address; try again later",
                            "type": "rate_limit_error",
                            "param": None,
                            "code": "too_many_unauthenticated_requests",
                        }
                    }
                ),
                status=429,
                content_type="application/json",
            )
            response["Retry-After"] = str(max(1, -(-wait_ms // 1000)))
            return response
        response = await self.get_response(request)
        if response.status_code == 401:
            await unauth_failure_note(client=client)
        return response
