"""OpenTelemetry traces (routing/tracing.py) exported over OTLP/HTTP to a receiver on loopback
that decodes the protobuf export requests: a span per request with the GenAI attributes, its
admission, attempt, upstream-call and settlement children, the client's trace continued and
carried on to the upstream; nothing at all while tracing is off."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from asgiref.sync import sync_to_async
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from providers.http import outbound_headers
from providers.models import ProviderKind
from providers.types import ChatRequest
from routing import tracing
from routing.inference import inference_call_open
from routing.ingress import Ingress
from routing.snapshot import snapshot_get
from tenants.selectors import api_key_policy_get
from tests.routing.support import fake_provider, mock_provider, model_on, route, tenant_key

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


class OtlpReceiver:
    """A collector stand-in: POST /v1/traces with an ExportTraceServiceRequest (protobuf)."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    with self.lock:
                        self.spans.append(
                            {
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "status": span.status.code,
                                "attributes": _attributes(span.attributes),
                                "resource": resource,
                            }
                        )

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.05)
        with self.lock:
            return list(self.spans)


def _attributes(items) -> dict:
    out = {}
    for item in items:
        value = item.value
        kind = value.WhichOneof("value")
        out[item.key] = getattr(value, kind) if kind else None
    return out


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    otlp.thread.start()
    try:
        yield otlp
    finally:
        otlp.server.shutdown()
        otlp.server.server_close()


@pytest.fixture
def tracing_on(receiver) -> Iterator[OtlpReceiver]:
    tracing.tracing_configure(enabled=True, endpoint=f"{receiver.endpoint}/v1/traces")
    try:
        yield receiver
    finally:
        tracing.tracing_configure(enabled=False)
        tracing._state.configured = False  # back to the settings' choice


def _by_name(spans: list[dict]) -> dict[str, list[dict]]:
    named: dict[str, list[dict]] = {}
    for span in spans:
        named.setdefault(span["name"], []).append(span)
    return named


def test_tracing_is_off_by_default_and_costs_nothing(receiver):
    tracing._state.configured = False
    assert tracing.tracing_enabled() is False
    span = tracing.request_span(endpoint="chat", model="m", request_id="r", traceparent=TRACEPARENT)
    assert span is tracing.NOOP
    assert tracing.child_span(span, "gateway.admission") is tracing.NOOP
    attempt = tracing.attempt_span(span, provider="p", model="m", retry_index=0)
    upstream = tracing.upstream_span(
        attempt, operation="chat", provider_kind="openai", upstream_model="m"
    )
    with attempt, upstream:
        assert outbound_headers.get() is None
    assert tracing.tracing_flush() is True
    assert receiver.wait_for(1, timeout_s=0.5) == []


async def _one_request(route_name: str, raw: str, *, stream: bool = False):
    snapshot = await snapshot_get()
    policy = await api_key_policy_get(raw_key=raw)
    chat = ChatRequest(
        model=route_name, messages=[{"role": "user", "content": "hello"}], stream=stream
    )
    ingress = Ingress(
        request_id="req_trace_1",
        client_request_id="",
        started=time.perf_counter(),
        endpoint="chat",
        policy=policy,
        route=snapshot.resolve(route_name),
        route_name=route_name,
    )
    call = await inference_call_open(ingress=ingress, chat=chat)
    if stream:
        async for _ in call.run_stream(chat):
            pass
    else:
        await call.run_complete(chat)
    return call


