from __future__ import annotations

import random

import orjson
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponse

from gateway_project.logging import request_id_var


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


class InferenceErrorShapeMiddleware:
    """On the inference API every error is in OpenAI's shape: Django's and Ninja's own plain
    404/405 pages (unknown path, wrong method) are replaced by an OpenAI error body."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        response = await self.get_response(request)
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
