"""The metrics API (/api/v1/metrics/*, /stats) against known events in PostgreSQL: every figure
is compared with what was written (counts exact, percentiles exact, money to the 1e-12 USD),
tenant scoping is enforced for API keys and operators."""

from __future__ import annotations

import json
import random
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from providers.types import ProviderUnavailable
from routing.breakers import breaker_board
from tenants.keys import api_key_hash
from tenants.models import OperatorToken, TenantMembership
from tests.factories import api_key_create_for_test
from tests.usage.conftest import at
from usage import metrics_selectors
from usage.metrics_selectors import percentile_cont
from usage.rollups import cache_savings
from usage.services import usage_events_write

WINDOW = {"start": "2026-10-01", "end": "2026-10-31"}


def _get(client: Client, path: str, auth: str | None = None, **params):
    headers = {"HTTP_AUTHORIZATION": auth} if auth else {}
    return client.get(path, params, **headers)


def _body(response) -> dict:
    return json.loads(response.content, parse_float=Decimal)


def _payload(
    maker, *, created_at, latency_ms, ttft_ms, outcome, status, model_index, tokens, cached=0
):
    payload = maker.payload(
        created_at=created_at,
        tokens_in=tokens[0],
        tokens_out=tokens[1],
        target_index=model_index,
        outcome="ok" if outcome == "rejected" else outcome,
        status_code=status,
        cache_read_tokens=cached,
    )
    payload["latency_ms"] = latency_ms
    payload["ttft_ms"] = ttft_ms
    if outcome == "rejected":
        payload.update(
            outcome="rejected",
            model="",
            model_id=None,
            provider_id=None,
            upstream_model="",
            cost_usd="0",
            tokens_in=0,
            tokens_out=0,
            attempts=[],
            ttft_ms=None,
        )
    return payload


@pytest.fixture
def traffic(usage_world, maker):
    """acme: 40 events (ok on both models, upstream errors, cancellations, refusals);
    globex: 10 events with latencies far above acme's (any leak moves acme's percentiles)."""
    rng = random.Random(16)
    world = dict(usage_world)
    world["raw_a"] = api_key_create_for_test(tenant=world["acme"], name="acme-metrics")
    world["raw_g"] = api_key_create_for_test(tenant=world["globex"], name="globex-metrics")
    acme_maker, globex_maker = maker(world["raw_a"][0]), maker(world["raw_g"][0])
    plan = ["ok"] * 30 + ["error"] * 5 + ["cancelled"] * 2 + ["rejected"] * 3
    payloads = []
    for i, outcome in enumerate(plan):
        payloads.append(
            _payload(
                acme_maker,
                created_at=at(3 + i % 9, hour=i % 24, minute=i),
                latency_ms=round(rng.uniform(5, 900), 3),
                ttft_ms=round(rng.uniform(1, 200), 3),
                outcome=outcome,
                status={"ok": 200, "error": 502, "cancelled": 499, "rejected": 429}[outcome],
                model_index=i % 2,
                tokens=(10 + i * 7, 3 + i * 5),
                cached=(i * 3) if i % 4 == 0 and outcome == "ok" else 0,
            )
        )
    for i in range(10):
        payloads.append(
            _payload(
                globex_maker,
                created_at=at(5, hour=i),
                latency_ms=50_000.0 + i,
                ttft_ms=9_000.0,
                outcome="ok",
                status=200,
                model_index=1,
                tokens=(1000, 1000),
            )
        )
    # One request of acme outside the window: never counted.
    payloads.append(
        _payload(
            acme_maker,
            created_at=at(1, month=11),
            latency_ms=1.0,
            ttft_ms=1.0,
            outcome="ok",
            status=200,
            model_index=0,
            tokens=(1, 1),
        )
    )
    assert usage_events_write(payloads=payloads) == len(payloads)
    world["acme_events"] = payloads[:40]
    world["globex_events"] = payloads[40:50]
    return world


def _expected_summary(events: list[dict]) -> dict:
    served = sorted(e["latency_ms"] for e in events if e["outcome"] != "rejected")
    by_model: dict[str, Decimal] = {}
    for e in events:
        if e["model"]:
            by_model[e["model"]] = by_model.get(e["model"], Decimal(0)) + Decimal(e["cost_usd"])
    ok = sum(1 for e in events if e["outcome"] == "ok")
    return {
        "total": len(events),
        "successful": ok,
        "failed": len(events) - ok,
        "p": [round(percentile_cont(served, q), 3) for q in (0.5, 0.95, 0.99)],
        "total_usd": sum((Decimal(e["cost_usd"]) for e in events), Decimal(0)),
        "by_model": by_model,
    }


