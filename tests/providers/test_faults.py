"""Every fault of the fake upstream becomes the right typed error, for every adapter, streamed
or not; timeouts fire by phase; secrets never leak into errors or logs."""

from __future__ import annotations

import logging
import traceback

import pytest

from providers.types import (
    ChatRequest,
    ContentFiltered,
    ContextTooLong,
    EmbeddingRequest,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from tests.fake_upstream.server import DEFAULT_REPLY
from tests.providers.support import adapter

KINDS = ["openai", "openai_compatible", "azure_openai", "anthropic"]

# Faults answered before the first body byte: the same typed error streamed or not.
PRE_ANSWER_FAULTS = [
    ("400", ProviderBadRequest, 400),
    ("404", ProviderBadRequest, 404),
    ("401", ProviderAuthError, 401),
    ("403", ProviderAuthError, 403),
    ("429", ProviderRateLimited, 429),
    ("500", ProviderUnavailable, 500),
    ("502", ProviderUnavailable, 502),
    ("503", ProviderUnavailable, 503),
    ("529", ProviderUnavailable, 529),
    ("context_length", ContextTooLong, 400),
    ("content_filter", ContentFiltered, 400),
    ("reset", ProviderUnavailable, None),
]


def chat(model: str, **fields) -> ChatRequest:
    return ChatRequest(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=64, **fields
    )


async def drain(adapter_, request: ChatRequest) -> list:
    return [chunk async for chunk in adapter_.stream_chat(request)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("fault", "error", "status"), PRE_ANSWER_FAULTS)
async def test_non_stream_fault_raises_its_typed_error(fake_upstream, kind, fault, error, status):
    with pytest.raises(error) as caught:
        await adapter(fake_upstream, kind).chat(chat(f"fault:{fault}"))

    assert type(caught.value) is error
    assert caught.value.upstream_status == status


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("fault", "error", "status"), PRE_ANSWER_FAULTS)
async def test_stream_fault_before_the_first_byte_raises_on_the_first_chunk(
    fake_upstream, kind, fault, error, status
):
    with pytest.raises(error) as caught:
        await drain(adapter(fake_upstream, kind), chat(f"fault:{fault}", stream=True))

    assert type(caught.value) is error


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        ("429:retry_after=2", 2.0),
        ("429:retry_after_ms=1500", 1.5),
        ("429:reset=6m0s", 360.0),
        ("429:reset=20ms", 0.02),
        ("429", None),
    ],
)
async def test_rate_limit_carries_the_upstream_retry_after(fake_upstream, kind, fault, retry_after):
    with pytest.raises(ProviderRateLimited) as caught:
        await adapter(fake_upstream, kind).chat(chat(f"fault:{fault}"))

    if retry_after is None:
        assert caught.value.retry_after is None
    else:
        assert caught.value.retry_after == pytest.approx(retry_after)


@pytest.mark.parametrize("kind", KINDS)
async def test_wrong_key_is_an_auth_error(fake_upstream, kind):
    with pytest.raises(ProviderAuthError):
        await adapter(fake_upstream, kind, secret="sk-wrong-key-0000000000").chat(chat("m"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["malformed", "cut"])
async def test_broken_json_body_is_a_protocol_error(fake_upstream, kind, fault):
    with pytest.raises(ProviderProtocolError):
        await adapter(fake_upstream, kind).chat(chat(f"fault:{fault}"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["cut:after=3", "no_done:after=3", "malformed:after=3"])
async def test_broken_stream_after_some_chunks_is_a_protocol_error(fake_upstream, kind, fault):
    received = []
    with pytest.raises(ProviderProtocolError):
        async for chunk in adapter(fake_upstream, kind).stream_chat(chat(f"fault:{fault}")):
            received.append(chunk)

    assert received  # the failure came after the stream had started


@pytest.mark.parametrize("kind", ["openai", "openai_compatible", "azure_openai"])
async def test_error_object_inside_an_openai_stream_is_raised(fake_upstream, kind):
    with pytest.raises(ProviderUnavailable):
        await drain(adapter(fake_upstream, kind), chat("fault:stream_error:after=3"))


@pytest.mark.parametrize("kind", KINDS)
async def test_slow_trickle_within_the_timeouts_completes(fake_upstream, kind):
    chunks = await drain(adapter(fake_upstream, kind), chat("fault:trickle:delay_ms=5"))

    assert "".join(c.content or "" for c in chunks) == DEFAULT_REPLY


@pytest.mark.parametrize("kind", KINDS)
async def test_scripted_faults_apply_in_order_then_answers_are_normal(fake_upstream, kind):
    fake_upstream.script("503", "429:retry_after=1")
    provider = adapter(fake_upstream, kind)

    with pytest.raises(ProviderUnavailable):
        await provider.chat(chat("m"))
    with pytest.raises(ProviderRateLimited):
        await provider.chat(chat("m"))
    assert (await provider.chat(chat("m"))).content == DEFAULT_REPLY


@pytest.mark.parametrize("kind", ["openai", "azure_openai"])
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("429:retry_after=3", ProviderRateLimited),
        ("500", ProviderUnavailable),
        ("cut", ProviderProtocolError),
    ],
)
async def test_embedding_faults_raise_typed_errors(fake_upstream, kind, fault, error):
    with pytest.raises(error):
        await adapter(fake_upstream, kind).embed(
            EmbeddingRequest(model=f"fault:{fault}", input=["a"])
        )