async def test_request_spans_carry_genai_attributes_and_continue_the_client_trace(
    tracing_on, fake_upstream, transactional_db
):
    def catalog() -> str:
        provider = fake_provider(fake_upstream, ProviderKind.OPENAI, name="trace-openai")
        route("trace-chat", [model_on(provider, "trace-model", upstream="gpt-4o-mini")])
        return tenant_key()[2]

    raw = await sync_to_async(catalog)()
    token = tracing.client_trace_context.set((TRACEPARENT, "vendor=1"))
    try:
        call = await _one_request("trace-chat", raw)
    finally:
        tracing.client_trace_context.reset(token)
    assert tracing.tracing_flush()
    spans = _by_name(tracing_on.wait_for(5))

    (request,) = spans["chat trace-chat"]
    (admission,) = spans["gateway.admission"]
    (attempt,) = spans["gateway.attempt"]
    (upstream,) = spans["chat gpt-4o-mini"]
    (settlement,) = spans["gateway.settlement"]
    # The client's trace goes on: same trace id, the request span's parent is the client's.
    assert {s["trace_id"] for s in (request, admission, attempt, upstream, settlement)} == {
        TRACE_ID
    }
    assert request["parent"] == CLIENT_SPAN
    assert admission["parent"] == attempt["parent"] == settlement["parent"] == request["span_id"]
    assert upstream["parent"] == attempt["span_id"]
    assert request["kind"] == 2  # SERVER
    assert upstream["kind"] == 3  # CLIENT
    usage = call.settled_usage
    assert request["attributes"]["gen_ai.operation.name"] == "chat"
    assert request["attributes"]["gen_ai.request.model"] == "trace-chat"
    assert request["attributes"]["gen_ai.response.model"] == "trace-model"
    assert request["attributes"]["gen_ai.system"] == "openai"
    assert request["attributes"]["gen_ai.usage.input_tokens"] == usage.prompt_tokens > 0
    assert request["attributes"]["gen_ai.usage.output_tokens"] == usage.completion_tokens > 0
    assert request["attributes"]["gateway.cost_usd"] == format(call.cost, "f")
    assert upstream["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"
    assert upstream["attributes"]["server.address"] == "127.0.0.1"
    assert request["resource"]["service.name"] == "llm-gateway"
    # ... and to the upstream: its traceparent names the upstream span as parent.
    sent = fake_upstream.requests[-1].headers
    assert sent["traceparent"] == f"00-{TRACE_ID}-{upstream['span_id']}-01"
    assert sent["tracestate"] == "vendor=1"
    assert outbound_headers.get() is None
    # Nothing of the prompt on any span.
    assert "hello" not in repr(spans)


async def test_a_failed_attempt_is_an_error_span_and_the_fallback_its_sibling(
    tracing_on, fake_upstream, transactional_db
):
    def catalog() -> str:
        first = fake_provider(fake_upstream, ProviderKind.OPENAI, name="trace-first")
        second = fake_provider(fake_upstream, ProviderKind.OPENAI, name="trace-second")
        route("trace-fallback", [model_on(first, "trace-a"), model_on(second, "trace-b")])
        return tenant_key()[2]

    raw = await sync_to_async(catalog)()
    fake_upstream.script("500")
    await _one_request("trace-fallback", raw, stream=True)
    assert tracing.tracing_flush()
    spans = _by_name(tracing_on.wait_for(7))
    attempts = spans["gateway.attempt"]
    assert [a["attributes"]["gateway.provider"] for a in attempts] == [
        "trace-first",
        "trace-second",
    ]
    assert [a["status"] for a in attempts] == [2, 0]  # ERROR, UNSET
    assert attempts[0]["attributes"]["error.type"]
    (request,) = spans["chat trace-fallback"]
    assert request["attributes"]["gen_ai.response.model"] == "trace-b"
    assert request["attributes"]["gateway.fallbacks"] == 1
    # No client trace: a new one, every span in it.
    assert len({s["trace_id"] for group in spans.values() for s in group}) == 1
    assert request["parent"] == ""


@pytest.mark.parametrize(
    "garbage", ["00-zz-yy-01", "not a traceparent", f"00-{'0' * 32}-{CLIENT_SPAN}-01"]
)
def test_a_malformed_client_traceparent_starts_a_new_trace(tracing_on, garbage):
    span = tracing.request_span(endpoint="chat", model="m", request_id="r", traceparent=garbage)
    span.end()
    assert tracing.tracing_flush()
    (exported,) = tracing_on.wait_for(1)
    assert exported["parent"] == ""
    assert exported["trace_id"] not in (TRACE_ID, "0" * 32)


@pytest.mark.live_server_process
def test_live_gateway_exports_the_request_span_of_a_traced_client(live_gateway, receiver):
    provider = mock_provider("trace-live-mock")
    route("trace-live", [model_on(provider, "trace-live-model")])
    _, _, raw = tenant_key()
    env = {
        "GATEWAY_OTEL_ENABLED": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "GATEWAY_STATE_BACKEND": "memory",
        "GATEWAY_USAGE_WRITE_MODE": "direct",
    }
    with live_gateway(env=env) as base:
        response = httpx.post(
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {raw}", "traceparent": TRACEPARENT},
            json={"model": "trace-live", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        spans = _by_name(receiver.wait_for(5))
    (request,) = spans["chat trace-live"]
    assert request["trace_id"] == TRACE_ID
    assert request["parent"] == CLIENT_SPAN
    assert request["attributes"]["gen_ai.response.model"] == "trace-live-model"
    assert request["attributes"]["gen_ai.usage.output_tokens"] > 0
    assert request["attributes"]["gateway.request_id"] == response.headers["x-request-id"]
    assert {"gateway.admission", "gateway.attempt", "gateway.settlement"} <= set(spans)
