"""The ASGI application: inference paths on the thread-free handler, everything else on
Django's stock handler, client disconnects cancel the view and its upstream call, lifespan
shutdown closes pools. Requests go through `gateway_project.asgi.application` in-process."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from gateway_project.asgi import application, inference_http, path_matcher
from providers.adapters.base import ProviderConfig, adapters_close
from providers.http import http_session
from providers.models import ProviderKind
from routing.snapshot import snapshot_invalidate
from tenants.selectors import policy_cache_clear
from tests.factories import (
    ModelFactory,
    ProviderFactory,
    TenantFactory,
    api_key_create_for_test,
    route_create,
)
from tests.gateway_project.asgi_client import (
    AsgiCall,
    ThreadHopCountingLoop,
    asgi_request,
    thread_idents,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "asgi-chat", "messages": [{"role": "user", "content": "hello"}]}
BOUND_S = 10.0  # upper bound of every wait in this module (never reached when things work)


@pytest.fixture
def catalog():
    snapshot_invalidate()
    policy_cache_clear()
    provider = ProviderFactory(name="mock-asgi")
    model = ModelFactory(name="asgi-small", provider=provider)
    route_create(name="asgi-chat", models=[model])
    tenant = TenantFactory()
    _key, raw = api_key_create_for_test(tenant=tenant)
    yield {"auth": {"authorization": f"Bearer {raw}"}, "raw": raw}
    snapshot_invalidate()
    policy_cache_clear()


def run(coro_fn, *args):
    """Run a coroutine function on a fresh thread-hop-counting loop, then close the upstream
    pools it opened (as the lifespan shutdown does); return (result, loop)."""
    with asyncio.Runner(loop_factory=ThreadHopCountingLoop) as runner:
        loop = runner.get_loop()
        try:
            return runner.run(coro_fn(loop, *args)), loop
        finally:
            runner.run(adapters_close())


def test_inference_requests_start_no_thread_and_hand_no_work_to_one(catalog):
    async def scenario(loop: ThreadHopCountingLoop):
        # Warm-up: the first request loads the key policy and the catalog from the database.
        warm = await asgi_request(application, "GET", "/v1/models", headers=catalog["auth"])
        assert warm.status == 200, warm.body
        hops_before, threads_before = loop.executor_calls, thread_idents()
        statuses = []
        for _ in range(25):
            response = await asgi_request(application, "GET", "/v1/models", headers=catalog["auth"])
            statuses.append(response.status)
        return statuses, loop.executor_calls - hops_before, thread_idents() - threads_before

    (statuses, hops, new_threads), _loop = run(scenario)
    assert statuses == [200] * 25
    assert hops == 0
    assert new_threads == frozenset()


def test_chat_requests_start_no_thread_per_request(catalog):
    async def scenario(loop: ThreadHopCountingLoop):
        await asgi_request(
            application, "POST", "/v1/chat/completions", headers=catalog["auth"], json=CHAT
        )
        threads_before = thread_idents()
        statuses = []
        for stream in (False, True) * 10:
            response = await asgi_request(
                application,
                "POST",
                "/v1/chat/completions",
                headers=catalog["auth"],
                json={**CHAT, "stream": stream},
            )
            statuses.append(response.status)
        return statuses, thread_idents() - threads_before

    (statuses, new_threads), _loop = run(scenario)
    assert statuses == [200] * 20
    assert new_threads == frozenset()


def test_a_request_that_used_the_orm_hands_its_connection_back(catalog):
    """The cold request reads the database in the ORM's executor thread; after the response
    that thread holds no open connection (it went back to the pool), as with stock Django."""

    def open_connections() -> int:
        return sum(1 for c in connections.all(initialized_only=True) if c.connection is not None)

    def close_all() -> None:
        connections.close_all()

    async def scenario(loop: ThreadHopCountingLoop):
        # Start from a closed connection in the ORM's thread (an earlier test may have left
        # one open there), so this request is the one that opens it.
        await sync_to_async(close_all, thread_sensitive=True)()
        response = await asgi_request(application, "GET", "/v1/models", headers=catalog["auth"])
        return response.status, await sync_to_async(open_connections, thread_sensitive=True)()

    (status, still_open), _loop = run(scenario)
    assert status == 200
    assert still_open == 0


def test_admin_and_metrics_are_served_by_the_stock_handler(catalog):
    async def scenario(loop: ThreadHopCountingLoop):
        hops_before = loop.executor_calls
        login = await asgi_request(application, "GET", "/admin/login/")
        metrics = await asgi_request(
            application,
            "GET",
            "/metrics",
            headers={"authorization": f"Bearer {settings.GATEWAY_METRICS_TOKEN}"},
        )
        return login, metrics, loop.executor_calls - hops_before

    (login, metrics, hops), _loop = run(scenario)
    assert login.status == 200
    assert b"csrfmiddlewaretoken" in login.body  # the stock middleware chain ran (CSRF, sessions)
    assert metrics.status == 200
    assert b"django_http_requests" in metrics.body
    # The stock handler's thread per request: the probe sees it (so its zero above means none).
    assert hops > 0


def test_inference_handler_refuses_a_body_over_the_limit_with_413_before_reading_it(
    catalog, settings
):
    async def scenario(loop: ThreadHopCountingLoop):
        body = b"x" * (inference_http.max_body_bytes + 1)
        return await asgi_request(
            application, "POST", "/v1/chat/completions", headers=catalog["auth"], body=body
        )

    response, _loop = run(scenario)
    assert response.status == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert response.headers["x-request-id"]


# -- client disconnects --------------------------------------------------------------------
class HangingUpstream:
    """A loopback TCP server that reads a request and never answers (or answers one SSE event
    and then nothing); it records when the gateway closes the connection."""

    def __init__(self, *, first_event: bytes | None = None) -> None:
        self.first_event = first_event
        self.request_seen = asyncio.Event()
        self.closed_by_client = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.request_seen.set()
        if self.first_event is not None:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
                + f"{len(self.first_event):x}\r\n".encode()
                + self.first_event
                + b"\r\n"
            )
            await writer.drain()
        while await reader.read(65536):  # until EOF: the gateway dropped the connection
            pass
        self.closed_by_client.set()
        writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
def upstream_catalog():
    """Fills in the route to a hanging upstream; the test gives the upstream's URL."""
    snapshot_invalidate()
    policy_cache_clear()

    def make(base_url: str) -> dict:
        provider = ProviderFactory(
            name="hanging", kind=ProviderKind.OPENAI_COMPATIBLE, base_url=base_url, max_retries=0
        )
        model = ModelFactory(name="hang-small", provider=provider)
        route_create(name="hang-chat", models=[model])
        _key, raw = api_key_create_for_test(tenant=TenantFactory())
        return {"authorization": f"Bearer {raw}"}

    yield make
    snapshot_invalidate()
    policy_cache_clear()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_client_disconnect_cancels_the_view_and_the_upstream_call(upstream_catalog, stream):
    first_event = (
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},'
        b'"finish_reason":null}]}\n\n'
    )

    async def scenario(loop: ThreadHopCountingLoop):
        upstream = HangingUpstream(first_event=first_event if stream else None)
        base_url = await upstream.start()
        auth = await sync_to_async(upstream_catalog)(base_url)
        first_part = asyncio.Event()

        async def on_body(part: bytes) -> None:
            first_part.set()

        call = AsgiCall(
            application,
            "POST",
            "/v1/chat/completions",
            headers={**auth, "content-type": "application/json"},
            body=b'{"model":"hang-chat","stream":%s,"messages":[{"role":"user","content":"hi"}]}'
            % (b"true" if stream else b"false"),
            on_body=on_body,
        )
        served = asyncio.ensure_future(call.run())
        await asyncio.wait_for(upstream.request_seen.wait(), BOUND_S)
        if stream:
            await asyncio.wait_for(first_part.wait(), BOUND_S)
        call.disconnect()
        # The handler returns (the view was cancelled) and the upstream sees its connection
        # closed by the gateway (the upstream call was cancelled, not left hanging).
        await asyncio.wait_for(served, BOUND_S)
        await asyncio.wait_for(upstream.closed_by_client.wait(), BOUND_S)
        await upstream.stop()
        return call.response

    response, _loop = run(scenario)
    if stream:
        assert response.status == 200
        assert response.body.startswith(b"data: ")
    else:
        assert response.status == 0  # nothing was sent: the client had gone


