"""Operational alerts evaluated inside the gateway by Celery beat (`ops_alerts_evaluate`, every
GATEWAY_OPS_ALERT_INTERVAL_SECONDS), delivered by email, webhook and Slack-compatible webhook.
The same rules ship as Prometheus alerting rules (deploy/prometheus/alerts.yml, same names).

Rules (window: GATEWAY_OPS_ALERT_WINDOW_SECONDS, from PostgreSQL usage events and attempts,
and from Redis for the usage pipeline):

| alert | fires when |
| --- | --- |
| GatewayHighErrorRate | errors / (ok + errors) over the window > GATEWAY_OPS_ALERT_ERROR_RATE, with at least GATEWAY_OPS_ALERT_MIN_REQUESTS requests |
| GatewayHighLatencyP95 | p95 latency of answered requests > GATEWAY_OPS_ALERT_P95_LATENCY_SECONDS (same minimum) |
| ProviderUnavailable | a provider's failed upstream attempts / attempts > GATEWAY_OPS_ALERT_PROVIDER_FAILURE_RATIO (at least 5 attempts) |
| ProviderBreakerOpen | the last GATEWAY_BREAKER_MIN_VOLUME attempts on a deployment (provider, model) in the window all failed, which is enough to open its breaker (more than GATEWAY_BREAKER_FAILURE_RATIO of at least that many calls) |
| UsageBacklogGrowing | usage events waiting in Redis > GATEWAY_OPS_ALERT_BACKLOG |
| UsageDrainLag | the oldest waiting event is older than GATEWAY_OPS_ALERT_DRAIN_LAG_SECONDS |
| UsageDrainStale | events wait and no worker's drain reported for GATEWAY_OPS_HEARTBEAT_STALE_SECONDS |
| CeleryBeatDown | a worker's drain is alive but beat has not ticked for GATEWAY_OPS_HEARTBEAT_STALE_SECONDS (evaluated by the workers' drain threads while beat is down) |

Budget thresholds are tenants' own alerts (tenants.services.budget_alerts_record), sent to each
tenant's address; they are not repeated here.

De-duplication: the firing set lives in Redis (`gw:ops:alerts`): a notification goes out when
an alert starts firing and when it recovers ("resolved"), never while it keeps firing. A
channel that failed is retried at the next evaluation. Evaluations are serialized by a lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone
from redis.exceptions import LockError

from gateway_project.ops import _sync_client, pipeline_status_get
from usage.models import Outcome, UsageAttempt, UsageEvent

logger = logging.getLogger("gateway.alerts")

ALERTS_KEY = "gw:ops:alerts"
LOCK_KEY = "gw:ops:alerts:lock"
CHANNELS = ("email", "webhook", "slack")
_MIN_PROVIDER_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    key: str  # name plus the subject (provider, deployment), unique among firing alerts
    severity: str
    summary: str
    value: float
    threshold: float


# -- rules ------------------------------------------------------------------------------------
def _failed(q_prefix: str = "") -> Q:
    """An upstream answer that says "unwell" (what breakers count): 5xx, 429, or no answer."""
    status = f"{q_prefix}status_code"
    return Q(**{f"{status}__gte": 500}) | Q(**{status: 429}) | Q(**{status: 0})


def _p95_seconds(events) -> float | None:
    if connection.vendor == "postgresql":
        sql, params = events.values("latency_ms").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM ({sql}) t",  # noqa: S608 - Django-built subquery
                params,
            )
            row = cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0]) / 1000
    values = sorted(events.values_list("latency_ms", flat=True))
    if not values:
        return None
    return float(values[max(0, int(len(values) * 0.95 + 0.999999) - 1)]) / 1000


def _traffic_alerts(since: datetime) -> list[Alert]:
    alerts: list[Alert] = []
    events = UsageEvent.objects.filter(
        created_at__gte=since, outcome__in=(Outcome.OK, Outcome.ERROR)
    )
    counts = events.aggregate(
        total=Count("id"), errors=Count("id", filter=Q(outcome=Outcome.ERROR))
    )
    total, errors = counts["total"], counts["errors"]
    if total >= settings.GATEWAY_OPS_ALERT_MIN_REQUESTS:
        ratio = errors / total
        if ratio > settings.GATEWAY_OPS_ALERT_ERROR_RATE:
            alerts.append(
                Alert(
                    name="GatewayHighErrorRate",
                    key="GatewayHighErrorRate",
                    severity="warning",
                    summary=f"{errors} of {total} requests failed ({ratio:.1%}) in the last "
                    f"{settings.GATEWAY_OPS_ALERT_WINDOW_SECONDS:.0f} s",
                    value=ratio,
                    threshold=settings.GATEWAY_OPS_ALERT_ERROR_RATE,
                )
            )
        p95 = _p95_seconds(events.filter(outcome=Outcome.OK))
        if p95 is not None and p95 > settings.GATEWAY_OPS_ALERT_P95_LATENCY_SECONDS:
            alerts.append(
                Alert(
                    name="GatewayHighLatencyP95",
                    key="GatewayHighLatencyP95",
                    severity="warning",
                    summary=f"p95 latency is {p95:.2f} s",
                    value=p95,
                    threshold=settings.GATEWAY_OPS_ALERT_P95_LATENCY_SECONDS,
                )
            )
    return alerts


def _provider_names(ids) -> dict[int, str]:
    from providers.models import Provider

    return dict(Provider.objects.filter(pk__in=list(ids)).values_list("pk", "name"))


def _provider_alerts(since: datetime) -> list[Alert]:
    alerts: list[Alert] = []
    attempts = UsageAttempt.objects.filter(event__created_at__gte=since, provider_id__isnull=False)
    per_provider = list(
        attempts.values("provider_id").annotate(
            total=Count("id"), failed=Count("id", filter=_failed())
        )
    )
    threshold = settings.GATEWAY_BREAKER_MIN_VOLUME
    # The latest attempts per deployment, newest first (bounded: the window, N per deployment).
    recent: dict[tuple[int, int], list[bool]] = {}
    for provider_id, model_id, status in attempts.order_by("-event__created_at", "-id").values_list(
        "provider_id", "model_id", "status_code"
    )[:20_000]:
        outcomes = recent.setdefault((provider_id, model_id or 0), [])
        if len(outcomes) < threshold:
            outcomes.append(status >= 500 or status in (0, 429))
    names = _provider_names({row["provider_id"] for row in per_provider} | {k[0] for k in recent})
    for row in per_provider:
        ratio = row["failed"] / row["total"]
        if (
            row["total"] >= _MIN_PROVIDER_ATTEMPTS
            and ratio > settings.GATEWAY_OPS_ALERT_PROVIDER_FAILURE_RATIO
        ):
            name = names.get(row["provider_id"], str(row["provider_id"]))
            alerts.append(
                Alert(
                    name="ProviderUnavailable",
                    key=f"ProviderUnavailable:{row['provider_id']}",
                    severity="critical",
                    summary=f"Provider {name}: {row['failed']} of {row['total']} upstream "
                    f"attempts failed ({ratio:.0%})",
                    value=ratio,
                    threshold=settings.GATEWAY_OPS_ALERT_PROVIDER_FAILURE_RATIO,
                )
            )
    for (provider_id, model_id), outcomes in sorted(recent.items()):
        if len(outcomes) >= threshold and all(outcomes):
            name = names.get(provider_id, str(provider_id))
            alerts.append(
                Alert(
                    name="ProviderBreakerOpen",
                    key=f"ProviderBreakerOpen:{provider_id}:{model_id}",
                    severity="warning",
                    summary=f"Provider {name} model {model_id}: the last {threshold} attempts "
                    "failed; its circuit breaker is open",
                    value=float(threshold),
                    threshold=float(threshold),
                )
            )
    return alerts


def _pipeline_alerts() -> list[Alert]:
    status = pipeline_status_get()
    if status is None:
        return []
    alerts: list[Alert] = []
    if status.backlog > settings.GATEWAY_OPS_ALERT_BACKLOG:
        alerts.append(
            Alert(
                name="UsageBacklogGrowing",
                key="UsageBacklogGrowing",
                severity="warning",
                summary=f"{status.backlog} usage events wait in Redis",
                value=float(status.backlog),
                threshold=float(settings.GATEWAY_OPS_ALERT_BACKLOG),
            )
        )
    if status.lag_seconds > settings.GATEWAY_OPS_ALERT_DRAIN_LAG_SECONDS:
        alerts.append(
            Alert(
                name="UsageDrainLag",
                key="UsageDrainLag",
                severity="critical",
                summary=f"The oldest undrained usage event is {status.lag_seconds:.0f} s old",
                value=status.lag_seconds,
                threshold=settings.GATEWAY_OPS_ALERT_DRAIN_LAG_SECONDS,
            )
        )
    if status.drain_alive and not status.beat_alive:
        age = status.beat_heartbeat_age_seconds
        alerts.append(
            Alert(
                name="CeleryBeatDown",
                key="CeleryBeatDown",
                severity="warning",
                summary="Celery beat is not running "
                + ("(never seen)" if age is None else f"(last tick {age:.0f} s ago)")
                + ": rollups, price changes and retention stop; usage still drains",
                value=-1.0 if age is None else age,
                threshold=settings.GATEWAY_OPS_HEARTBEAT_STALE_SECONDS,
            )
        )
    if status.backlog and not status.drain_alive:
        age = status.drain_heartbeat_age_seconds
        alerts.append(
            Alert(
                name="UsageDrainStale",
                key="UsageDrainStale",
                severity="critical",
                summary="No Celery worker drains the usage stream "
                + ("(never seen)" if age is None else f"(last drain {age:.0f} s ago)"),
                value=-1.0 if age is None else age,
                threshold=settings.GATEWAY_OPS_HEARTBEAT_STALE_SECONDS,
            )
        )
    return alerts


def ops_alerts_current(*, now: datetime | None = None) -> list[Alert]:
    """Every rule, evaluated once."""
    since = (now or timezone.now()) - timedelta(seconds=settings.GATEWAY_OPS_ALERT_WINDOW_SECONDS)
    return [*_traffic_alerts(since), *_provider_alerts(since), *_pipeline_alerts()]


# -- delivery ---------------------------------------------------------------------------------
def _channels() -> list[str]:
    configured = []
    if settings.GATEWAY_OPS_ALERT_EMAILS:
        configured.append("email")
    if settings.GATEWAY_OPS_ALERT_WEBHOOK_URL:
        configured.append("webhook")
    if settings.GATEWAY_OPS_ALERT_SLACK_WEBHOOK_URL:
        configured.append("slack")
    return configured


def alert_payload(record: dict[str, Any], *, state: str) -> dict[str, Any]:
    return {
        "type": f"alert.{state}",
        "alert": record["name"],
        "key": record["key"],
        "severity": record["severity"],
        "summary": record["summary"],
        "value": record["value"],
        "threshold": record["threshold"],
        "fired_at": record["fired_at"],
        "resolved_at": record.get("resolved_at"),
        "source": settings.GATEWAY_OPS_ALERT_SOURCE,
    }


def _slack_body(payload: dict[str, Any]) -> dict[str, Any]:
    firing = payload["type"] == "alert.firing"
    icon = ":rotating_light:" if firing else ":white_check_mark:"
    word = "FIRING" if firing else "RESOLVED"
    text = f"{icon} [{word}] {payload['alert']} ({payload['severity']}): {payload['summary']}"
    return {
        "text": text,
        "attachments": [
            {
                "color": "#d62728" if firing else "#2ca02c",
                "fields": [
                    {"title": "alert", "value": payload["key"], "short": True},
                    {"title": "source", "value": payload["source"], "short": True},
                ],
            }
        ],
    }


def _post_json(url: str, body: dict[str, Any]) -> None:
    # Imported here: only the Celery task delivers, and httpx costs web workers memory.
    import httpx

    timeout = settings.GATEWAY_ALERT_WEBHOOK_TIMEOUT_SECONDS
    with httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)), follow_redirects=False
    ) as client:
        response = client.post(
            url, content=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
    response.raise_for_status()


def _deliver(channel: str, payload: dict[str, Any]) -> None:
    if channel == "email":
        word = "FIRING" if payload["type"] == "alert.firing" else "RESOLVED"
        send_mail(
            f"[gateway] {word}: {payload['alert']} ({payload['severity']})",
            f"{payload['summary']}\n\nalert: {payload['key']}\nvalue: {payload['value']}\n"
            f"threshold: {payload['threshold']}\nfired at: {payload['fired_at']}\n"
            + (f"resolved at: {payload['resolved_at']}\n" if payload["resolved_at"] else ""),
            settings.DEFAULT_FROM_EMAIL,
            list(settings.GATEWAY_OPS_ALERT_EMAILS),
        )
    elif channel == "webhook":
        _post_json(settings.GATEWAY_OPS_ALERT_WEBHOOK_URL, payload)
    elif channel == "slack":
        _post_json(settings.GATEWAY_OPS_ALERT_SLACK_WEBHOOK_URL, _slack_body(payload))


def _send_pending(record: dict[str, Any], *, state: str) -> None:
    """Send the notification for `state` on every channel that has not had it yet."""
    sent = record.setdefault(f"sent_{state}", [])
    payload = alert_payload(record, state=state)
    for channel in _channels():
        if channel in sent:
            continue
        try:
            _deliver(channel, payload)
        except Exception as exc:  # noqa: BLE001 - one channel down must not stop the others
            logger.warning(
                "alerts.delivery_failed",
                extra={"alert": record["key"], "channel": channel, "error": type(exc).__name__},
            )
            continue
        sent.append(channel)


# -- evaluation -------------------------------------------------------------------------------
@dataclass(slots=True)
class EvaluationResult:
    firing: list[str]
    fired: list[str]
    resolved: list[str]


def ops_alerts_evaluate(*, now: datetime | None = None) -> EvaluationResult:
    """Evaluate every rule, notify new and recovered alerts, remember what fires."""
    client = _sync_client()
    lock = client.lock(LOCK_KEY, timeout=120, blocking_timeout=0)
    if not lock.acquire(blocking=False):
        return EvaluationResult(firing=[], fired=[], resolved=[])
    try:
        current = {alert.key: alert for alert in ops_alerts_current(now=now)}
        stored = {
            (k.decode() if isinstance(k, bytes) else k): orjson.loads(v)
            for k, v in client.hgetall(ALERTS_KEY).items()
        }
        fired, resolved = [], []
        stamp = (now or timezone.now()).isoformat()
        for key, alert in current.items():
            record = stored.get(key)
            if record is None or "resolved_at" in record:  # new, or firing again
                record = {
                    "name": alert.name,
                    "key": key,
                    "severity": alert.severity,
                    "summary": alert.summary,
                    "value": alert.value,
                    "threshold": alert.threshold,
                    "fired_at": stamp,
                }
                fired.append(key)
                logger.warning("alerts.firing", extra={"alert": key, "summary": alert.summary})
            # A firing alert is notified once; only channels that failed are tried again.
            _send_pending(record, state="firing")
            client.hset(ALERTS_KEY, key, orjson.dumps(record))
        for key, record in stored.items():
            if key in current:
                continue
            record.setdefault("resolved_at", stamp)
            _send_pending(record, state="resolved")
            if set(_channels()) <= set(record.get("sent_resolved", [])):
                client.hdel(ALERTS_KEY, key)
            else:
                client.hset(ALERTS_KEY, key, orjson.dumps(record))
            if record["resolved_at"] == stamp:
                resolved.append(key)
                logger.info("alerts.resolved", extra={"alert": key})
        return EvaluationResult(firing=sorted(current), fired=fired, resolved=resolved)
    finally:
        try:
            lock.release()
        except LockError:
            logger.warning("alerts.lock_expired")


@shared_task(name="gateway_project.alerts.ops_alerts_evaluate", ignore_result=True)
def ops_alerts_evaluate_task() -> dict[str, list[str]]:
    if not settings.REDIS_URL:
        return {"firing": [], "fired": [], "resolved": []}
    started = time.monotonic()
    result = ops_alerts_evaluate()
    logger.info(
        "alerts.evaluated",
        extra={
            "firing": len(result.firing),
            "fired": len(result.fired),
            "resolved": len(result.resolved),
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return {"firing": result.firing, "fired": result.fired, "resolved": result.resolved}
