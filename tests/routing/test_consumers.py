"""The /ws/v1/chat consumer at unit level (channels' WebsocketCommunicator, in-process): auth,
request -> deltas -> done, errors, cancel, concurrency bound, one usage event per request."""

from __future__ import annotations

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from providers.models import ProviderKind
from routing.ws_urls import websocket_urlpatterns
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

APP = URLRouter(websocket_urlpatterns)
TIMEOUT = 5


@pytest.fixture
def catalog(settings):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    settings.GATEWAY_WS_MAX_CONCURRENT_REQUESTS = 2
    fast = mock_provider("mock-ws")
    # 200 tokens over 10 s: slow enough to cancel mid-way, bounded if something goes wrong.
    slow = mock_provider("mock-ws-slow", latency_ms=10_000, reply_tokens=200)
    route("ws-chat", [model_on(fast, "ws-fast")])
    route("ws-slow", [model_on(slow, "ws-slow-model")])
    tenant_id, key_id, raw = tenant_key()
    caches_clear()
    return {"raw": raw, "tenant_id": tenant_id}


def _request(request_id: str, model: str = "ws-chat", **fields) -> dict:
    return {
        "type": "request",
        "id": request_id,
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        **fields,
    }


async def _connect(headers: list[tuple[bytes, bytes]] | None = None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(APP, "/ws/v1/chat", headers=headers or [])
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


async def _authed(raw: str) -> WebsocketCommunicator:
    communicator = await _connect([(b"x-api-key", raw.encode())])
    assert await communicator.receive_json_from(TIMEOUT) == {"type": "auth_ok"}
    return communicator


async def _until_terminal(communicator: WebsocketCommunicator, request_id: str) -> list[dict]:
    """Messages of one request up to its done/error (bounded in count and time)."""
    messages = []
    for _ in range(1000):
        message = await communicator.receive_json_from(TIMEOUT)
        if message.get("id") != request_id:
            continue
        messages.append(message)
        if message["type"] in ("done", "error"):
            return messages
    raise AssertionError("no terminal message within 1000 messages")


async def test_request_streams_deltas_then_done_with_usage_and_cost(catalog):
    communicator = await _authed(catalog["raw"])
    await communicator.send_json_to(_request("r1"))
    messages = await _until_terminal(communicator, "r1")
    deltas, done = messages[:-1], messages[-1]
    assert deltas and all(m["type"] == "delta" for m in deltas)
    assert done["type"] == "done"
    assert done["finish_reason"] == "stop"
    assert done["model"] == "ws-fast"
    assert done["usage"]["completion_tokens"] == len(deltas)
    assert done["usage"]["total_tokens"] > done["usage"]["completion_tokens"]
    assert float(done["cost_usd"]) > 0
    [event] = await usage_events_wait(1)
    assert event.outcome == "ok"
    assert event.endpoint == "ws_chat"
    assert event.request_id == done["request_id"]
    assert str(event.cost_usd.normalize()) == str(
        type(event.cost_usd)(done["cost_usd"]).normalize()
    )
    await communicator.disconnect()


async def test_key_in_the_first_message_authenticates(catalog):
    communicator = await _connect()
    await communicator.send_json_to({"type": "auth", "api_key": catalog["raw"]})
    assert await communicator.receive_json_from(TIMEOUT) == {"type": "auth_ok"}
    await communicator.send_json_to(_request("r1"))
    assert (await _until_terminal(communicator, "r1"))[-1]["type"] == "done"
    await communicator.disconnect()


async def test_bearer_header_authenticates(catalog):
    communicator = await _connect([(b"authorization", f"Bearer {catalog['raw']}".encode())])
    assert await communicator.receive_json_from(TIMEOUT) == {"type": "auth_ok"}
    await communicator.disconnect()


async def test_bad_key_gets_an_error_and_close_4401(catalog):
    communicator = await _connect([(b"x-api-key", b"gw-wrong")])
    message = await communicator.receive_json_from(TIMEOUT)
    assert message["type"] == "error"
    assert message["error"]["code"] == "invalid_api_key"
    assert set(message["error"]) == {"message", "type", "param", "code"}
    assert (await communicator.receive_output(TIMEOUT)) == {"type": "websocket.close", "code": 4401}


async def test_no_key_in_time_closes_4401(catalog, settings):
    settings.GATEWAY_WS_AUTH_TIMEOUT_SECONDS = 0.2
    communicator = await _connect()
    message = await communicator.receive_json_from(TIMEOUT)
    assert message["error"]["code"] == "auth_timeout"
    assert (await communicator.receive_output(TIMEOUT))["code"] == 4401


async def test_request_before_auth_is_refused_and_leaves_no_row(catalog):
    communicator = await _connect()
    await communicator.send_json_to(_request("r1"))
    message = await communicator.receive_json_from(TIMEOUT)
    assert message == {
        "type": "error",
        "id": "r1",
        "error": {
            "message": "Authenticate first",
            "type": "authentication_error",
            "param": None,
            "code": "missing_api_key",
        },
    }
    # No key, no row: a stranger writes nothing into a tenant's records.
    assert await usage_events_wait(0) == []
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("message", "status", "code"),
    [
        (_request("r1", model="no-such-model"), 404, "model_not_found"),
        (_request("r1", messages=[]), 400, "invalid_value"),
        (_request("r1", temperature=9), 400, "invalid_value"),
    ],
    ids=["unknown-model", "no-messages", "bad-temperature"],
)
async def test_invalid_requests_get_openai_errors_and_one_usage_event(
    catalog, message, status, code
):
    communicator = await _authed(catalog["raw"])
    await communicator.send_json_to(message)
    [reply] = await _until_terminal(communicator, "r1")
    assert reply["type"] == "error"
    assert reply["error"]["code"] == code
    [event] = await usage_events_wait(1)
    assert (event.outcome, event.status_code) == ("rejected", status)
    assert event.tenant_id == catalog["tenant_id"]
    await communicator.disconnect()


