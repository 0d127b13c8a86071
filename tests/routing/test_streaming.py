"""Streaming behaviour, in-process through the real ASGI application: early failures get a
real status, mid-stream deaths end in-band and cleanly, keep-alive comments fill upstream
silences, a slow client is not buffered for, and a client that goes away cancels the
upstream and leaves a usage event with the tokens actually produced."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway_project.asgi import application
from providers.models import ProviderKind
from tests.routing.support import (
    caches_clear,
    fake_provider,
    mock_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)


class AsgiClient:
    """One HTTP request against the ASGI app, the way uvicorn drives it: the body, then
    `receive()` parks until the client goes away. `stall_after` makes `send` block after
    that many body parts, like a client that stopped reading (the server's writes wait)."""

    def __init__(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        raw = orjson.dumps(body)
        all_headers = {
            "host": "testserver",
            "content-type": "application/json",
            "content-length": str(len(raw)),
            **headers,
        }
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        self._body = raw
        self._body_sent = False
        self.gone = asyncio.Event()
        self.complete = asyncio.Event()
        self.first_part = asyncio.Event()
        self.unstall = asyncio.Event()
        self.stall_after: int | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.task: asyncio.Task | None = None

    async def _receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if self.gone.is_set():
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            return
        if message.get("body"):
            self.parts.append(message["body"])
            self.first_part.set()
            if self.stall_after is not None and len(self.parts) >= self.stall_after:
                await self.unstall.wait()
        if not message.get("more_body", False):
            self.complete.set()

    def start(self) -> AsgiClient:
        self.task = asyncio.get_running_loop().create_task(
            application(self.scope, self._receive, self._send)
        )
        return self

    async def finished(self, timeout_s: float = 10.0) -> None:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), timeout_s)

    def disconnect(self) -> None:
        self.gone.set()
        self.unstall.set()

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)


def _chat(model: str, **fields) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **fields}


