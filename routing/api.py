"""The public inference API: one NinjaAPI and the routers of each wire shape
(routing/endpoints/). Endpoint modules never import this one; it imports them."""

from __future__ import annotations

import logging

import orjson
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser

from routing.endpoints import anthropic, anthropic_extras, native, openai, responses
from routing.errors import GatewayError, error_response

logger = logging.getLogger("gateway.api")


class OrjsonParser(Parser):
    def parse_body(self, request: HttpRequest):
        return orjson.loads(request.body)


api = NinjaAPI(
    title="LLM Gateway inference API",
    version="1",
    description="OpenAI-compatible inference endpoints. Authenticate with "
    "`Authorization: Bearer <key>` or `X-API-Key: <key>`.",
    urls_namespace="inference",
    docs_url="/v1/docs",
    openapi_url="/v1/openapi.json",
    parser=OrjsonParser(),
)

api.add_router("", openai.router)
api.add_router("", responses.router)
api.add_router("", anthropic.router)
api.add_router("", anthropic_extras.router)
api.add_router("", native.router)


# -- errors that escape a view (the views answer their own; these are the safety net) --------
@api.exception_handler(GatewayError)
def _on_gateway_error(request, exc: GatewayError):
    return error_response(exc)


@api.exception_handler(ValidationError)
def _on_validation_error(request, exc: ValidationError):
    first = exc.errors[0] if exc.errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "payload")]
    param = ".".join(loc) or None
    message = first.get("msg", "Invalid request body")
    error = GatewayError(
        status=400,
        message=f"{message}" + (f" ({param})" if param else ""),
        code="invalid_value" if param else "invalid_request",
        param=param,
    )
    return error_response(error)


@api.exception_handler(HttpError)
def _on_http_error(request, exc: HttpError):
    status = exc.status_code
    message = str(exc) if status != 400 else "Request body is not valid JSON"
    return error_response(GatewayError(status=status, message=message, code="invalid_json"))


@api.exception_handler(RequestDataTooBig)
def _on_too_big(request, exc):
    return error_response(
        GatewayError(status=413, message="Request body too large", code="request_too_large")
    )


@api.exception_handler(Exception)
def _on_unexpected(request, exc: Exception):
    logger.error("api.unhandled_error", exc_info=exc, extra={"error_class": type(exc).__name__})
    return error_response(
        GatewayError(
            status=500, message="Internal gateway error", error_type="server_error", code=None
        )
    )
