"""The semantic cache: the offline embedder, the labelled paraphrase set (precision and recall
printed; precision must be perfect at the default threshold), and lookups that stay inside
one tenant and one identical context."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from providers.types import ChatRequest, Usage
from routing.cache import (
    CachedAnswer,
    CachePolicy,
    CacheScope,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
    cache_key,
    semantic_context,
    semantic_guard,
)

embedding = pytest.importorskip("routing.cache_embedding")
PAIRS = json.loads((Path(__file__).parent / "data" / "semantic_pairs.json").read_text())["pairs"]
MODELS = [(1, "gpt-4o-mini", "openai", "https://api.openai.com/v1")]


@pytest.fixture(scope="module")
def embedder():
    try:
        return embedding.embedder_get()
    except embedding.EmbedderUnavailable as exc:
        pytest.fail(f"the semantic cache's model is not installed: {exc}")


def test_embeddings_are_unit_length_and_deterministic(embedder):
    first = embedder.embed("What is the capital of France?")
    again = embedder.embed("What is the capital of France?")
    assert first.shape == (embedding.DIMENSION,)
    assert abs(float(first @ first) - 1.0) < 1e-4
    assert float(first @ again) > 0.9999


def test_labelled_pairs_precision_is_perfect_at_the_default_threshold(embedder):
    threshold = CachePolicy().similarity_threshold
    tp = fp = fn = tn = 0
    for question, stored, same in PAIRS:
        score = float(embedder.embed(question) @ embedder.embed(stored))
        hit = score >= threshold and semantic_guard(question, stored)
        tp += hit and same
        fp += hit and not same
        fn += (not hit) and same
        tn += (not hit) and not same
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn)
    print(  # noqa: T201 - the figures the issue asks to see
        f"semantic pairs: {len(PAIRS)}, threshold {threshold}: precision {precision:.2f}, "
        f"recall {recall:.2f} (tp={tp} fp={fp} fn={fn} tn={tn})"
    )
    assert precision == 1.0
    assert recall >= 0.4


def test_guard_rejects_reordered_words_and_other_numbers():
    assert not semantic_guard("Convert 10 miles to kilometers", "Convert 10 kilometers to miles")
    assert not semantic_guard("What is 12 times 3?", "What is 12 times 4?")
    assert semantic_guard("Are raw eggs safe to eat?", "Is it safe to eat raw eggs?")


def _chat(text: str, *, system: str = "You are terse.", temperature: float = 0.0) -> ChatRequest:
    return ChatRequest(
        model="demo-chat",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
        temperature=temperature,
    )


def test_context_bucket_ignores_only_the_last_user_turn():
    scope = CacheScope(tenant_id=1, key_id=None, route="demo-chat")

    def bucket(chat):
        return semantic_context(scope=scope, endpoint="chat", chat=chat, model_identities=MODELS)

    a, a_text = bucket(_chat("What is the capital of France?"))
    b, _ = bucket(_chat("Which city is the capital of France?"))
    assert a == b and a_text == "What is the capital of France?"
    assert bucket(_chat("What is the capital of France?", system="Answer in French."))[0] != a
    assert bucket(_chat("What is the capital of France?", temperature=0.5))[0] != a
    other_tenant = CacheScope(tenant_id=2, key_id=None, route="demo-chat")
    assert (
        semantic_context(
            scope=other_tenant,
            endpoint="chat",
            chat=_chat("What is the capital of France?"),
            model_identities=MODELS,
        )[0]
        != a
    )
    image_turn = ChatRequest(
        model="m",
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    )
    assert bucket(image_turn) is None


def _answer() -> CachedAnswer:
    return CachedAnswer(
        content="Paris.",
        tool_calls=None,
        finish_reason="stop",
        usage=Usage(prompt_tokens=20, completion_tokens=2),
        model="demo-chat",
        model_id=1,
        provider_id=1,
        cost_usd=Decimal("0.00002"),
        stored_at=1_700_000_000.0,
    )


@pytest.mark.parametrize("backend", ["redis", "memory"])
async def test_a_paraphrase_hits_and_an_overlapping_question_misses(
    embedder, backend, request, settings
):
    settings.GATEWAY_CACHE_LOCAL_ENTRIES = 0
    if backend == "redis":
        store = RedisCacheStore(url=request.getfixturevalue("redis_url"), timeout_s=0.5)
    else:
        store = MemoryCacheStore()
    cache = ResponseCache(store=store)
    scope = CacheScope(tenant_id=1, key_id=None, route="demo-chat")
    first = _chat("What is the capital of France?")
    digest = cache_key(scope=scope, endpoint="chat", chat=first, model_identities=MODELS)
    bucket, text = semantic_context(
        scope=scope, endpoint="chat", chat=first, model_identities=MODELS
    )
    await cache.store_answer(scope=scope, digest=digest, answer=_answer(), ttl_s=60)
    await cache.semantic_store(
        tenant_id=1,
        bucket=bucket,
        digest=digest,
        question=text,
        vector=embedder.embed(text),
        ttl_s=60,
    )

    async def ask(question: str, tenant_id: int = 1):
        return await cache.semantic_lookup(
            tenant_id=tenant_id,
            bucket=bucket,
            question=question,
            vector=embedder.embed(question),
            threshold=CachePolicy().similarity_threshold,
        )

    hit = await ask("Which city is the capital of France?")
    assert hit is not None and hit[0].content == "Paris." and hit[1] >= 0.91
    assert await ask("What is the capital of Spain?") is None
    assert await ask("Which city is the capital of France?", tenant_id=2) is None
    # A purged entry stops matching at once, and its vector is forgotten.
    await cache.purge(tenant_id=1, route="demo-chat")
    assert await ask("Which city is the capital of France?") is None
    await store.close()
