"""Operational alerts: injected upstream errors (the fake upstream answering 500) make the error
rate, provider availability and breaker rules fire, once, on email, webhook and Slack; healthy
traffic afterwards makes them recover, with one "resolved" notice each. A failing webhook is
retried at the next evaluation without repeating the other channels; a stalled usage pipeline
fires its own alerts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import mail
from django.test import AsyncClient, override_settings
from django.utils import timezone

from gateway_project.alerts import ALERTS_KEY, ops_alerts_current, ops_alerts_evaluate
from gateway_project.celery import BEAT_HEARTBEAT_KEY
from providers.models import Model, ProviderKind
from routing.breakers import breaker_board
from tests.celery_workers import celery_worker_start, process_stop, wait_until
from tests.conftest import METRICS_AUTH
from tests.fake_upstream.fixtures import fake_upstream_thread  # noqa: F401
from tests.routing.support import caches_clear, fake_provider, model_on, route, tenant_key
from tests.usage.conftest import maker, usage_world  # noqa: F401
from tests.usage_helpers import usage_events_settled
from usage.drainer import DRAIN_HEARTBEAT_KEY
from usage.services import usage_events_write

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """A local HTTP endpoint that records JSON bodies; answers 500 to the first `fail_first`."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[tuple[str, dict]] = []
        self.fail_first = fail_first
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.calls += 1
                if receiver.calls <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append((self.path, orjson.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def of(self, path: str) -> list[dict]:
        return [body for p, body in self.bodies if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        r = Receiver(fail_first)
        r.thread.start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.server.shutdown()
        r.server.server_close()


def _channels(url: str, **extra):
    return override_settings(
        GATEWAY_OPS_ALERT_EMAILS=["oncall@example.com"],
        GATEWAY_OPS_ALERT_WEBHOOK_URL=f"{url}/hook",
        GATEWAY_OPS_ALERT_SLACK_WEBHOOK_URL=f"{url}/slack",
        **extra,
    )


async def _chat(client: AsyncClient, raw: str, n: int) -> list[int]:
    statuses = []
    for _ in range(n):
        response = await client.post(
            "/v1/chat/completions",
            {"model": "alert-chat", "messages": [{"role": "user", "content": "hi"}]},
            content_type="application/json",
            headers={"Authorization": f"Bearer {raw}"},
        )
        statuses.append(response.status_code)
    return statuses


async def test_alerts_fire_once_on_injected_upstream_errors_and_recover(
    fake_upstream_thread,  # noqa: F811
    receiver,
):
    hook = receiver()
    provider = await sync_to_async(fake_provider)(
        fake_upstream_thread, ProviderKind.OPENAI, name="alert-upstream"
    )
    # The fake upstream answers 500 to every call for this upstream model name.
    model = await sync_to_async(model_on)(provider, "alert-model", upstream="fault:500")
    await sync_to_async(route)("alert-chat", [model])
    _, _, raw = await sync_to_async(tenant_key)()
    caches_clear()
    breaker_board().reset()
    client = AsyncClient()
    threshold = settings.GATEWAY_BREAKER_MIN_VOLUME
    with _channels(hook.url, GATEWAY_OPS_ALERT_MIN_REQUESTS=5, GATEWAY_OPS_ALERT_ERROR_RATE=0.4):
        assert set(await _chat(client, raw, threshold)) == {502}
        await usage_events_settled(threshold)
        # The breaker opened, and /metrics says so.
        page = (await AsyncClient().get("/metrics", headers=METRICS_AUTH)).content.decode()
        assert (
            f'gateway_breaker_state{{model_id="{model.pk}",provider_id="{provider.pk}"}} 2.0'
            in page
        )

        result = await sync_to_async(ops_alerts_evaluate)()
        expected = {
            "GatewayHighErrorRate",
            f"ProviderUnavailable:{provider.pk}",
            f"ProviderBreakerOpen:{provider.pk}:{model.pk}",
        }
        assert set(result.fired) == expected == set(result.firing)
        hooks = hook.of("/hook")
        assert {b["key"] for b in hooks} == expected
        assert {b["type"] for b in hooks} == {"alert.firing"}
        assert all(b["summary"] and b["severity"] in ("warning", "critical") for b in hooks)
        slack = hook.of("/slack")
        assert len(slack) == 3 and all("[FIRING]" in b["text"] for b in slack)
        assert len(mail.outbox) == 3 and all("FIRING" in m.subject for m in mail.outbox)

        # Still failing: evaluated again, nothing is sent twice.
        again = await sync_to_async(ops_alerts_evaluate)()
        assert again.fired == [] and set(again.firing) == expected
        assert len(hook.bodies) == 6 and len(mail.outbox) == 3

        # The upstream recovers: healthy answers push every ratio under its threshold.
        await Model.objects.filter(pk=model.pk).aupdate(upstream_model="alert-model")
        caches_clear()
        # Breakers are shared through Redis: forget this deployment's there too (as its
        # cooldown and probe would, without waiting for them).
        shared = redis.Redis.from_url(settings.REDIS_URL)
        for name in shared.scan_iter(match="*h:breaker:*"):
            shared.delete(name)
        breaker_board().reset()
        assert set(await _chat(client, raw, 2 * threshold)) == {200}
        await usage_events_settled(3 * threshold)

        recovered = await sync_to_async(ops_alerts_evaluate)()
        assert set(recovered.resolved) == expected and recovered.firing == []
        resolved_hooks = [b for b in hook.of("/hook") if b["type"] == "alert.resolved"]
        assert {b["key"] for b in resolved_hooks} == expected
        assert all(b["resolved_at"] for b in resolved_hooks)
        assert sum("[RESOLVED]" in b["text"] for b in hook.of("/slack")) == 3
        assert sum("RESOLVED" in m.subject for m in mail.outbox) == 3
        assert redis.Redis.from_url(settings.REDIS_URL).hlen(ALERTS_KEY) == 0


def test_a_failing_webhook_is_retried_next_time_and_the_stalled_pipeline_alerts(receiver):
    hook = receiver(fail_first=2)  # the first two POSTs (webhook, then slack) answer 500
    client = redis.Redis.from_url(settings.REDIS_URL)
    old_ms = int((time.time() - 900) * 1000)
    client.xadd(settings.GATEWAY_USAGE_STREAM, {b"e": b"{}"}, id=f"{old_ms}-0")
    assert client.get(DRAIN_HEARTBEAT_KEY) is None
    with _channels(hook.url):
        first = ops_alerts_evaluate()
        assert set(first.fired) == {"UsageDrainLag", "UsageDrainStale"}
        # The first alert's webhook and Slack posts failed; the second alert's went out.
        assert len(mail.outbox) == 2
        assert [b["key"] for b in hook.of("/hook")] == ["UsageDrainStale"]

        second = ops_alerts_evaluate()
        assert second.fired == []
        # Only the channels that failed were tried again; email was not repeated.
        assert {b["key"] for b in hook.of("/hook")} == {"UsageDrainLag", "UsageDrainStale"}
        assert len(hook.of("/slack")) == 2 and len(mail.outbox) == 2

        client.delete(settings.GATEWAY_USAGE_STREAM)
        third = ops_alerts_evaluate()
        assert set(third.resolved) == {"UsageDrainLag", "UsageDrainStale"}
        assert sum(b["type"] == "alert.resolved" for b in hook.of("/hook")) == 2


def test_an_unreachable_webhook_never_stops_the_evaluation():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.xadd(
        settings.GATEWAY_USAGE_STREAM, {b"e": b"{}"}, id=f"{int((time.time() - 900) * 1000)}-0"
    )
    with override_settings(
        GATEWAY_OPS_ALERT_WEBHOOK_URL="http://127.0.0.1:1/hook",
        GATEWAY_OPS_ALERT_EMAILS=["oncall@example.com"],
    ):
        result = ops_alerts_evaluate()
    assert "UsageDrainLag" in result.fired
    assert len(mail.outbox) == 2
    stored = orjson.loads(client.hget(ALERTS_KEY, "UsageDrainLag"))
    assert stored["sent_firing"] == ["email"]


def test_p95_latency_rule_takes_the_95th_percentile_of_answered_requests(
    usage_world,  # noqa: F811
    maker,  # noqa: F811
):
    make = maker(usage_world["key_a"])
    recent = timezone.now() - timedelta(seconds=10)
    payloads = []
    for i in range(40):
        payload = make.payload(created_at=recent, tokens_in=10, tokens_out=5)
        payload["latency_ms"] = 1000.0 * (i + 1)  # 1 s ... 40 s
        payloads.append(payload)
    # A slow failure does not count: the rule is about answered requests.
    failed = make.payload(
        created_at=recent, tokens_in=10, tokens_out=0, outcome="error", status_code=502
    )
    failed["latency_ms"] = 900_000.0
    usage_events_write(payloads=[*payloads, failed])
    with override_settings(GATEWAY_OPS_ALERT_P95_LATENCY_SECONDS=37.5):
        alerts = {a.name: a for a in ops_alerts_current()}
    # The 95th percentile of 1..40 s is the 38th value (nearest rank).
    assert alerts["GatewayHighLatencyP95"].value == 38.0
    with override_settings(GATEWAY_OPS_ALERT_P95_LATENCY_SECONDS=38.0):
        assert "GatewayHighLatencyP95" not in {a.name for a in ops_alerts_current()}


def test_beat_down_alerts_while_a_worker_drains_and_recovers_when_beat_ticks():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(DRAIN_HEARTBEAT_KEY, orjson.dumps({"at": time.time(), "consumer": "w"}))
    with override_settings(GATEWAY_OPS_ALERT_EMAILS=["oncall@example.com"]):
        assert ops_alerts_evaluate().fired == ["CeleryBeatDown"]
        assert "never seen" in mail.outbox[0].body
        client.set(BEAT_HEARTBEAT_KEY, repr(time.time()))
        assert ops_alerts_evaluate().resolved == ["CeleryBeatDown"]


@pytest.mark.live_server_process
def test_a_worker_without_beat_sends_the_beat_down_alert_itself(receiver, tmp_path):
    hook = receiver()
    worker = celery_worker_start(
        settings.REDIS_URL,
        tmp_path,
        "alerting",
        beat=False,
        extra_env={
            "GATEWAY_OPS_ALERT_WEBHOOK_URL": f"{hook.url}/hook",
            "GATEWAY_OPS_ALERT_INTERVAL_SECONDS": "1",
        },
    )
    try:
        wait_until(
            lambda: any(b["key"] == "CeleryBeatDown" for b in hook.of("/hook")),
            timeout_s=90,
            what="the worker's drain thread to alert that beat is down",
            interval=0.1,
        )
    finally:
        process_stop(worker)
    [body] = hook.of("/hook")
    assert body["type"] == "alert.firing" and body["severity"] == "warning"