def _key(raw: str) -> str:
    return f"Bearer {raw}"


def test_summary_with_an_api_key_equals_the_tenants_events(traffic):
    response = _get(Client(), "/api/v1/metrics/summary", _key(traffic["raw_a"][1]), **WINDOW)
    assert response.status_code == 200, response.content
    body = _body(response)
    expected = _expected_summary(traffic["acme_events"])
    assert body["requests"]["total"] == expected["total"] == 40
    assert body["requests"]["successful"] == expected["successful"] == 30
    assert body["requests"]["failed"] == expected["failed"] == 10
    assert body["requests"]["by_outcome"] == {
        "ok": 30,
        "error": 5,
        "cancelled": 2,
        "rejected": 3,
    }
    got = [float(body["latency_ms"][k]) for k in ("p50", "p95", "p99")]
    assert got == pytest.approx(expected["p"], abs=0.001)
    assert body["costs"]["total_usd"] == expected["total_usd"]
    assert {k: v for k, v in body["costs"]["by_model"].items()} == expected["by_model"]


def test_api_key_never_sees_another_tenant_and_hostile_tenant_parameter_is_refused(traffic):
    client = Client()
    globex = _body(_get(client, "/api/v1/metrics/summary", _key(traffic["raw_g"][1]), **WINDOW))
    assert globex["requests"]["total"] == 10
    assert globex["latency_ms"]["p50"] == Decimal("50004.5")
    hostile = _get(
        client,
        "/api/v1/metrics/summary",
        _key(traffic["raw_a"][1]),
        tenant=traffic["globex"].id,
        **WINDOW,
    )
    assert hostile.status_code == 403
    assert _body(hostile)["error"]["type"] == "permission_error"
    for path in ("/api/v1/metrics/logs", "/api/v1/metrics/costs", "/stats"):
        response = _get(client, path, _key(traffic["raw_a"][1]), tenant=traffic["globex"].id)
        assert response.status_code == 403, path
    # Its own tenant named explicitly is fine.
    own = _get(
        client,
        "/api/v1/metrics/summary",
        _key(traffic["raw_a"][1]),
        tenant=traffic["acme"].id,
        **WINDOW,
    )
    assert _body(own)["requests"]["total"] == 40