@pytest.mark.parametrize("kind", ["openai", "openai_compatible", "azure_openai"])
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("error_body", ProviderUnavailable),
        ("error_body:code=rate_limit_exceeded", ProviderRateLimited),
        ("error_body:code=context_length_exceeded", ContextTooLong),
    ],
)
async def test_error_object_in_a_200_answer_is_a_typed_error(fake_upstream, kind, fault, error):
    with pytest.raises(error):
        await adapter(fake_upstream, kind).chat(chat(f"fault:{fault}"))


# -- timeouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_first_byte_timeout_fires_when_headers_never_come(fake_upstream, kind):
    provider = adapter(fake_upstream, kind, first_byte_timeout_s=0.2)
    with pytest.raises(ProviderTimeout, match="response headers within 0.2s"):
        await provider.chat(chat("fault:hang_headers"))
    with pytest.raises(ProviderTimeout, match="response headers"):
        await drain(provider, chat("fault:hang_headers"))


@pytest.mark.parametrize("kind", KINDS)
async def test_slow_headers_within_the_first_byte_timeout_succeed(fake_upstream, kind):
    provider = adapter(fake_upstream, kind, first_byte_timeout_s=5.0)
    response = await provider.chat(chat("fault:slow_headers:delay_ms=50"))

    assert response.content == DEFAULT_REPLY


@pytest.mark.parametrize("kind", KINDS)
async def test_idle_timeout_fires_when_a_stream_stalls(fake_upstream, kind):
    provider = adapter(fake_upstream, kind, stream_idle_timeout_s=0.2)
    received = []
    with pytest.raises(ProviderTimeout, match="next stream chunk within 0.2s"):
        async for chunk in provider.stream_chat(chat("fault:hang_stream:after=3")):
            received.append(chunk)

    assert received


@pytest.mark.parametrize("kind", KINDS)
async def test_idle_timeout_fires_when_a_body_stalls(fake_upstream, kind):
    provider = adapter(fake_upstream, kind, stream_idle_timeout_s=0.2)
    with pytest.raises(ProviderTimeout, match="response body within 0.2s"):
        await provider.chat(chat("fault:hang_stream"))


@pytest.mark.parametrize("kind", KINDS)
async def test_total_timeout_caps_a_stream_that_keeps_trickling(fake_upstream, kind):
    provider = adapter(fake_upstream, kind, total_timeout_s=0.3, stream_idle_timeout_s=5.0)
    with pytest.raises(ProviderTimeout, match="within 0.3s"):
        await drain(provider, chat("fault:trickle:delay_ms=100"))


async def test_total_timeout_caps_the_wait_for_headers(fake_upstream):
    provider = adapter(fake_upstream, "openai", total_timeout_s=0.2, first_byte_timeout_s=30.0)
    with pytest.raises(ProviderTimeout, match="within 0.2s"):
        await provider.chat(chat("fault:hang_headers"))


async def test_connect_timeout_fires_when_the_upstream_never_accepts(
    fake_upstream, unaccepting_port
):
    provider = adapter(
        fake_upstream,
        "openai",
        base_url=f"http://127.0.0.1:{unaccepting_port}/v1",
        connect_timeout_s=0.2,
    )
    with pytest.raises(ProviderTimeout, match="connection within 0.2s"):
        await provider.chat(chat("m"))


async def test_connection_refused_is_unavailable(fake_upstream, closed_port):
    provider = adapter(fake_upstream, "anthropic", base_url=f"http://127.0.0.1:{closed_port}/v1")
    with pytest.raises(ProviderUnavailable, match="cannot be reached"):
        await provider.chat(chat("m"))
    with pytest.raises(ProviderUnavailable):
        await drain(provider, chat("m"))


# -- secrets -----------------------------------------------------------------------------

SECRET = "sk-live-TOPSECRET-abcdef0123456789"


@pytest.mark.parametrize("kind", KINDS)
async def test_secret_never_appears_in_errors_or_logs(fake_upstream, kind, caplog):
    caplog.set_level(logging.DEBUG)
    fake_upstream.api_key = SECRET
    provider = adapter(fake_upstream, kind, secret=SECRET)
    wrong = adapter(fake_upstream, kind, secret=SECRET + "-revoked")
    errors: list[ProviderError] = []
    faults = [
        "400:echo_key=1",
        "404:echo_key=1",
        "429:echo_key=1",
        "500:echo_key=1",
        "529:echo_key=1",
        "context_length:echo_key=1",
        "content_filter:echo_key=1",
        "malformed",
        "cut",
        "reset",
    ]
    for fault in faults:
        for call in (provider.chat, lambda r, p=provider: drain(p, r)):
            with pytest.raises(ProviderError) as caught:
                await call(chat(f"fault:{fault}"))
            errors.append(caught.value)
    with pytest.raises(ProviderAuthError) as caught:
        await wrong.chat(chat("m"))
    errors.append(caught.value)

    # The fake did quote the key back; none of it may reach an error or a log line.
    assert any(
        fault.params.get("echo_key") for fault in (r.fault for r in fake_upstream.requests) if fault
    )
    assert any("***" in error.detail for error in errors)  # redacted, not dropped
    for error in errors:
        rendered = (
            "".join(traceback.format_exception(error)) + repr(error) + error.message + error.detail
        )
        assert "TOPSECRET" not in rendered, rendered
    for record in caplog.records:
        text = record.getMessage() + " " + " ".join(str(v) for v in vars(record).values())
        assert "TOPSECRET" not in text
