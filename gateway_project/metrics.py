"""GET /metrics: every process's samples (multiprocess mode when PROMETHEUS_MULTIPROC_DIR is
set, see routing/metrics.py) plus gauges read from Redis at scrape time, which are the same
whichever worker answers: usage-stream backlog and drain lag, drain and beat heartbeats,
open budget reservations (holds).

Per-route and per-model counts and cost are not public: with GATEWAY_METRICS_TOKEN set, a
scrape must send `Authorization: Bearer <token>` (compared in constant time); without it the
endpoint answers 404, except with DEBUG on (development)."""

from __future__ import annotations

import hmac
import logging
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway_project.ops import _sync_client, pipeline_status_get
from routing.metrics import upstream_pools_observe
from tenants.state.redis import stream_hash_tag

logger = logging.getLogger("gateway.metrics")

_HOLD_SCAN_LIMIT = 20_000


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def reservation_holds_count(client) -> int:
    """Open budget reservations: entries of the tenant-scope reservation hashes (each hold is
    also in its key scope; counting one scope counts each hold once). Bounded scan."""
    tag = stream_hash_tag(settings.GATEWAY_USAGE_STREAM)
    pattern = f"gw:{{{tag}}}:t:*:resv:*"  # the state store's key prefix, tenant scope
    keys = []
    for seen, key in enumerate(client.scan_iter(match=pattern, count=1000)):
        if seen >= _HOLD_SCAN_LIMIT:
            break
        name = key.decode() if isinstance(key, bytes) else key
        if ":k:" in name or name.endswith((":exp", ":sum")):
            continue
        keys.append(name)
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for name in keys:
        pipe.hlen(name)
    return sum(int(n) for n in pipe.execute(raise_on_error=False) if isinstance(n, int))


_BUDGET_TENANTS_MAX = 1000


def tenant_budget_ratios() -> dict[int, float]:
    """Spend / budget of each tenant with a budget, in its current period (state-store counter,
    else PostgreSQL). Only with GATEWAY_METRICS_TENANT_LABEL (one series per tenant)."""
    from asgiref.sync import async_to_sync

    from tenants.admission import budget_status_get
    from tenants.models import Tenant

    ratios: dict[int, float] = {}
    tenants = Tenant.objects.filter(budget_usd__gt=0).order_by("pk")[:_BUDGET_TENANTS_MAX]
    for tenant in tenants:
        status = async_to_sync(budget_status_get)(
            scope="tenant", scope_id=tenant.pk, tenant=tenant, owner=tenant
        )
        ratios[tenant.pk] = float(status["spend_usd"] / tenant.budget_usd)
    return ratios


class OpsCollector:
    """Scrape-time gauges from Redis (absent in embedded mode) and, with the tenant label
    turned on, each tenant's budget use."""

    def collect(self):
        if settings.GATEWAY_METRICS_TENANT_LABEL:
            family = GaugeMetricFamily(
                "gateway_tenant_budget_used_ratio",
                "Spend over budget in the current budget period, by tenant id",
                labels=["tenant"],
            )
            try:
                for tenant_id, ratio in tenant_budget_ratios().items():
                    family.add_metric([str(tenant_id)], ratio)
            except Exception:  # noqa: BLE001 - a scrape never fails on one part
                logger.warning("metrics.budget_ratios_failed", exc_info=True)
            yield family
        if not settings.REDIS_URL:
            return
        try:
            status = pipeline_status_get()
            holds = reservation_holds_count(_sync_client())
        except Exception:  # noqa: BLE001 - Redis away: the scrape still returns the rest
            logger.warning("metrics.redis_unavailable", exc_info=True)
            yield GaugeMetricFamily("gateway_redis_up", "Redis answered this scrape", value=0)
            return
        yield GaugeMetricFamily("gateway_redis_up", "Redis answered this scrape", value=1)
        if status is None:
            return
        yield GaugeMetricFamily(
            "gateway_usage_stream_backlog",
            "Usage events in the Redis stream, not yet in PostgreSQL",
            value=status.backlog,
        )
        yield GaugeMetricFamily(
            "gateway_usage_stream_pending",
            "Usage events delivered to a drain and not yet acknowledged",
            value=status.pending,
        )
        yield GaugeMetricFamily(
            "gateway_usage_drain_lag_seconds",
            "Age of the oldest usage event not yet in PostgreSQL (0 when drained)",
            value=status.lag_seconds,
        )
        yield GaugeMetricFamily(
            "gateway_usage_dead_letters",
            "Usage events set aside as unwritable (dead-letter stream length)",
            value=status.dead_letters,
        )
        # -1: never seen (or expired after 5 minutes of silence).
        yield GaugeMetricFamily(
            "gateway_usage_drain_heartbeat_age_seconds",
            "Seconds since a worker's usage drain last finished a slice (-1: never)",
            value=-1
            if status.drain_heartbeat_age_seconds is None
            else status.drain_heartbeat_age_seconds,
        )
        yield GaugeMetricFamily(
            "gateway_beat_heartbeat_age_seconds",
            "Seconds since Celery beat last ticked (-1: never)",
            value=-1
            if status.beat_heartbeat_age_seconds is None
            else status.beat_heartbeat_age_seconds,
        )
        yield GaugeMetricFamily(
            "gateway_reservation_holds",
            "Budget reservations held by requests in flight",
            value=holds,
        )


_ops_registry = CollectorRegistry(auto_describe=False)
_ops_registry.register(OpsCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.GATEWAY_METRICS_TOKEN
    if not token:
        if settings.DEBUG:
            return _metrics_response()
        return HttpResponse("Not Found", status=404, content_type="text/plain")
    presented = request.headers.get("Authorization", "")
    scheme, _, value = presented.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), token.encode()
    ):
        response = HttpResponse("Unauthorized", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return _metrics_response()


def _metrics_response() -> HttpResponse:
    upstream_pools_observe(force=True)
    if multiprocess_enabled():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    body = generate_latest(registry) + generate_latest(_ops_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def metrics_process_exit() -> None:
    """Drop this process's live-gauge files (breakers, pools) on graceful shutdown."""
    if multiprocess_enabled():
        try:
            mark_process_dead(os.getpid())
        except OSError:
            logger.warning("metrics.mark_process_dead_failed", exc_info=True)
