"""What the process knows about a database outage (issue 14, item 7).

After a database read fails on the request path, the hot-path readers (key policies in
tenants.selectors, the routing snapshot in routing.snapshot) stop waiting for the database:
they serve their last good copy (bounded by GATEWAY_STALE_MAX_SECONDS) or fail at once (503),
and one background probe at a time, at most every GATEWAY_DB_RETRY_SECONDS, finds out when
the database is back. So an outage costs each request nothing more than a dictionary lookup,
instead of a wait for a connection that will not come."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.db import Error as DbError

logger = logging.getLogger("gateway.tenants")

# A probe that never reported back (its event loop went away) stops blocking others after this.
_PROBE_STALE_S = 30.0


class DatabaseOutage:
    def __init__(self) -> None:
        self.down_since: float | None = None
        self._next_probe = 0.0
        self._probing_since: float | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            logger.warning("database.outage_started", extra={"error_class": type(error).__name__})
        self._next_probe = now + settings.GATEWAY_DB_RETRY_SECONDS

    def recovered(self) -> None:
        if self.down_since is not None:
            logger.warning(
                "database.outage_ended",
                extra={"down_s": round(time.monotonic() - self.down_since, 1)},
            )
        self.reset()

    def reset(self) -> None:
        self.down_since = None
        self._next_probe = 0.0
        self._probing_since = None

    def probe(self, attempt: Callable[[], Awaitable[object]]) -> None:
        """Run `attempt` (a database read) in the background unless a probe is running or the
        last one failed less than GATEWAY_DB_RETRY_SECONDS ago; its success ends the outage."""
        now = time.monotonic()
        if self._probing_since is not None and now - self._probing_since < _PROBE_STALE_S:
            return
        if now < self._next_probe:
            return
        self._probing_since = now

        async def run() -> None:
            try:
                await attempt()
            except DbError as error:
                self._next_probe = time.monotonic() + settings.GATEWAY_DB_RETRY_SECONDS
                logger.info("database.probe_failed", extra={"error_class": type(error).__name__})
            except Exception:
                self._next_probe = time.monotonic() + settings.GATEWAY_DB_RETRY_SECONDS
                logger.warning("database.probe_error", exc_info=True)
            else:
                self.recovered()
            finally:
                self._probing_since = None

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


database_outage = DatabaseOutage()
