"""Issue 14, item 6: the websocket guard (gateway_project.ws_guard) in front of /ws/v1/chat,
through the project's ASGI application: size and count limits before authentication, a size
limit after it, and deeply nested JSON answered with an error message (the connection stays
usable) instead of a RecursionError that drops it."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from gateway_project.asgi import application
from gateway_project.ws_guard import json_depth_exceeds
from tests.routing.support import tenant_key

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 5


@pytest.fixture
def limits(settings):
    settings.GATEWAY_WS_PREAUTH_MAX_MESSAGES = 3
    settings.GATEWAY_WS_PREAUTH_MAX_BYTES = 16 * 1024
    settings.GATEWAY_WS_MAX_MESSAGE_BYTES = 64 * 1024
    settings.GATEWAY_WS_MAX_JSON_DEPTH = 64
    return settings


async def _connect(headers=None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/v1/chat", headers=headers or [])
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


async def _closed_with(communicator: WebsocketCommunicator, code: int, error_code: str) -> None:
    error = await communicator.receive_json_from(timeout=TIMEOUT)
    assert error["type"] == "error" and error["error"]["code"] == error_code
    closing = await communicator.receive_output(timeout=TIMEOUT)
    assert closing == {"type": "websocket.close", "code": code}


async def test_a_large_frame_before_authentication_closes_the_connection(limits):
    communicator = await _connect()
    await communicator.send_to(text_data=json.dumps({"type": "auth", "api_key": "x" * 20_000}))
    await _closed_with(communicator, 1008, "message_too_large")
    await communicator.disconnect()


async def test_too_many_messages_before_authentication_close_the_connection(limits):
    communicator = await _connect()
    for _ in range(3):
        await communicator.send_json_to({"type": "ping"})
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "pong"
    await communicator.send_json_to({"type": "ping"})
    await _closed_with(communicator, 1008, "too_many_unauthenticated_messages")
    await communicator.disconnect()


async def test_deeply_nested_json_is_answered_with_an_error_and_the_connection_lives_on(limits):
    communicator = await _connect()
    # 5,000 levels (10 KB): json.loads would raise RecursionError in the consumer.
    await communicator.send_to(text_data="[" * 5_000 + "]" * 5_000)
    error = await communicator.receive_json_from(timeout=TIMEOUT)
    assert error["type"] == "error" and error["error"]["code"] == "invalid_message"
    assert "nested" in error["error"]["message"]
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "pong"
    await communicator.disconnect()


async def test_after_authentication_frames_are_capped_and_depth_still_checked(limits):
    _tenant, _key, raw = await sync_to_async(tenant_key)()
    communicator = await _connect(headers=[(b"authorization", f"Bearer {raw}".encode())])
    assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "auth_ok"
    # More messages than the pre-auth allowance, and bigger than its frame limit, are fine.
    for _ in range(5):
        await communicator.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * 30_000}))
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "pong"
    nested = '{"type": "request", "messages": ' + "[" * 20_000 + "]" * 20_000 + "}"
    await communicator.send_to(text_data=nested)
    error = await communicator.receive_json_from(timeout=TIMEOUT)
    assert error["error"]["code"] == "invalid_message"
    await communicator.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * 70_000}))
    await _closed_with(communicator, 1009, "message_too_large")
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("text", "too_deep"),
    [
        ("[" * 64 + "]" * 64, False),
        ("[" * 65 + "]" * 65, True),
        ('{"a": "' + "[" * 500 + '"}', False),  # brackets inside a string do not nest
        ('["\\"' + "[" * 100 + '"]', False),  # nor after an escaped quote
        ("[1, [2, [3]]]" * 1000, False),  # many brackets, shallow
        ("[" * 100, True),  # unbalanced and deep: refused before the decoder
    ],
)
def test_json_depth_is_measured_without_parsing(text, too_deep):
    assert json_depth_exceeds(text, 64) is too_deep


async def test_an_address_with_too_many_auth_failures_is_refused_at_the_handshake(settings):
    from tenants.state import state_store_set
    from tenants.state.memory import MemoryStateStore
    from tenants.unauth import unauth_suspects_clear

    settings.GATEWAY_UNAUTH_PER_IP_PER_MINUTE = 2
    # The per-address count lives in a fixed one-minute window: start clear of its edge, or
    # the failures and the refused attempt could fall into two windows.
    while time.time() % 60 > 50:
        await asyncio.sleep(0.5)
    state_store_set(MemoryStateStore())
    unauth_suspects_clear()
    _tenant, _key, raw = await sync_to_async(tenant_key)()

    def communicator_for(key: str) -> WebsocketCommunicator:
        communicator = WebsocketCommunicator(
            application, "/ws/v1/chat", headers=[(b"authorization", f"Bearer {key}".encode())]
        )
        communicator.scope["client"] = ("203.0.113.8", 40000)
        return communicator

    try:
        # A valid key first: known to the process from now on.
        known = communicator_for(raw)
        assert (await known.connect(timeout=TIMEOUT))[0]
        assert (await known.receive_json_from(timeout=TIMEOUT))["type"] == "auth_ok"
        await known.disconnect()
        for n in range(2):
            bad = communicator_for(f"gw-bad-{n}")
            assert (await bad.connect(timeout=TIMEOUT))[0]
            error = await bad.receive_json_from(timeout=TIMEOUT)
            assert error["error"]["type"] == "authentication_error"
            await bad.disconnect()
        refused = communicator_for("gw-bad-again")
        connected, code = await refused.connect(timeout=TIMEOUT)
        assert not connected and code == 1008
        # The known key still gets in from that address.
        again = communicator_for(raw)
        assert (await again.connect(timeout=TIMEOUT))[0]
        assert (await again.receive_json_from(timeout=TIMEOUT))["type"] == "auth_ok"
        await again.disconnect()
    finally:
        unauth_suspects_clear()
        state_store_set(None)
