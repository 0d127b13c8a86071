"""Durable holds: every admitted call is recoverable. A hold nobody settles (its process was
killed with SIGKILL) ends in exactly one `orphaned` event charging its reservation, and the
key's concurrency slot is free again after the derived hold TTL."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.utils import timezone

from tests.conftest import SERVER_PROCESSES
from tests.factories import (
    ModelFactory,
    ProviderFactory,
    TenantFactory,
    api_key_create_for_test,
    route_create,
)
from tests.usage_helpers import usage_events_settled
from usage.holds import holds_expired_settle
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "tell me a long story"}]
HOLD_S = 6.0


async def _open_holds() -> int:
    from tenants.state import state_store

    return await state_store().holds_open_count()


def _catalog(*, total_timeout_s: float = 2.0):
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    provider = ProviderFactory(
        name="mock-holds",
        options={"latency_ms": 30_000, "reply_tokens": 300},
        total_timeout_s=total_timeout_s,
        max_retries=0,
    )
    model = ModelFactory(
        name="holds-model",
        provider=provider,
        max_output_tokens=1000,
        input_price_per_mtok=Decimal("1.000000"),
        output_price_per_mtok=Decimal("2.000000"),
    )
    route_create(name="holds-chat", models=[model], max_attempts=1)
    fast = ProviderFactory(name="mock-holds-fast", max_retries=0)
    route_create(name="holds-fast", models=[ModelFactory(name="holds-fast-model", provider=fast)])
    tenant = TenantFactory()
    key, raw = api_key_create_for_test(tenant=tenant, max_concurrency=1, budget_usd=Decimal("10"))
    snapshot_invalidate()
    policy_cache_clear()
    return tenant, key, raw


def _reconciles() -> None:
    call_command("usage_rollup")
    today = timezone.now().date()
    call_command(
        "reconcile_usage",
        "--from",
        today.isoformat(),
        "--to",
        (today + timedelta(days=1)).isoformat(),
    )  # raises CommandError (non-zero exit) on any difference


def test_a_server_killed_mid_stream_leaves_one_orphaned_event_and_frees_the_slot(
    live_gateway, redis_url
):
    _, key, raw = _catalog(total_timeout_s=HOLD_S - 1)
    env = {
        "REDIS_URL": redis_url,
        "GATEWAY_STATE_BACKEND": "redis",
        "GATEWAY_USAGE_WRITE_MODE": "stream",
        # hold = total timeout x 1 attempt + 1 s margin = HOLD_S
        "GATEWAY_HOLD_MARGIN_SECONDS": "1",
    }
    headers = {"Authorization": f"Bearer {raw}"}
    body = {"model": "holds-chat", "messages": HELLO, "stream": True, "max_tokens": 500}
    with live_gateway(env=env) as base:
        started = threading.Event()
        killed_request: dict[str, str] = {}

        def stream() -> None:
            try:
                with httpx.Client(base_url=base, timeout=30) as client:
                    with client.stream(
                        "POST", "/v1/chat/completions", headers=headers, json=body
                    ) as response:
                        killed_request["id"] = response.headers["x-request-id"]
                        for _ in response.iter_lines():
                            started.set()
            except httpx.HTTPError:
                pass

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        assert started.wait(15), "the stream did not start"
        os.kill(SERVER_PROCESSES[base].pid, signal.SIGKILL)
        admitted_at = time.monotonic()
        reader.join(10)
    # The dead process's hold is open (slot and reservation taken) until its deadline; a
    # sweep before then ends nothing.
    assert async_to_sync(_open_holds)() == 1
    assert async_to_sync(holds_expired_settle)().expired == 0
    while time.monotonic() < admitted_at + HOLD_S + 0.5:
        time.sleep(0.1)
    sweep = async_to_sync(holds_expired_settle)()
    assert sweep.orphaned == 1 and sweep.failed == 0
    assert async_to_sync(holds_expired_settle)().expired == 0  # it ended once
    assert async_to_sync(_open_holds)() == 0
    with live_gateway(env=env) as base, httpx.Client(base_url=base, timeout=30) as client:
        # The key's only concurrency slot is free again.
        fast = {"model": "holds-fast", "messages": HELLO, "max_tokens": 5}
        answer = client.post("/v1/chat/completions", headers=headers, json=fast)
        assert answer.status_code == 200, answer.text
    async_to_sync(usage_events_settled)(2)
    orphaned = UsageEvent.objects.get(request_id=killed_request["id"])
    assert orphaned.outcome == "orphaned" and orphaned.usage_estimated
    assert orphaned.error_type == "hold_expired"
    # Charged its reservation: prompt bound x input price + max_tokens x output price.
    expected = (Decimal(orphaned.tokens_in) * Decimal(1) + Decimal(500) * Decimal(2)) / Decimal(
        1_000_000
    )
    assert orphaned.tokens_out == 500
    assert orphaned.cost_usd == expected.quantize(orphaned.cost_usd)
    assert UsageEvent.objects.filter(request_id=killed_request["id"]).count() == 1
    _reconciles()


def test_a_settlement_after_the_sweeper_changes_nothing(settings, redis_url):
    """The call outlived its hold: the sweeper's `orphaned` event stands, the late settlement
    neither charges nor writes a second event."""
    from routing.inference import InferenceCall
    from routing.snapshot import snapshot_get
    from tenants.selectors import api_key_policy_reload

    settings.GATEWAY_HOLD_MARGIN_SECONDS = 0.1
    _, key, _ = _catalog(total_timeout_s=0.2)

    async def scenario() -> tuple[int, str]:
        policy = await api_key_policy_reload(key_id=key.id)
        route = (await snapshot_get()).resolve("holds-chat")
        call = InferenceCall(request_id="req_late_settle", policy=policy, route=route)
        await call.admit(messages=HELLO, max_tokens=10)
        time.sleep(0.5)  # noqa: ASYNC251 - the hold (0.3 s) must pass, nothing else runs
        sweep = await holds_expired_settle()
        await call.finish(status_code=200, outcome="ok")
        return sweep.orphaned, call.request_id

    orphaned, request_id = async_to_sync(scenario)()
    assert orphaned == 1
    async_to_sync(usage_events_settled)(1)
    [event] = list(UsageEvent.objects.filter(request_id=request_id))
    assert event.outcome == "orphaned"
    _reconciles()


def test_the_beat_sweeper_ends_a_killed_servers_hold_on_its_own(live_gateway, redis_url, tmp_path):
    """The same fault with the real Celery worker and beat doing the sweeping and draining:
    nobody calls the sweeper by hand."""
    from tests.celery_workers import celery_worker_start, process_stop, wait_until

    _, key, raw = _catalog(total_timeout_s=HOLD_S - 1)
    env = {
        "REDIS_URL": redis_url,
        "GATEWAY_STATE_BACKEND": "redis",
        "GATEWAY_USAGE_WRITE_MODE": "stream",
        "GATEWAY_HOLD_MARGIN_SECONDS": "1",
    }
    worker = celery_worker_start(
        redis_url,
        tmp_path,
        "holds-sweeper",
        beat=True,
        extra_env={
            **env,
            "GATEWAY_HOLDS_SWEEP_INTERVAL_SECONDS": "1",
            "GATEWAY_USAGE_DRAIN_INTERVAL_SECONDS": "1",
        },
    )
    headers = {"Authorization": f"Bearer {raw}"}
    body = {"model": "holds-chat", "messages": HELLO, "stream": True, "max_tokens": 500}
    try:
        with live_gateway(env=env) as base:
            started = threading.Event()
            killed: dict[str, str] = {}

            def stream() -> None:
                try:
                    with (
                        httpx.Client(base_url=base, timeout=30) as client,
                        client.stream(
                            "POST", "/v1/chat/completions", headers=headers, json=body
                        ) as response,
                    ):
                        killed["id"] = response.headers["x-request-id"]
                        for _ in response.iter_lines():
                            started.set()
                except httpx.HTTPError:
                    pass

            reader = threading.Thread(target=stream, daemon=True)
            reader.start()
            assert started.wait(15), "the stream did not start"
            os.kill(SERVER_PROCESSES[base].pid, signal.SIGKILL)
            reader.join(10)
        wait_until(
            lambda: UsageEvent.objects.filter(request_id=killed["id"]).exists(),
            timeout_s=90,
            what="the beat sweeper to end the hold and the drain to store its event",
            interval=0.2,
        )
        assert async_to_sync(_open_holds)() == 0
    finally:
        process_stop(worker)
    [event] = UsageEvent.objects.filter(request_id=killed["id"])
    assert event.outcome == "orphaned" and event.cost_usd > 0
    with live_gateway(env=env) as base, httpx.Client(base_url=base, timeout=30) as client:
        fast = {"model": "holds-fast", "messages": HELLO, "max_tokens": 5}
        assert client.post("/v1/chat/completions", headers=headers, json=fast).status_code == 200
    async_to_sync(usage_events_settled)(2)
    _reconciles()


def test_a_settlement_lost_in_redis_is_charged_from_its_postgres_event(settings, redis_url):
    """Redis failed at settlement: the event went to PostgreSQL, the hold stayed open. When
    it expires the sweeper charges the live counter with that event (no orphaned event), so
    the counter and PostgreSQL agree (reconcile_usage exits 0)."""
    from routing.inference import InferenceCall, usage_event_payload
    from routing.snapshot import snapshot_get
    from tenants.selectors import api_key_policy_reload
    from usage.services import usage_events_write

    settings.GATEWAY_HOLD_MARGIN_SECONDS = 0.1
    _, key, _ = _catalog(total_timeout_s=0.2)

    async def scenario() -> tuple[int, int, str]:
        policy = await api_key_policy_reload(key_id=key.id)
        route = (await snapshot_get()).resolve("holds-chat")
        call = InferenceCall(request_id="req_lost_settle", policy=policy, route=route)
        await call.admit(messages=HELLO, max_tokens=10)
        # What finish() does when the state store is away: the event goes to PostgreSQL.
        from providers.types import Usage

        call.served = route.targets[0]
        call.unit_prices = route.targets[0].model.price_at(call.created_at)
        call.cost = Decimal("0.000123000000")
        payload = usage_event_payload(
            call=call,
            usage=Usage(prompt_tokens=20, completion_tokens=10),
            status_code=200,
            outcome="ok",
            error_type="",
        )
        payload["cost_usd"] = "0.000123000000"
        await sync_to_async(usage_events_write)(payloads=[payload])
        time.sleep(0.5)  # noqa: ASYNC251 - the hold (0.3 s) must pass, nothing else runs
        sweep = await holds_expired_settle()
        return sweep.recovered, sweep.orphaned, call.request_id

    from asgiref.sync import sync_to_async

    recovered, orphaned, request_id = async_to_sync(scenario)()
    assert (recovered, orphaned) == (1, 0)
    [event] = list(UsageEvent.objects.filter(request_id=request_id))
    assert event.outcome == "ok" and event.cost_usd == Decimal("0.000123")
    _reconciles()  # includes the live counter check: charged 123,000 nano by the sweeper
