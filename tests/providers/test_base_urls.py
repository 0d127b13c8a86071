"""Provider base URLs in both conventions (with and without /v1, or with a pasted endpoint)
reach the same upstream paths for every kind, and the example catalog's providers all answer
against the fake upstream."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from providers.adapters.base import ProviderConfig, adapter_class_for
from providers.types import ChatRequest
from providers.urls import base_url_normalize
from routing.catalog_file import catalog_file_parse
from tests.fake_upstream.server import DEFAULT_API_KEY

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "catalog.toml"


@pytest.mark.parametrize(
    ("kind", "given", "expected", "changed"),
    [
        ("openai", "https://api.openai.com/v1", "https://api.openai.com/v1", False),
        ("openai", "https://api.openai.com", "https://api.openai.com/v1", True),
        ("openai", "https://api.openai.com/v1/", "https://api.openai.com/v1", True),
        ("openai", "https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1", True),
        ("openai_compatible", "http://vllm:8000", "http://vllm:8000/v1", True),
        (
            "openai_compatible",
            "https://openrouter.ai/api/v1",
            "https://openrouter.ai/api/v1",
            False,
        ),
        (
            "openai_compatible",
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            True,
        ),
        ("anthropic", "https://api.anthropic.com", "https://api.anthropic.com/v1", True),
        ("anthropic", "https://api.anthropic.com/v1", "https://api.anthropic.com/v1", False),
        (
            "anthropic",
            "https://api.anthropic.com/v1/messages",
            "https://api.anthropic.com/v1",
            True,
        ),
        ("azure_openai", "https://r.openai.azure.com", "https://r.openai.azure.com", False),
        ("azure_openai", "https://r.openai.azure.com/openai/", "https://r.openai.azure.com", True),
        (
            "azure_openai",
            "https://r.openai.azure.com/openai/deployments/gpt/chat/completions",
            "https://r.openai.azure.com",
            True,
        ),
        ("mock", "", "", False),
    ],
)
def test_base_url_normalize_accepts_both_conventions_and_says_what_it_changed(
    kind, given, expected, changed
):
    normalized, note = base_url_normalize(kind, given)
    assert normalized == expected
    assert (note is not None) == changed
    if note:
        assert given in note and expected in note


def _on_fake(url: str, fake_root: str) -> str:
    """The same URL (path and convention kept) on the fake upstream's host."""
    fake = urlsplit(fake_root)
    parts = urlsplit(url)
    return urlunsplit((fake.scheme, fake.netloc, parts.path, parts.query, ""))


def _adapter(kind: str, base_url: str, **options):
    config = ProviderConfig(
        id=hash((kind, base_url)) % 10**6,
        name=f"conv-{kind}",
        kind=kind,
        base_url=base_url,
        secret=DEFAULT_API_KEY,
        options=options,
        connect_timeout_s=2.0,
        first_byte_timeout_s=5.0,
        stream_idle_timeout_s=5.0,
        total_timeout_s=20.0,
    )
    return adapter_class_for(kind)(config)


@pytest.mark.parametrize(
    ("kind", "suffix", "options"),
    [
        ("openai", "", {}),
        ("openai", "/v1", {}),
        ("openai", "/v1/chat/completions", {}),
        ("openai_compatible", "", {}),
        ("openai_compatible", "/v1/", {}),
        ("anthropic", "", {}),
        ("anthropic", "/v1", {}),
        ("azure_openai", "", {"api_version": "2024-10-21"}),
        ("azure_openai", "/openai", {"api_version": "2024-10-21"}),
    ],
)
async def test_every_kind_reaches_the_upstream_with_either_convention(
    fake_upstream, kind, suffix, options
):
    adapter = _adapter(kind, fake_upstream.base_url + suffix, **options)
    try:
        response = await adapter.chat(
            ChatRequest(
                model="conv-model", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
        )
        chunks = [
            c
            async for c in adapter.stream_chat(
                ChatRequest(
                    model="conv-model", messages=[{"role": "user", "content": "hi"}], max_tokens=8
                )
            )
        ]
    finally:
        await adapter.aclose()
    assert response.content
    assert "".join(c.content or "" for c in chunks) == response.content


async def test_every_provider_of_the_example_catalog_answers_against_the_fake_upstream(
    fake_upstream,
):
    data = catalog_file_parse(EXAMPLE)
    upstream_of = {m["provider"]: m.get("upstream_model", m["name"]) for m in data["models"]}
    called = []
    for entry in data["providers"]:
        kind = entry["kind"]
        base_url = (
            _on_fake(entry["base_url"], fake_upstream.base_url) if entry.get("base_url") else ""
        )
        adapter = _adapter(kind, base_url, **entry.get("options", {}))
        try:
            response = await adapter.chat(
                ChatRequest(
                    model=upstream_of[entry["name"]],
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=16,
                )
            )
        finally:
            await adapter.aclose()
        assert response.content, entry["name"]
        called.append(entry["name"])
    assert called == ["openai", "anthropic", "mock"]
    # the Anthropic entry uses the Anthropic SDK's convention (no /v1): it reached /v1/messages
    assert any(r.path == "/v1/messages" for r in fake_upstream.requests)
