"""The Celery app, the worker's usage-drain bootstep and beat's heartbeat.

* Every worker process (`celery -A gateway_project worker`) starts a `UsageDrainer` thread in
  stream mode (`GATEWAY_USAGE_DRAIN_IN_WORKER`), so usage keeps flowing into PostgreSQL when
  beat is down; beat's periodic drain task stays as a second, harmless path.
* Beat (`celery -A gateway_project beat`, or a worker's `-B`) runs `HeartbeatScheduler`, which
  records its own liveness in Redis (`BEAT_HEARTBEAT_KEY`) on every tick; `/health/ready`,
  the `gateway_beat_heartbeat_age_seconds` metric and the beat alert read it.
"""

from __future__ import annotations

import logging
import os
import time

from celery import Celery, bootsteps
from celery.beat import PersistentScheduler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

logger = logging.getLogger("gateway.celery")

BEAT_HEARTBEAT_KEY = "gw:beat:heartbeat"
_BEAT_HEARTBEAT_EVERY_S = 5.0
_BEAT_HEARTBEAT_TTL_S = 300

app = Celery("gateway_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class UsageDrainStep(bootsteps.StartStopStep):
    """Starts the usage drain thread with the worker (after the pool forked its children) and
    stops it, at the end of its current slice, on shutdown."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.drainer = None

    def include_if(self, parent) -> bool:
        from django.conf import settings

        return bool(
            settings.GATEWAY_USAGE_DRAIN_IN_WORKER
            and settings.REDIS_URL
            and settings.GATEWAY_USAGE_WRITE_MODE == "stream"
        )

    def start(self, parent) -> None:
        from usage.drainer import UsageDrainer

        self.drainer = UsageDrainer(after_slice=alerts_when_beat_is_down)
        self.drainer.start()

    def stop(self, parent) -> None:
        if self.drainer is not None:
            self.drainer.stop()
            self.drainer = None

    def shutdown(self, parent) -> None:
        self.stop(parent)


app.steps["worker"].add(UsageDrainStep)

_alerts_checked_at = 0.0


def alerts_when_beat_is_down() -> None:
    """Beat evaluates the alert rules; when beat is not alive, the workers' drain threads do
    (at most every GATEWAY_OPS_ALERT_INTERVAL_SECONDS per process; a Redis lock and the firing
    set keep several workers from notifying twice). So "beat is down" itself gets alerted."""
    global _alerts_checked_at
    from django.conf import settings

    now = time.monotonic()
    if now - _alerts_checked_at < settings.GATEWAY_OPS_ALERT_INTERVAL_SECONDS:
        return
    _alerts_checked_at = now
    from gateway_project.alerts import ops_alerts_evaluate
    from gateway_project.ops import pipeline_status_get

    status = pipeline_status_get()
    if status is not None and not status.beat_alive:
        ops_alerts_evaluate()


class HeartbeatScheduler(PersistentScheduler):
    """PersistentScheduler that also says "beat is alive" in Redis, at most every 5 s."""

    _last_beat = 0.0
    _redis = None

    def _heartbeat(self) -> None:
        from django.conf import settings

        if not settings.REDIS_URL:
            return
        now = time.time()
        if now - self._last_beat < _BEAT_HEARTBEAT_EVERY_S:
            return
        self._last_beat = now
        try:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(
                    settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
                )
            self._redis.set(BEAT_HEARTBEAT_KEY, repr(now), ex=_BEAT_HEARTBEAT_TTL_S)
        except Exception:
            # Never let the heartbeat stop the schedule; a missing beat shows as stale.
            logger.warning("celery.beat_heartbeat_failed", exc_info=True)

    def tick(self, *args, **kwargs):
        self._heartbeat()
        return min(super().tick(*args, **kwargs), _BEAT_HEARTBEAT_EVERY_S)