async def test_malformed_frames_get_errors_and_keep_the_socket(catalog):
    communicator = await _authed(catalog["raw"])
    await communicator.send_to(text_data="{nope")
    assert (await communicator.receive_json_from(TIMEOUT))["error"]["code"] == "invalid_message"
    await communicator.send_json_to({"type": "shout"})
    assert (await communicator.receive_json_from(TIMEOUT))["error"]["code"] == "invalid_message"
    await communicator.send_json_to({"type": "request", "model": "ws-chat", "messages": []})
    assert (await communicator.receive_json_from(TIMEOUT))["error"]["code"] == "invalid_id"
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(TIMEOUT) == {"type": "pong"}
    await communicator.disconnect()


async def test_cancel_stops_the_request_and_settles_the_partial_cost(catalog):
    communicator = await _authed(catalog["raw"])
    await communicator.send_json_to(_request("slow", model="ws-slow"))
    received = []
    for _ in range(3):
        received.append(await communicator.receive_json_from(TIMEOUT))
    assert [m["type"] for m in received] == ["delta", "delta", "delta"]
    await communicator.send_json_to({"type": "cancel", "id": "slow"})
    messages = await _until_terminal(communicator, "slow")
    done = messages[-1]
    assert done["type"] == "done" and done["finish_reason"] == "cancelled"
    produced = len(received) + len(messages) - 1
    assert 3 <= produced < 200
    [event] = await usage_events_wait(1)
    assert event.outcome == "cancelled"
    assert event.error_type == "client_cancelled"
    assert event.tokens_out == done["usage"]["completion_tokens"]
    assert 3 <= event.tokens_out < 200
    assert event.cost_usd > 0
    # The socket stays usable after a cancel.
    await communicator.send_json_to(_request("next"))
    assert (await _until_terminal(communicator, "next"))[-1]["type"] == "done"
    await communicator.disconnect()


async def test_concurrent_requests_are_bounded_per_connection(catalog):
    communicator = await _authed(catalog["raw"])
    await communicator.send_json_to(_request("a", model="ws-slow"))
    await communicator.send_json_to(_request("b", model="ws-slow"))
    streaming: set[str] = set()
    for _ in range(100):
        streaming.add((await communicator.receive_json_from(TIMEOUT))["id"])
        if streaming == {"a", "b"}:
            break
    await communicator.send_json_to(_request("c", model="ws-slow"))
    refused = None
    for _ in range(100):
        message = await communicator.receive_json_from(TIMEOUT)
        if message["id"] == "c":
            refused = message
            break
    assert refused is not None and refused["type"] == "error"
    assert refused["error"]["code"] == "too_many_concurrent_requests"
    await communicator.send_json_to(_request("a", model="ws-slow"))
    for _ in range(100):
        message = await communicator.receive_json_from(TIMEOUT)
        if message["type"] == "error" and message["id"] == "a":
            assert message["error"]["code"] == "duplicate_id"
            break
    else:
        raise AssertionError("duplicate id was not refused")
    await communicator.disconnect()
    events = await usage_events_wait(4)
    outcomes = sorted((e.outcome, e.error_type) for e in events)
    assert outcomes == [
        ("cancelled", "client_disconnected"),
        ("cancelled", "client_disconnected"),
        ("rejected", "duplicate_id"),
        ("rejected", "too_many_concurrent_requests"),
    ]


async def test_disconnect_cancels_the_upstream_call(settings, fake_upstream):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    await _acreate_fake_route(fake_upstream)
    _, _, raw = await _atenant_key()
    communicator = await _authed(raw)
    await communicator.send_json_to(_request("hang", model="ws-fake"))
    assert await wait_until(lambda: fake_upstream.open_connections >= 1)
    await communicator.disconnect()
    assert await wait_until(lambda: fake_upstream.open_connections == 0, timeout_s=2)
    [event] = await usage_events_wait(1)
    assert event.outcome == "cancelled" and event.error_type == "client_disconnected"


async def _acreate_fake_route(fake):
    from asgiref.sync import sync_to_async

    def build():
        provider = fake_provider(fake, ProviderKind.OPENAI)
        fake.script("hang_stream:after=2")
        route("ws-fake", [model_on(provider, "ws-fake-model")])
        caches_clear()
        return provider

    return await sync_to_async(build)()


async def _atenant_key():
    from asgiref.sync import sync_to_async

    return await sync_to_async(tenant_key)()
