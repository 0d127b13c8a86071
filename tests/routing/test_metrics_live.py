"""/metrics of a live gateway with TWO uvicorn workers (multiprocess mode, as `make serve` runs
it): every counter equals the traffic sent, whichever worker answers the scrape; per-provider
latency and TTFT counts equal the requests each provider served; token counters equal the
usage events in PostgreSQL; refusals are counted by code; the seed's names are there."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from providers.models import ProviderKind
from tests.conftest import METRICS_AUTH
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    fake_provider,
    mock_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait_sync,
)
from usage.models import UsageEvent

SEED_NAMES = (
    "http_requests_total",
    "http_request_duration_seconds",
    "llm_requests_total",
    "llm_tokens_total",
    "cache_hits_total",
    "cache_misses_total",
)
N_MOCK, N_FAKE, N_BAD_KEY, N_INVALID = 24, 16, 5, 3


def scrape(base_or_text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one /metrics page."""
    text = base_or_text
    if base_or_text.startswith("http"):
        # A new connection per scrape: with two workers, either may answer.
        text = httpx.get(
            f"{base_or_text}/metrics", timeout=10, headers={"Connection": "close", **METRICS_AUTH}
        ).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples, name: str, **labels) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def names(samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def metrics_catalog(transactional_db, fake_upstream_thread):
    mock = mock_provider("metrics-mock")
    fake = fake_provider(fake_upstream_thread, ProviderKind.OPENAI, name="metrics-fake")
    route("metrics-mock", [model_on(mock, "metrics-mock-model")])
    route("metrics-fake", [model_on(fake, "metrics-fake-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return raw, fake.pk


def _send(base: str, raw: str) -> list[int]:
    jobs = (
        [("metrics-mock", raw, False)] * (N_MOCK // 2)
        + [("metrics-mock", raw, True)] * (N_MOCK // 2)
        + [("metrics-fake", raw, False)] * (N_FAKE // 2)
        + [("metrics-fake", raw, True)] * (N_FAKE // 2)
        + [("metrics-mock", "gw-not-a-key", False)] * N_BAD_KEY
    )

    def one(job) -> int:
        model, key, stream = job
        with httpx.Client(base_url=base, timeout=30) as client:
            body = {"model": model, "messages": [{"role": "user", "content": "hi there"}]}
            if stream:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            response = client.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            return response.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, jobs))
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(N_INVALID):
            statuses.append(
                client.post(
                    "/v1/chat/completions",
                    json={"model": "metrics-mock", "messages": "not a list"},
                    headers={"Authorization": f"Bearer {raw}"},
                ).status_code
            )
    return statuses


@pytest.mark.live_server_process
def test_two_workers_metrics_equal_the_traffic_sent_whichever_worker_answers(
    live_gateway, metrics_catalog
):
    raw, fake_provider_id = metrics_catalog
    with live_gateway(env=LIVE_ENV, workers=2) as base:
        statuses = _send(base, raw)
        assert statuses.count(200) == N_MOCK + N_FAKE
        assert statuses.count(401) == N_BAD_KEY and statuses.count(400) == N_INVALID
        # A stranger's key leaves no usage row (metrics only).
        events = usage_events_wait_sync(N_MOCK + N_FAKE + N_INVALID, timeout_s=20)
        pages = [scrape(base) for _ in range(6)]

    served = [e for e in events if e.outcome == "ok"]
    assert len(served) == N_MOCK + N_FAKE
    for samples in pages:
        assert set(SEED_NAMES) <= names(samples) | {n + "_total" for n in names(samples)} | {
            n.removesuffix("_count") for n in names(samples)
        }
        assert (
            total(samples, "http_requests_total", endpoint="chat", status="200") == N_MOCK + N_FAKE
        )
        assert total(samples, "gateway_requests_total", outcome="ok") == N_MOCK + N_FAKE
        for provider, expected in (("metrics-mock", N_MOCK), ("metrics-fake", N_FAKE)):
            assert total(samples, "llm_requests_total", provider=provider, status="200") == expected
            assert (
                total(samples, "gateway_provider_request_seconds_count", provider=provider)
                == expected
            )
            assert (
                total(samples, "gateway_time_to_first_token_seconds_count", provider=provider)
                == expected
            )
            rows = [e for e in served if e.model == f"{provider}-model"]
            assert len(rows) == expected
            assert total(samples, "llm_tokens_total", provider=provider, type="prompt") == sum(
                e.tokens_in for e in rows
            )
            assert total(samples, "llm_tokens_total", provider=provider, type="completion") == sum(
                e.tokens_out for e in rows
            )
        # Refusals: counted by code, and in the request counters.
        assert total(samples, "gateway_refusals_total", status="401") == N_BAD_KEY
        assert total(samples, "gateway_refusals_total", status="400") == N_INVALID
        assert total(samples, "http_requests_total", status="401") == N_BAD_KEY
        assert total(samples, "gateway_requests_total", outcome="refused") == N_BAD_KEY + N_INVALID
        refusal_codes = {
            dict(labels)["code"] for name, labels in samples if name == "gateway_refusals_total"
        }
        assert "unknown" not in refusal_codes and len(refusal_codes) >= 2
        # Every authenticated request looked its key up in the policy cache.
        lookups = total(samples, "cache_hits_total", cache="key_policy") + total(
            samples, "cache_misses_total", cache="key_policy"
        )
        # The key is checked before the body is read: invalid bodies look their key up too.
        assert lookups == N_MOCK + N_FAKE + N_BAD_KEY + N_INVALID, lookups
        assert total(samples, "cache_hits_total", cache="key_policy") >= 1
        # The upstream pool of the fake provider, merged over the workers that used it.
        assert (
            total(
                samples,
                "gateway_upstream_pool_connections_limit",
                provider_id=str(fake_provider_id),
            )
            > 0
        )
        # Scrape-time gauges from Redis.
        assert total(samples, "gateway_redis_up") == 1
        assert ("gateway_usage_stream_backlog", ()) in samples
        assert ("gateway_reservation_holds", ()) in samples
    assert UsageEvent.objects.filter(outcome="ok").count() == N_MOCK + N_FAKE


def test_metrics_page_lists_the_seed_names_and_pipeline_gauges_in_process(db, redis_url):
    samples = scrape(Client().get("/metrics", headers=METRICS_AUTH).content.decode())
    for name in ("cache_hits_total", "cache_misses_total"):
        assert (name, (("cache", "key_policy"),)) in samples
    for name in (
        "gateway_usage_stream_backlog",
        "gateway_usage_drain_lag_seconds",
        "gateway_usage_drain_heartbeat_age_seconds",
        "gateway_beat_heartbeat_age_seconds",
        "gateway_reservation_holds",
    ):
        assert (name, ()) in samples, name
    # No beat or drain ran in this test: their heartbeats say "never".
    assert samples[("gateway_beat_heartbeat_age_seconds", ())] == -1


def test_metrics_page_still_answers_when_redis_is_down(db):
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        from gateway_project import ops

        ops._sync_clients.clear()
        response = Client().get("/metrics", headers=METRICS_AUTH)
        ops._sync_clients.clear()
    assert response.status_code == 200
    samples = scrape(response.content.decode())
    assert samples[("gateway_redis_up", ())] == 0
    assert ("gateway_usage_stream_backlog", ()) not in samples
