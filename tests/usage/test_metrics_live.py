"""N requests through a live gateway with two uvicorn workers (Redis state store, usage written
directly to PostgreSQL): the metrics API, /stats and the realtime view count exactly N, and
the summary's percentiles equal those of the stored events."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.routing.support import mock_provider, model_on, route, tenant_key
from usage.metrics_selectors import percentile_cont
from usage.models import UsageEvent

pytestmark = pytest.mark.live_server_process

N = 40


def _poll(fetch, ok, *, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_requests_through_a_two_worker_gateway_are_counted_exactly(live_gateway, redis_url):
    provider = mock_provider("metrics-live-mock")
    route("metrics-live", [model_on(provider, "metrics-live-model")])
    _, _, raw = tenant_key()
    _, _, other_raw = tenant_key()
    env = {
        "REDIS_URL": redis_url,
        "GATEWAY_STATE_BACKEND": "redis",
        "GATEWAY_USAGE_WRITE_MODE": "direct",
    }
    auth = {"Authorization": f"Bearer {raw}"}
    with live_gateway(env=env, workers=2) as base, httpx.Client(base_url=base, timeout=30) as c:
        for i in range(N):
            response = c.post(
                "/v1/chat/completions",
                headers=auth,
                json={
                    "model": "metrics-live",
                    "messages": [{"role": "user", "content": "hi " * (1 + i % 5)}],
                },
            )
            assert response.status_code == 200, response.text
        # A refusal (unknown model) is a request too: failed, not successful.
        assert c.post(
            "/v1/chat/completions",
            headers=auth,
            json={"model": "no-such-route", "messages": [{"role": "user", "content": "x"}]},
        ).status_code in (400, 404)

        summary = _poll(
            lambda: c.get("/api/v1/metrics/summary", headers=auth, params={"window": "1h"}).json(),
            lambda body: body["requests"]["total"] >= N + 1,
        )
        realtime = _poll(
            lambda: c.get("/api/v1/metrics/realtime", headers=auth).json(),
            lambda body: body["requests"] >= N + 1,
            timeout_s=5.0,
        )
        stats = c.get("/stats", headers=auth).json()
        others = c.get(
            "/api/v1/metrics/summary", headers={"Authorization": f"Bearer {other_raw}"}
        ).json()

    assert summary["requests"]["total"] == N + 1
    assert summary["requests"]["successful"] == N
    assert summary["requests"]["failed"] == 1
    events = list(UsageEvent.objects.exclude(outcome="rejected").order_by("latency_ms"))
    assert len(events) == N
    latencies = [e.latency_ms for e in events]
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert summary["latency_ms"][name] == pytest.approx(
            round(percentile_cont(latencies, q), 3), abs=0.001
        )
    assert realtime["requests"] == N + 1
    assert realtime["errors"] == 1
    assert realtime["in_flight"] == 0
    assert stats["total_requests"] == N + 1
    assert others["requests"]["total"] == 0
