"""OpenTelemetry traces of inference requests, off by default (GATEWAY_OTEL_ENABLED).

One request span per request (the parent comes from the client's W3C `traceparent` when it
sent one), with the GenAI semantic conventions (gen_ai.operation.name, gen_ai.request.model,
gen_ai.response.model, gen_ai.usage.input_tokens / output_tokens, gen_ai.system), and children:
admission, one span per attempt (a try of one deployment), one client span per upstream call
inside its attempt, and settlement. The upstream call carries the trace on: its `traceparent`
and `tracestate` go out with the request (providers.http.outbound_headers). Spans go to an
OTLP/HTTP collector (OTEL_EXPORTER_OTLP_ENDPOINT, `/v1/traces` appended, or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is) through a batch processor, off the request path.

Disabled, every entry point returns one shared no-op object: no span, no context switch, no
allocation beyond the call. Handles are passed explicitly (parent=...) rather than through
the current context, because a stream's body is produced after the view returned.

Prompts and answers are never put on a span."""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from providers.http import outbound_headers

logger = logging.getLogger("gateway.routing.tracing")

# The client's (traceparent, tracestate), set by TraceContextMiddleware for the request.
client_trace_context: ContextVar[tuple[str, str | None] | None] = ContextVar(
    "client_trace_context", default=None
)

# Attribute names (OpenTelemetry semantic conventions for generative AI).
OPERATION = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
SYSTEM = "gen_ai.system"
PROVIDER_NAME = "gen_ai.provider.name"

# Provider kinds -> gen_ai.system values of the conventions.
_SYSTEMS = {
    "openai": "openai",
    "openai_compatible": "openai",
    "azure_openai": "az.ai.openai",
    "anthropic": "anthropic",
    "mock": "_OTHER",
}
_OPERATIONS = {"chat": "chat", "messages": "chat", "generate": "chat", "embeddings": "embeddings"}


class NoopSpan:
    """What every entry point returns while tracing is off."""

    __slots__ = ()
    recording = False

    def __enter__(self) -> NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, name: str, value: Any) -> None:
        return None

    def end(self, **kwargs: Any) -> None:
        return None


NOOP = NoopSpan()


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configured = False
        self.tracer: Any = None
        self.provider: Any = None
        self.propagator: Any = None


_state = _State()


def tracing_configure(
    *, enabled: bool, endpoint: str = "", service_name: str = "llm-gateway", exporter: Any = None
) -> None:
    """(Re)build the tracer. `exporter` replaces the OTLP one (tests)."""
    with _state.lock:
        _shutdown_locked()
        _state.configured = True
        if not enabled:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint)
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _state.provider = provider
        _state.tracer = provider.get_tracer("llm-gateway.routing")
        _state.propagator = TraceContextTextMapPropagator()


def _tracer():
    if not _state.configured:
        tracing_configure(
            enabled=settings.GATEWAY_OTEL_ENABLED,
            endpoint=settings.GATEWAY_OTEL_TRACES_ENDPOINT,
            service_name=settings.OTEL_SERVICE_NAME,
        )
    return _state.tracer


def tracing_enabled() -> bool:
    return _tracer() is not None


def tracing_flush(timeout_ms: int = 5000) -> bool:
    provider = _state.provider
    return provider.force_flush(timeout_ms) if provider is not None else True


def _shutdown_locked() -> None:
    provider = _state.provider
    _state.provider = _state.tracer = _state.propagator = None
    if provider is not None:
        provider.shutdown()


async def tracing_shutdown() -> None:
    """Export what is buffered and stop (ASGI lifespan shutdown)."""
    with _state.lock:
        _shutdown_locked()
        _state.configured = False