@pytest.fixture
def mock_catalog(settings):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    fast = mock_provider("mock-stream", reply_tokens=2000)
    slow = mock_provider("mock-stream-slow", latency_ms=20_000, reply_tokens=400)
    route("long-reply", [model_on(fast, "long-reply-model")])
    route("slow-reply", [model_on(slow, "slow-reply-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return {"auth": {"authorization": f"Bearer {raw}"}}


@pytest.fixture
def fake_catalog(settings, fake_upstream):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    provider = fake_provider(fake_upstream, ProviderKind.OPENAI, stream_idle_timeout_s=10.0)
    route("fake-chat", [model_on(provider, "fake-chat-model")])
    anthropic = fake_provider(fake_upstream, ProviderKind.ANTHROPIC)
    route("fake-claude", [model_on(anthropic, "fake-claude-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return {"auth": {"authorization": f"Bearer {raw}"}, "fake": fake_upstream}


def _data_events(body: bytes) -> list[bytes]:
    return [line[len(b"data: ") :] for line in body.split(b"\n") if line.startswith(b"data: ")]


async def test_slow_client_is_not_buffered_for(mock_catalog):
    """The client stops reading after 5 parts of a 2,000-token reply: the gateway pulls only
    a bounded number of chunks ahead, then waits; nothing piles up in memory."""
    client = AsgiClient(
        "/v1/chat/completions", _chat("long-reply", stream=True), mock_catalog["auth"]
    )
    client.stall_after = 5
    client.start()
    assert await wait_until(lambda: len(client.parts) >= 5)
    # Let every runnable task run as far as it can (the mock upstream never waits on I/O, so
    # an unbounded reader would drain all 2,000 tokens here).
    for _ in range(500):
        await asyncio.sleep(0)
    client.disconnect()
    await client.finished()
    [event] = await usage_events_wait(1)
    assert event.outcome == "cancelled"
    # Pulled from upstream = sent to the client + the pump's queue + one in hand on each side.
    assert 5 <= event.tokens_out <= 5 + 8
    assert event.usage_estimated is True


async def test_client_disconnect_cancels_and_records_the_tokens_produced(mock_catalog):
    client = AsgiClient(
        "/v1/chat/completions", _chat("slow-reply", stream=True), mock_catalog["auth"]
    )
    client.start()
    assert await wait_until(lambda: len(_data_events(client.body)) >= 4, timeout_s=10)
    client.disconnect()
    await client.finished()
    delivered = "".join(
        (orjson.loads(e)["choices"][0]["delta"].get("content") or "")
        for e in _data_events(client.body)
    )
    [event] = await usage_events_wait(1)
    assert event.outcome == "cancelled"
    assert event.error_type == "client_disconnected"
    assert event.status_code == 499
    # What the client got, give or take the chunks in flight when it left (of 400).
    assert len(delivered.split()) <= event.tokens_out <= len(delivered.split()) + 8
    assert event.cost_usd > 0


async def test_keepalive_comments_fill_upstream_silence(settings, fake_catalog):
    settings.GATEWAY_SSE_KEEPALIVE_SECONDS = 0.05
    fake_catalog["fake"].script("trickle:delay_ms=400")
    client = AsgiClient(
        "/v1/chat/completions", _chat("fake-chat", stream=True), fake_catalog["auth"]
    )
    client.start()
    await client.finished(timeout_s=30)
    assert client.status == 200
    assert b": keep-alive\n\n" in client.parts
    events = _data_events(client.body)
    assert events[-1] == b"[DONE]"
    text = "".join(
        (orjson.loads(e)["choices"][0]["delta"].get("content") or "")
        for e in events[:-1]
        if orjson.loads(e)["choices"]
    )
    assert text == fake_catalog["fake"].reply_text
    [event] = await usage_events_wait(1)
    assert event.outcome == "ok"


async def test_no_keepalive_while_chunks_flow(settings, mock_catalog):
    settings.GATEWAY_SSE_KEEPALIVE_SECONDS = 5
    client = AsgiClient(
        "/v1/chat/completions", _chat("long-reply", stream=True), mock_catalog["auth"]
    )
    client.start()
    await client.finished()
    assert b": keep-alive\n\n" not in client.parts
    assert _data_events(client.body)[-1] == b"[DONE]"


@pytest.mark.parametrize(
    "fault", ["500", "429:retry_after=60", "reset", "hang_headers"], ids=lambda f: f.split(":")[0]
)
async def test_stream_that_fails_before_any_output_gets_a_real_status(
    settings, fake_catalog, fault
):
    settings.GATEWAY_SSE_KEEPALIVE_SECONDS = 10
    if fault == "hang_headers":
        from providers.models import Provider

        await Provider.objects.filter(kind=ProviderKind.OPENAI).aupdate(first_byte_timeout_s=0.3)
        caches_clear()
    fake_catalog["fake"].script(fault)
    client = AsgiClient(
        "/v1/chat/completions", _chat("fake-chat", stream=True), fake_catalog["auth"]
    )
    client.start()
    await client.finished(timeout_s=30)
    expected = {"500": 502, "429": 429, "reset": 502, "hang_headers": 504}[fault.split(":")[0]]
    assert client.status == expected
    body = orjson.loads(client.body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    [event] = await usage_events_wait(1)
    assert (event.outcome, event.status_code) == ("error", expected)


async def test_upstream_dying_mid_stream_ends_in_band_and_cleanly(fake_catalog):
    fake_catalog["fake"].script("cut:after=3")
    client = AsgiClient(
        "/v1/chat/completions", _chat("fake-chat", stream=True), fake_catalog["auth"]
    )
    client.start()
    await client.finished(timeout_s=30)
    assert client.status == 200
    events = _data_events(client.body)
    assert events[-1] == b"[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "upstream_error"
    assert b"Traceback" not in client.body
    [event] = await usage_events_wait(1)
    assert event.outcome == "error"
    assert event.tokens_out >= 1


async def test_anthropic_stream_dying_mid_way_ends_with_an_error_event(fake_catalog):
    fake_catalog["fake"].script("cut:after=4")
    body = {
        "model": "fake-chat",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
    client = AsgiClient("/v1/messages", body, fake_catalog["auth"])
    client.start()
    await client.finished(timeout_s=30)
    assert client.status == 200
    blocks = [b for b in client.body.decode().split("\n\n") if b.strip()]
    assert blocks[0].startswith("event: message_start")
    assert blocks[-1].startswith("event: error")
    error = orjson.loads(blocks[-1].split("data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "message_stop" not in client.body.decode()
    [event] = await usage_events_wait(1)
    assert event.outcome == "error" and event.endpoint == "messages"


async def test_generate_streams_text_then_a_final_event_with_usage(mock_catalog):
    body = {"model": "long-reply", "prompt": "hello", "max_tokens": 5, "stream": True}
    client = AsgiClient("/api/v1/generate", body, mock_catalog["auth"])
    client.start()
    await client.finished()
    events = _data_events(client.body)
    assert events[-1] == b"[DONE]"
    final = orjson.loads(events[-2])
    assert final["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == 5
    text = "".join(orjson.loads(e)["text"] for e in events[:-2])
    assert len(text.split()) == 5
    [event] = await usage_events_wait(1)
    assert (event.endpoint, event.outcome, event.tokens_out) == ("generate", "ok", 5)
