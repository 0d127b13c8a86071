"""The long-lived usage drain of a Celery worker (stream mode).

Every worker process runs one `UsageDrainer` thread (started by the worker bootstep in
gateway_project/celery.py), so usage reaches PostgreSQL whenever a worker runs, with or without
beat. The thread drains in short slices (`usage_stream_drain(max_seconds=...)`, whose blocking
read stays below redis-py's 5 s socket_timeout), writes a heartbeat after each slice, and stops
at the end of the current slice when the worker shuts down. Several workers share the consumer
group: each entry goes to one of them, and writes are idempotent on request id anyway.

Fork safety: the prefork pool forks children from the process this thread lives in. A child
must not close (or garbage-collect) the PostgreSQL pool it inherited, or the pool would
terminate connections the parent's thread still uses; `_forget_inherited_db_pools` runs in
the child right after fork and drops (but keeps alive) the inherited pool objects."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import orjson
from django.conf import settings
from django.db import close_old_connections

from usage.stream import consumer_name, stream_client, usage_stream_drain

logger = logging.getLogger("gateway.usage")

DRAIN_HEARTBEAT_KEY = "gw:usage:drain:heartbeat"
_HEARTBEAT_TTL_S = 300
_RETRY_MAX_DELAY_S = 10.0

# Pools inherited across fork, kept referenced so their __del__ never runs in the child.
_inherited_pools: list[object] = []


def _forget_inherited_db_pools() -> None:
    try:
        from django.db.backends.postgresql.base import DatabaseWrapper
    except ImportError:  # pragma: no cover - PostgreSQL backend not installed
        return
    pools = DatabaseWrapper._connection_pools
    if pools:
        _inherited_pools.extend(pools.values())
        pools.clear()


def usage_drain_heartbeat_write(*, consumer: str, written: int, client=None) -> None:
    """Record that a drain slice finished (health and the backlog alert read it)."""
    client = client or stream_client()
    value = orjson.dumps({"at": time.time(), "consumer": consumer, "written": written})
    client.set(DRAIN_HEARTBEAT_KEY, value, ex=_HEARTBEAT_TTL_S)


class UsageDrainer:
    """One background thread that drains the usage stream until stopped."""

    def __init__(
        self,
        *,
        slice_seconds: float | None = None,
        after_slice: Callable[[], None] | None = None,
    ) -> None:
        self.slice_seconds = (
            settings.GATEWAY_USAGE_DRAIN_SLICE_SECONDS if slice_seconds is None else slice_seconds
        )
        # Called after every slice (gateway_project wires the alert rules here for when beat
        # is down); its failures are logged and never stop the drain.
        self.after_slice = after_slice
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.consumer = ""

    def start(self) -> None:
        if self._thread is not None:
            return
        os.register_at_fork(after_in_child=_forget_inherited_db_pools)
        self._thread = threading.Thread(target=self._run, name="usage-drainer", daemon=True)
        self._thread.start()
        logger.info("usage.drainer_started", extra={"slice_seconds": self.slice_seconds})

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            # The pid is read per slice: consumer names must differ between processes.
            self.consumer = consumer_name()
            try:
                result = usage_stream_drain(consumer=self.consumer, max_seconds=self.slice_seconds)
                usage_drain_heartbeat_write(consumer=self.consumer, written=result.written)
                delay = 0.5
                if self.after_slice is not None:
                    self._after_slice()
            except Exception:
                # Redis or PostgreSQL away: entries stay in the stream (pending ones are
                # claimed again later); retry with capped backoff, never give up.
                logger.exception("usage.drainer_slice_failed")
                self._stop.wait(delay)
                delay = min(_RETRY_MAX_DELAY_S, delay * 2)
            finally:
                close_old_connections()
        logger.info("usage.drainer_stopped")

    def _after_slice(self) -> None:
        try:
            self.after_slice()
        except Exception:
            logger.exception("usage.drainer_after_slice_failed")
