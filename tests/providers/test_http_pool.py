"""Connection handling of the one outbound HTTP module: keep-alive reuse, pools per provider
and per event loop, and closing a stream closing its upstream connection at once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from providers import http
from providers.adapters.base import adapter_for, adapters_close
from providers.types import ChatRequest
from tests.fake_upstream.server import DEFAULT_REPLY
from tests.providers.support import adapter, provider_config, wait_until

KINDS = ["openai", "openai_compatible", "azure_openai", "anthropic"]
CLOSE_WITHIN_S = 0.1


def chat(model: str = "m") -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=64)


@pytest.mark.parametrize("kind", KINDS)
async def test_sequential_requests_reuse_one_connection(fake_upstream, kind):
    provider = adapter(fake_upstream, kind)
    for _ in range(3):
        assert (await provider.chat(chat())).content == DEFAULT_REPLY
        chunks = [c async for c in provider.stream_chat(chat())]
        assert chunks[-1].usage is not None

    assert fake_upstream.connections_opened == 1
    assert len({r.peer_port for r in fake_upstream.requests}) == 1


async def test_an_error_answer_keeps_the_connection_reusable(fake_upstream):
    provider = adapter(fake_upstream, "openai")
    for fault in ("429:retry_after=1", "500", "400"):
        with contextlib.suppress(Exception):
            await provider.chat(chat(f"fault:{fault}"))
    await provider.chat(chat())

    assert fake_upstream.connections_opened == 1


async def test_each_provider_has_its_own_pool(fake_upstream):
    await adapter(fake_upstream, "openai").chat(chat())
    await adapter(fake_upstream, "openai").chat(chat())

    assert fake_upstream.connections_opened == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_closing_a_stream_closes_the_upstream_connection_at_once(fake_upstream, kind):
    stream = adapter(fake_upstream, kind).stream_chat(chat("fault:trickle:delay_ms=50"))
    first = await anext(stream)
    assert first is not None
    assert fake_upstream.open_connections == 1

    await stream.aclose()

    assert await wait_until(lambda: fake_upstream.open_connections == 0, timeout_s=CLOSE_WITHIN_S)


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelling_the_consumer_closes_the_upstream_connection(fake_upstream, kind):
    provider = adapter(fake_upstream, kind)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream_chat(chat("fault:hang_stream:after=2")):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    assert await wait_until(lambda: fake_upstream.open_connections == 0, timeout_s=CLOSE_WITHIN_S)


async def test_a_timed_out_request_does_not_leave_its_connection_open(fake_upstream):
    provider = adapter(fake_upstream, "openai", first_byte_timeout_s=0.1)
    with pytest.raises(Exception, match="headers"):
        await provider.chat(chat("fault:hang_headers"))

    assert await wait_until(lambda: fake_upstream.open_connections == 0, timeout_s=1.0)


async def test_http_clients_close_closes_pooled_connections(fake_upstream):
    config = provider_config(fake_upstream, "openai")
    await adapter_for(config).chat(chat())
    assert fake_upstream.open_connections == 1

    await adapters_close()

    assert await wait_until(lambda: fake_upstream.open_connections == 0, timeout_s=1.0)
    # The next call builds a fresh pool.
    assert (await adapter_for(config).chat(chat())).content == DEFAULT_REPLY


async def test_changed_pool_settings_build_a_new_session(fake_upstream):
    first = http.http_session(provider_config(fake_upstream, "openai", id=1))
    same = http.http_session(provider_config(fake_upstream, "openai", id=1, name="renamed"))
    other = http.http_session(
        provider_config(fake_upstream, "openai", id=1, options={"max_connections": 4})
    )

    assert first is same
    assert other is not first


def test_a_new_event_loop_gets_its_own_session(fake_upstream_thread):
    """Sessions are bound to their loop: a provider used from two loops in turn (tests,
    async_to_sync in admin actions) keeps working on both."""
    provider = adapter(fake_upstream_thread, "openai")

    async def call_and_report() -> object:
        await provider.chat(chat())
        return http.http_session(provider.config)

    first = asyncio.run(call_and_report())
    second = asyncio.run(call_and_report())

    assert first is not second
    assert first.closed  # abandoned with its loop, not leaked as an open connector
    assert len(fake_upstream_thread.requests) == 2

    async def close() -> None:
        await http.http_clients_close()

    asyncio.run(close())
