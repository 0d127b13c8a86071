"""The Azure OpenAI adapter over real HTTP against the fake upstream."""

from __future__ import annotations

from providers.types import ChatRequest, EmbeddingRequest
from tests.fake_upstream.server import DEFAULT_REPLY
from tests.providers.support import adapter


def chat(**fields) -> ChatRequest:
    fields.setdefault("model", "my-gpt4o-deployment")
    fields.setdefault("messages", [{"role": "user", "content": "hello"}])
    return ChatRequest(**fields)


async def test_chat_goes_to_the_deployment_url_with_api_version_and_api_key(fake_upstream):
    response = await adapter(fake_upstream, "azure_openai").chat(chat())

    received = fake_upstream.last_request
    assert received.api == "azure"
    assert received.path == "/openai/deployments/my-gpt4o-deployment/chat/completions"
    assert received.query == {"api-version": "2024-10-21"}
    assert received.headers["api-key"] == fake_upstream.api_key
    assert "authorization" not in received.headers
    assert "model" not in received.body
    assert response.content == DEFAULT_REPLY


async def test_api_version_and_bearer_auth_come_from_options(fake_upstream):
    azure = adapter(
        fake_upstream,
        "azure_openai",
        base_url=fake_upstream.azure_base_url + "/openai/",
        options={"api_version": "2025-01-01-preview", "auth": "bearer"},
    )
    await azure.chat(chat())

    received = fake_upstream.last_request
    assert received.query == {"api-version": "2025-01-01-preview"}
    assert received.headers["authorization"] == "Bearer " + fake_upstream.api_key
    assert "api-key" not in received.headers


async def test_stream_reports_usage_and_raw_chunks(fake_upstream):
    chunks = [
        c async for c in adapter(fake_upstream, "azure_openai").stream_chat(chat(stream=True))
    ]

    assert "".join(c.content or "" for c in chunks) == DEFAULT_REPLY
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert all(c.raw for c in chunks)
    assert fake_upstream.last_request.body["stream_options"] == {"include_usage": True}


async def test_embeddings_go_to_the_deployment(fake_upstream):
    response = await adapter(fake_upstream, "azure_openai").embed(
        EmbeddingRequest(model="my-embedding-deployment", input=["a", "b"])
    )

    assert (
        fake_upstream.last_request.path == "/openai/deployments/my-embedding-deployment/embeddings"
    )
    assert fake_upstream.last_request.query == {"api-version": "2024-10-21"}
    assert len(response.data) == 2