# -- spans -----------------------------------------------------------------------------------
class Span:
    """A live span; `end` is idempotent. Used as a context manager it ends on exit and records
    an exception that escapes as the span's error."""

    __slots__ = ("span", "_ended", "_token")
    recording = True

    def __init__(self, span: Any) -> None:
        self.span = span
        self._ended = False
        self._token = None

    def set(self, name: str, value: Any) -> None:
        if value is not None:
            self.span.set_attribute(name, value)

    def error(self, exc: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("error.type", getattr(exc, "code", None) or type(exc).__name__)
        self.span.set_status(Status(StatusCode.ERROR, str(getattr(exc, "message", ""))[:200]))

    def end(self, **attributes: Any) -> None:
        if self._ended:
            return
        self._ended = True
        for name, value in attributes.items():
            self.set(name, value)
        self.span.end()

    def __enter__(self) -> Span:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.error(exc)
        self.end()


class UpstreamSpan(Span):
    """A client span whose trace context rides on the upstream request while it is open."""

    __slots__ = ()

    def __enter__(self) -> UpstreamSpan:
        from opentelemetry import trace

        carrier: dict[str, str] = {}
        _state.propagator.inject(carrier, context=trace.set_span_in_context(self.span))
        self._token = outbound_headers.set(carrier)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        token, self._token = self._token, None
        if token is not None:
            try:
                outbound_headers.reset(token)
            except ValueError:  # exited in another context (a stream consumed elsewhere)
                outbound_headers.set(None)
        super().__exit__(exc_type, exc, tb)


def _start(name: str, parent: Any, kind: Any = None, attributes: dict | None = None) -> Any:
    from opentelemetry import trace

    context = trace.set_span_in_context(parent.span) if isinstance(parent, Span) else None
    return _state.tracer.start_span(
        name,
        context=context,
        kind=kind if kind is not None else trace.SpanKind.INTERNAL,
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
    )


def request_span(
    *,
    endpoint: str,
    model: str,
    request_id: str,
    tenant_id: int | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> Span | NoopSpan:
    """The span of one inference request (ended by `end(...)` at settlement). Its parent is the
    client's trace when `traceparent` is valid; a malformed one starts a new trace."""
    tracer = _tracer()
    if tracer is None:
        return NOOP
    from opentelemetry import trace

    if traceparent is None:
        traceparent, tracestate = client_trace_context.get() or (None, None)
    context = None
    if traceparent:
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        context = _state.propagator.extract(carrier)
    operation = _OPERATIONS.get(endpoint, endpoint)
    span = tracer.start_span(
        f"{operation} {model}",
        context=context,
        kind=trace.SpanKind.SERVER,
        attributes={
            OPERATION: operation,
            REQUEST_MODEL: model,
            "gateway.endpoint": endpoint,
            "gateway.request_id": request_id,
            **({"gateway.tenant_id": tenant_id} if tenant_id is not None else {}),
        },
    )
    return Span(span)


def request_span_end(
    span: Span | NoopSpan,
    *,
    response_model: str | None,
    provider_kind: str | None,
    input_tokens: int,
    output_tokens: int,
    status_code: int,
    outcome: str,
    cost_usd: str,
    fallbacks: int,
) -> None:
    if not span.recording:
        return
    if outcome != "ok" and isinstance(span, Span):
        from opentelemetry.trace import Status, StatusCode

        span.span.set_attribute("error.type", outcome if status_code < 400 else str(status_code))
        span.span.set_status(Status(StatusCode.ERROR))
    span.end(
        **{
            RESPONSE_MODEL: response_model or None,
            SYSTEM: _SYSTEMS.get(provider_kind or "", provider_kind),
            INPUT_TOKENS: input_tokens,
            OUTPUT_TOKENS: output_tokens,
            "http.response.status_code": status_code,
            "gateway.outcome": outcome,
            "gateway.cost_usd": cost_usd,
            "gateway.fallbacks": fallbacks,
        }
    )


def request_span_abort(span: Span | NoopSpan, exc: BaseException) -> None:
    """Ends a request span whose request never reached settlement (refused at admission)."""
    if isinstance(span, Span):
        span.error(exc)
        span.end()


def child_span(parent: Span | NoopSpan, name: str, **attributes: Any) -> Span | NoopSpan:
    """An internal child (gateway.admission, gateway.settlement...)."""
    if not parent.recording:
        return NOOP
    return Span(_start(name, parent, attributes=attributes))


def attempt_span(
    parent: Span | NoopSpan, *, provider: str, model: str, retry_index: int
) -> Span | NoopSpan:
    if not parent.recording:
        return NOOP
    return Span(
        _start(
            "gateway.attempt",
            parent,
            attributes={
                "gateway.provider": provider,
                "gateway.model": model,
                "gateway.retry_index": retry_index,
            },
        )
    )


def upstream_span(
    parent: Span | NoopSpan,
    *,
    operation: str,
    provider_kind: str,
    upstream_model: str,
    base_url: str | None = None,
) -> UpstreamSpan | NoopSpan:
    """The client span of one upstream call; while open, its trace context is added to the
    outbound request's headers."""
    if not parent.recording:
        return NOOP
    from opentelemetry import trace

    op = _OPERATIONS.get(operation, operation)
    system = _SYSTEMS.get(provider_kind, provider_kind)
    return UpstreamSpan(
        _start(
            f"{op} {upstream_model}",
            parent,
            kind=trace.SpanKind.CLIENT,
            attributes={
                OPERATION: op,
                REQUEST_MODEL: upstream_model,
                SYSTEM: system,
                PROVIDER_NAME: system,
                "server.address": urlsplit(base_url).hostname if base_url else None,
            },
        )
    )


# -- the client's trace context ----------------------------------------------------------------


class TraceContextMiddleware:
    """Keeps the client's `traceparent` / `tracestate` for the request span (installed only
    when GATEWAY_OTEL_ENABLED; native async, so the inference handler accepts it)."""

    async_capable = True
    sync_capable = False

    def __init__(self, get_response) -> None:
        from asgiref.sync import markcoroutinefunction

        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        traceparent = request.META.get("HTTP_TRACEPARENT")
        token = client_trace_context.set(
            (traceparent, request.META.get("HTTP_TRACESTATE")) if traceparent else None
        )
        try:
            return await self.get_response(request)
        finally:
            client_trace_context.reset(token)