def test_a_slow_sse_client_holds_back_the_stream_instead_of_buffering_it(catalog):
    """While the server has not taken one event (send is blocked, as uvicorn's is when the
    socket buffer is full), the handler pulls no further event from the view."""

    async def scenario(loop: ThreadHopCountingLoop):
        release = asyncio.Event()
        first_part = asyncio.Event()
        parts_seen = 0

        async def slow_client(part: bytes) -> None:
            nonlocal parts_seen
            parts_seen += 1
            if parts_seen == 1:
                first_part.set()
                await release.wait()

        call = AsgiCall(
            application,
            "POST",
            "/v1/chat/completions",
            headers={**catalog["auth"], "content-type": "application/json"},
            body=b'{"model":"asgi-chat","stream":true,"messages":[{"role":"user","content":"x"}]}',
            on_body=slow_client,
        )
        served = asyncio.ensure_future(call.run())
        await asyncio.wait_for(first_part.wait(), BOUND_S)
        # Give the loop plenty of turns: a buffering handler would drain the whole stream here.
        for _ in range(500):
            await asyncio.sleep(0)
        held = (parts_seen, call.complete.is_set())
        release.set()
        await asyncio.wait_for(served, BOUND_S)
        return held, parts_seen, call.response

    (held, parts_total, response), _loop = run(scenario)
    assert held == (1, False)
    assert parts_total > 2
    assert response.body.rstrip().endswith(b"data: [DONE]")


def test_lifespan_shutdown_closes_the_pooled_upstream_sessions():
    async def scenario(loop: ThreadHopCountingLoop):
        config = ProviderConfig(
            id=987_654, name="p", kind="openai_compatible", base_url="http://127.0.0.1:9/v1"
        )
        session = http_session(config)
        inbox: asyncio.Queue = asyncio.Queue()
        outbox: list[dict] = []
        await inbox.put({"type": "lifespan.startup"})
        await inbox.put({"type": "lifespan.shutdown"})

        async def send(message):
            outbox.append(message)

        await asyncio.wait_for(application({"type": "lifespan"}, inbox.get, send), BOUND_S)
        return session.closed, [m["type"] for m in outbox]

    (closed, messages), _loop = run(scenario)
    assert messages == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert closed


def test_inference_paths_are_matched_by_subtree_or_exactly():
    matches = path_matcher(("/v1/", "/api/v1/generate"))
    assert matches("/v1/chat/completions")
    assert matches("/v1/models")
    assert matches("/api/v1/generate")
    assert matches("/api/v1/generate/")
    assert not matches("/api/v1/generate-report")
    assert not matches("/v1")
    assert not matches("/admin/")
    assert not matches("/metrics")