@pytest.mark.parametrize(
    "auth,code",
    [
        (None, "missing_api_key"),
        ("Bearer gw-not-a-real-key", "invalid_api_key"),
        ("Token 0123456789abcdef", "invalid_operator_token"),
    ],
)
def test_bad_credentials_answer_401_in_openai_shape(traffic, auth, code):
    response = _get(Client(), "/api/v1/metrics/summary", auth)
    assert response.status_code == 401
    error = _body(response)["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


def test_revoked_key_is_refused(traffic):
    key, raw = traffic["raw_a"]
    key.revoked_at = datetime.now(tz=UTC)
    key.save()
    from tenants.selectors import policy_cache_clear

    policy_cache_clear()
    assert _get(Client(), "/api/v1/metrics/summary", _key(raw)).status_code == 401


def test_operator_token_sees_every_tenant_or_one_by_parameter(traffic):
    root = get_user_model().objects.create_superuser("root", password="pw-root-123")
    auth = f"Token {_operator_token(root)}"
    client = Client()
    everything = _body(_get(client, "/api/v1/metrics/summary", auth, **WINDOW))
    expected = _expected_summary(traffic["acme_events"] + traffic["globex_events"])
    assert everything["requests"]["total"] == 50
    assert everything["costs"]["total_usd"] == expected["total_usd"]
    assert [float(everything["latency_ms"][k]) for k in ("p50", "p95", "p99")] == pytest.approx(
        expected["p"], abs=0.001
    )
    one = _body(
        _get(client, "/api/v1/metrics/summary", auth, tenant=traffic["globex"].id, **WINDOW)
    )
    assert one["requests"]["total"] == 10


def _operator_token(user) -> str:
    """A live operator token of `user`, written as the service stores it (hash only); written
    directly so that a user who administers nothing (which the service refuses) can hold one,
    as after losing their last membership."""
    raw = f"op-{secrets.token_urlsafe(24)}"
    OperatorToken.objects.create(
        user=user,
        prefix=raw[:12],
        key_hash=api_key_hash(raw),
        expires_at=timezone.now() + timedelta(days=1),
    )
    return raw


def test_expired_or_tenant_limited_operator_tokens(traffic):
    root = get_user_model().objects.create_superuser("root2", password="pw-root-1234")
    raw = _operator_token(root)
    OperatorToken.objects.filter(key_hash=api_key_hash(raw)).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert _get(Client(), "/api/v1/metrics/summary", f"Token {raw}").status_code == 401
    limited = _operator_token(root)
    OperatorToken.objects.filter(key_hash=api_key_hash(limited)).update(tenant=traffic["acme"])
    mine = _get(Client(), "/api/v1/metrics/summary", f"Token {limited}", **WINDOW)
    assert _body(mine)["requests"]["total"] == 40
    other = _get(
        Client(), "/api/v1/metrics/summary", f"Token {limited}", tenant=traffic["globex"].id
    )
    assert other.status_code == 403


def test_tenant_admin_token_is_limited_to_its_tenants(traffic):
    user = get_user_model().objects.create_user("acme-admin", password="pw-acme-123")
    TenantMembership.objects.create(user=user, tenant=traffic["acme"])
    auth = f"Token {_operator_token(user)}"
    client = Client()
    mine = _body(_get(client, "/api/v1/metrics/summary", auth, **WINDOW))
    assert mine["requests"]["total"] == 40
    other = _get(client, "/api/v1/metrics/summary", auth, tenant=traffic["globex"].id)
    assert other.status_code == 403
    nobody = get_user_model().objects.create_user("nobody", password="pw-nobody-123")
    lonely = f"Token {_operator_token(nobody)}"
    assert _get(client, "/api/v1/metrics/summary", lonely).status_code == 403


def test_model_metrics_equal_that_models_events(traffic):
    model = traffic["cheap"].name
    events = [e for e in traffic["acme_events"] if e["model"] == model]
    response = _get(
        Client(), f"/api/v1/metrics/models/{model}", _key(traffic["raw_a"][1]), **WINDOW
    )
    body = _body(response)
    assert body["model"] == model
    assert body["requests"]["total"] == len(events)
    ttfts = sorted(e["ttft_ms"] for e in events if e["ttft_ms"] is not None)
    assert float(body["ttft_ms"]["p95"]) == pytest.approx(
        round(percentile_cont(ttfts, 0.95), 3), abs=0.001
    )
    assert body["tokens"] == {
        "input": sum(e["tokens_in"] for e in events),
        "output": sum(e["tokens_out"] for e in events),
    }
    total = sum((Decimal(e["cost_usd"]) for e in events), Decimal(0))
    assert body["costs"]["total_usd"] == total
    assert body["providers"] == [traffic["provider"].name]
    unknown = _body(
        _get(Client(), "/api/v1/metrics/models/org/no-such", _key(traffic["raw_a"][1]), **WINDOW)
    )
    assert unknown["model"] == "org/no-such"
    assert unknown["requests"]["total"] == 0


def test_providers_report_attempt_errors_and_the_breaker_state(traffic):
    provider, cheap = traffic["provider"], traffic["cheap"]
    board = breaker_board()
    try:
        for _ in range(settings.GATEWAY_BREAKER_MIN_VOLUME):
            board.record_now((provider.id, cheap.id), ProviderUnavailable("down"))
        body = _body(
            _get(Client(), "/api/v1/metrics/providers", _key(traffic["raw_a"][1]), **WINDOW)
        )
    finally:
        board.reset()
    (row,) = [p for p in body["providers"] if p["provider"] == provider.name]
    attempts = [a for e in traffic["acme_events"] for a in e["attempts"]]
    errors = [a for a in attempts if a["status_code"] >= 400]
    assert row["attempts"] == len(attempts) == 37
    assert row["errors"] == len(errors) == 7
    assert float(row["error_rate"]) == pytest.approx(len(errors) / len(attempts), abs=1e-6)
    assert row["breaker_state"] == "open"
    assert float(row["latency_ms"]["mean"]) == pytest.approx(12.5)
    last_ok = max(
        e["created_at"]
        for e in traffic["acme_events"]
        if any(a["status_code"] < 400 for a in e["attempts"])
    )
    assert datetime.fromisoformat(row["last_success"]) == datetime.fromisoformat(last_ok)


def test_costs_break_down_by_model_provider_key_and_day_with_savings(traffic):
    events = traffic["acme_events"]
    body = _body(_get(Client(), "/api/v1/metrics/costs", _key(traffic["raw_a"][1]), **WINDOW))
    total = sum((Decimal(e["cost_usd"]) for e in events), Decimal(0))
    assert body["total_usd"] == total
    assert sum(body["by_model"].values()) == total
    assert body["by_provider"] == {traffic["provider"].name: total}
    assert body["by_key"] == [
        {"api_key_id": traffic["raw_a"][0].id, "key": "acme-metrics", "cost_usd": total}
    ]
    by_day: dict[str, Decimal] = {}
    for e in events:
        day = datetime.fromisoformat(e["created_at"]).date().isoformat()
        by_day[day] = by_day.get(day, Decimal(0)) + Decimal(e["cost_usd"])
    assert body["by_day"] == by_day
    dear = traffic["dear"]
    served = [e for e in events if e["model"]]
    ceiling = sum(
        (
            (
                Decimal(e["tokens_in"]) * dear.input_price_per_mtok
                + Decimal(e["tokens_out"]) * dear.output_price_per_mtok
            ).scaleb(-6)
            for e in served
        ),
        Decimal(0),
    )
    (route,) = body["savings"]["by_route"]
    assert route["most_expensive_model"] == dear.name
    assert route["savings_usd"] == ceiling - total
    assert body["savings"]["routing_usd"] == ceiling - total
    cache = sum(
        (cache_savings(e["cache_read_tokens"], Decimal(e["input_price_per_mtok"])) for e in events),
        Decimal(0),
    )
    assert cache > 0
    assert body["savings"]["cache_usd"] == cache
    assert body["savings"]["total_usd"] == ceiling - total + cache


def test_logs_are_newest_first_scoped_and_carry_no_prompt(traffic):
    response = _get(Client(), "/api/v1/metrics/logs", _key(traffic["raw_a"][1]), limit=500)
    body = _body(response)
    # The November event is included (logs are not windowed): 41 of acme, none of globex.
    assert body["count"] == 41
    stamps = [datetime.fromisoformat(r["created_at"]) for r in body["logs"]]
    assert stamps == sorted(stamps, reverse=True)
    ids = {e["request_id"] for e in traffic["globex_events"]}
    assert not ids & {r["request_id"] for r in body["logs"]}
    first = body["logs"][0]
    assert {"model", "provider", "status_code", "latency_ms", "ttft_ms", "tokens_in"} <= set(first)
    text = response.content.decode()
    assert "messages" not in text and "prompt" not in text
    by_id = {e["request_id"]: e for e in traffic["acme_events"]}
    for row in body["logs"]:
        if row["request_id"] in by_id:
            assert row["cost_usd"] == Decimal(by_id[row["request_id"]]["cost_usd"])
    assert {r["tenant_id"] for r in body["logs"]} == {traffic["acme"].id}
    # Paging: `before` the oldest shown on a page gives the next page.
    page = _body(_get(Client(), "/api/v1/metrics/logs", _key(traffic["raw_a"][1]), limit=10))
    after = _body(
        _get(
            Client(),
            "/api/v1/metrics/logs",
            _key(traffic["raw_a"][1]),
            limit=10,
            before=page["logs"][-1]["created_at"],
        )
    )
    assert [r["request_id"] for r in page["logs"] + after["logs"]] == [
        r["request_id"] for r in body["logs"][:20]
    ]
    bad = _get(Client(), "/api/v1/metrics/logs", _key(traffic["raw_a"][1]), limit=501)
    assert bad.status_code == 400
    assert _body(bad)["error"]["code"] == "invalid_limit"


def test_stats_are_totals_of_every_event_of_the_tenant(traffic):
    events = traffic["acme_events"]
    body = _body(_get(Client(), "/stats", _key(traffic["raw_g"][1])))
    assert body["total_requests"] == 10
    body = _body(_get(Client(), "/stats", _key(traffic["raw_a"][1])))
    everything = [*events]
    # The November event counts too (no window).
    assert body["total_requests"] == 41
    served = [e["latency_ms"] for e in everything if e["outcome"] != "rejected"] + [1.0]
    assert float(body["average_latency_ms"]) == pytest.approx(
        round(sum(served) / len(served), 3), abs=0.001
    )
    failed = sum(1 for e in everything if e["outcome"] != "ok")
    assert float(body["error_rate"]) == pytest.approx(round(failed / 41, 6), abs=1e-6)


def test_bad_window_is_a_400_in_openai_shape(traffic):
    response = _get(Client(), "/api/v1/metrics/summary", _key(traffic["raw_a"][1]), window="1y")
    assert response.status_code == 400
    assert _body(response)["error"]["code"] == "invalid_window"
    response = _get(Client(), "/api/v1/metrics/summary", _key(traffic["raw_a"][1]), window="9999d")
    assert response.status_code == 400


def test_default_window_is_the_last_day(traffic, maker):
    recent = _payload(
        maker(traffic["raw_a"][0]),
        created_at=datetime.now(tz=UTC) - timedelta(minutes=5),
        latency_ms=42.0,
        ttft_ms=4.0,
        outcome="ok",
        status=200,
        model_index=0,
        tokens=(5, 5),
    )
    usage_events_write(payloads=[recent])
    body = _body(_get(Client(), "/api/v1/metrics/summary", _key(traffic["raw_a"][1])))
    assert body["requests"]["total"] == 1
    assert body["latency_ms"]["p50"] == Decimal("42")


def test_percentile_cont_matches_postgresql_definition():
    assert percentile_cont([], 0.5) is None
    assert percentile_cont([7.0], 0.99) == 7.0
    assert percentile_cont([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile_cont([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert percentile_cont([10.0, 20.0], 0.0) == 10.0


def test_sqlite_fallback_gives_the_same_figures_as_postgresql(traffic, monkeypatch):
    """The Python paths (embedded mode) run over the same rows and must agree exactly."""
    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    scopes = [None, [traffic["acme"].id]]
    on_pg = [
        (
            metrics_selectors.metrics_summary(tenant_ids=t, start=start, end=end),
            metrics_selectors.metrics_costs(tenant_ids=t, start=start, end=end),
            metrics_selectors.metrics_model(
                tenant_ids=t, model=traffic["dear"].name, start=start, end=end
            ),
            metrics_selectors.stats_get(tenant_ids=t),
        )
        for t in scopes
    ]
    monkeypatch.setattr(metrics_selectors, "_is_postgres", lambda: False)
    in_python = [
        (
            metrics_selectors.metrics_summary(tenant_ids=t, start=start, end=end),
            metrics_selectors.metrics_costs(tenant_ids=t, start=start, end=end),
            metrics_selectors.metrics_model(
                tenant_ids=t, model=traffic["dear"].name, start=start, end=end
            ),
            metrics_selectors.stats_get(tenant_ids=t),
        )
        for t in scopes
    ]
    assert in_python == on_pg


def test_every_endpoint_is_in_an_openapi_document(db):
    metrics = json.loads(Client().get("/api/v1/metrics/openapi.json").content)
    assert set(metrics["paths"]) >= {
        "/api/v1/metrics/summary",
        "/api/v1/metrics/models/{model}",
        "/api/v1/metrics/providers",
        "/api/v1/metrics/costs",
        "/api/v1/metrics/logs",
        "/api/v1/metrics/realtime",
        "/stats",
    }
    assert set(metrics["components"]["securitySchemes"]) == {
        "apiKeyBearer",
        "apiKeyHeader",
        "operatorToken",
    }
    summary = metrics["paths"]["/api/v1/metrics/summary"]["get"]
    assert {"200", "400", "401", "403"} <= set(summary["responses"])
    reports = Client().get("/api/reports/schema/", HTTP_ACCEPT="application/json")
    assert reports.status_code == 200, reports.content[:300]
    paths = json.loads(reports.content)["paths"]
    assert set(paths) >= {
        "/api/reports/usage/",
        "/api/reports/events/",
        "/api/reports/statements/{tenant_id}/{month}/",
    }


def test_a_tenant_sees_only_the_providers_that_served_it(traffic):
    """The operator's catalog is not tenant data: a provider this tenant's requests never
    reached (another tenant's private deployment, say) is not listed for its key, nor for a
    token limited to it; an unscoped operator sees every active provider."""
    from tests.factories import ProviderFactory

    hidden = ProviderFactory(name="globex-private-deployment")
    acme = _body(_get(Client(), "/api/v1/metrics/providers", _key(traffic["raw_a"][1]), **WINDOW))
    names = {p["provider"] for p in acme["providers"]}
    assert traffic["provider"].name in names
    assert hidden.name not in names
    root = get_user_model().objects.create_superuser("root-prov", password="pw-root-123")
    everything = _body(
        _get(Client(), "/api/v1/metrics/providers", f"Token {_operator_token(root)}", **WINDOW)
    )
    assert hidden.name in {p["provider"] for p in everything["providers"]}
