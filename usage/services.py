"""Writes of usage events. The request path hands over a plain dict (built by
routing.services.usage_event_payload); this module turns it into rows, idempotently on request
id, either straight from the process (direct mode: a bounded queue and a background writer) or
through the Redis stream that Celery drains (stream mode, see usage.stream)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import (
    DataError,
    IntegrityError,
    close_old_connections,
    connection,
    transaction,
)
from django.utils import timezone

from usage.models import Outcome, UsageAttempt, UsageEvent

logger = logging.getLogger("gateway.usage")

# Columns written from the payload, in insert order (request_id and the times come first).
_PAYLOAD_COLUMNS = (
    "client_request_id",
    "tenant_id",
    "api_key_id",
    "route",
    "model",
    "model_id",
    "provider_id",
    "upstream_model",
    "endpoint",
    "stream",
    "tokens_in",
    "tokens_out",
    "cache_read_tokens",
    "cache_write_tokens",
    "usage_estimated",
    "input_price_per_mtok",
    "output_price_per_mtok",
    "cost_usd",
    "response_cache_saved_usd",
    "latency_ms",
    "ttft_ms",
    "status_code",
    "outcome",
    "error_type",
    "fallbacks",
)
_DECIMAL_COLUMNS = frozenset(
    {"input_price_per_mtok", "output_price_per_mtok", "cost_usd", "response_cache_saved_usd"}
)
_INT_COLUMNS = frozenset(
    {
        "tenant_id",
        "api_key_id",
        "model_id",
        "provider_id",
        "tokens_in",
        "tokens_out",
        "cache_read_tokens",
        "cache_write_tokens",
        "status_code",
        "fallbacks",
    }
)
_COLUMNS = ("request_id", "created_at", "ingested_at", *_PAYLOAD_COLUMNS)
_WRITE_CHUNK = 500


class UsagePayloadInvalid(ValueError):
    """A payload that can never become a row (missing request id, unparsable numbers...)."""


@dataclass(slots=True)
class WriteReport:
    written: int = 0
    rejected: list[tuple[dict[str, Any], str]] = field(default_factory=list)


def _parse_created_at(raw: Any) -> datetime:
    value = datetime.fromisoformat(raw) if isinstance(raw, str) else raw
    if not isinstance(value, datetime):
        raise UsagePayloadInvalid("created_at is not a datetime")
    if timezone.is_naive(value):
        raise UsagePayloadInvalid("created_at has no timezone")
    return value


def usage_event_values(payload: dict[str, Any], *, ingested_at: datetime) -> dict[str, Any]:
    """The column values of one event, validated; raises UsagePayloadInvalid."""
    request_id = payload.get("request_id")
    if not request_id or not isinstance(request_id, str) or len(request_id) > 64:
        raise UsagePayloadInvalid("request_id missing or too long")
    values: dict[str, Any] = {
        "request_id": request_id,
        "created_at": _parse_created_at(payload.get("created_at")),
        "ingested_at": ingested_at,
    }
    for name in _PAYLOAD_COLUMNS:
        model_field = UsageEvent._meta.get_field(name)
        raw = payload.get(name)
        if raw is None:
            values[name] = None if model_field.null else model_field.get_default()
            continue
        try:
            if name in _DECIMAL_COLUMNS:
                # Through str: a float here would already have drifted; strings are exact.
                value: Any = Decimal(str(raw))
                if not value.is_finite():
                    raise UsagePayloadInvalid(f"{name} is not finite")
            elif name in _INT_COLUMNS:
                value = int(raw)
            elif isinstance(raw, str):
                # PostgreSQL text cannot hold NUL: a client-chosen name (the requested model,
                # a client request id) with one would lose the whole event.
                value = raw.replace("\x00", "\ufffd")
            else:
                value = raw
        except (InvalidOperation, TypeError, ValueError) as exc:
            raise UsagePayloadInvalid(f"{name}: {exc}") from exc
        values[name] = value
    if values["outcome"] not in Outcome.values:
        raise UsagePayloadInvalid("unknown outcome")
    return values


def usage_event_build(payload: dict[str, Any]) -> UsageEvent:
    return UsageEvent(**usage_event_values(payload, ingested_at=timezone.now()))


# Array element types for the PostgreSQL path. Text and unconstrained numbers on purpose: the
# assignment cast into the column then raises on an over-long string or an out-of-range
# integer instead of the silent truncation an explicit varchar(n) cast would do.
_PG_ARRAY_TYPES = {
    "CharField": "text",
    "DateTimeField": "timestamptz",
    "BigIntegerField": "bigint",
    "PositiveIntegerField": "bigint",
    "PositiveSmallIntegerField": "bigint",
    "BooleanField": "boolean",
    "DecimalField": "numeric",
    "FloatField": "float8",
    "ForeignKey": "bigint",
}


def _insert_sql_pg(table_model, columns: tuple[str, ...], returning: str) -> str:
    fields = [table_model._meta.get_field(name) for name in columns]
    table = connection.ops.quote_name(table_model._meta.db_table)
    names = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    arrays = ", ".join(f"%s::{_PG_ARRAY_TYPES[f.get_internal_type()]}[]" for f in fields)
    conflict = " ON CONFLICT DO NOTHING" + (f" RETURNING {returning}" if returning else "")
    return f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}){conflict}"  # noqa: S608


def _insert_rows(rows: list[dict[str, Any]]) -> dict[str, int]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: the returned ids are exactly the events
    this call created. PostgreSQL gets one column array per field (a short, cacheable
    statement whatever the batch size); other databases a multi-row VALUES."""
    created: dict[str, int] = {}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            sql = _insert_sql_pg(UsageEvent, _COLUMNS, "id, request_id")
            for start in range(0, len(rows), _WRITE_CHUNK * 4):
                chunk = rows[start : start + _WRITE_CHUNK * 4]
                cursor.execute(sql, [[row[name] for row in chunk] for name in _COLUMNS])
                created.update({request_id: pk for pk, request_id in cursor.fetchall()})
            return created
        fields = [UsageEvent._meta.get_field(name) for name in _COLUMNS]
        table = connection.ops.quote_name(UsageEvent._meta.db_table)
        columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
        row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
        for start in range(0, len(rows), _WRITE_CHUNK):
            chunk = rows[start : start + _WRITE_CHUNK]
            params: list[Any] = []
            for row in chunk:
                params.extend(f.get_db_prep_save(row[f.name], connection) for f in fields)
            sql = (
                f"INSERT INTO {table} ({columns}) VALUES "  # noqa: S608 - identifiers quoted
                + ", ".join([row_sql] * len(chunk))
                + " ON CONFLICT (request_id) DO NOTHING RETURNING id, request_id"
            )
            cursor.execute(sql, params)
            created.update({request_id: pk for pk, request_id in cursor.fetchall()})
    return created


_ATTEMPT_COLUMNS = (
    "event",
    "position",
    "model_id",
    "provider_id",
    "status_code",
    "error_type",
    "latency_ms",
)


def _attempts_for(created: dict[str, int], by_request: dict[str, dict[str, Any]]) -> list:
    attempts = []
    for request_id, event_id in created.items():
        for position, attempt in enumerate(by_request[request_id].get("attempts") or ()):
            attempts.append(
                (
                    event_id,
                    position,
                    attempt.get("model_id"),
                    attempt.get("provider_id"),
                    int(attempt.get("status_code") or 0),
                    str(attempt.get("error_type") or "")[:64],
                    float(attempt.get("latency_ms") or 0.0),
                )
            )
    return attempts


def _insert_attempts(attempts: list[tuple]) -> None:
    if not attempts:
        return
    if connection.vendor == "postgresql":
        sql = _insert_sql_pg(UsageAttempt, _ATTEMPT_COLUMNS, "")
        with connection.cursor() as cursor:
            cursor.execute(sql, [list(column) for column in zip(*attempts, strict=True)])
        return
    UsageAttempt.objects.bulk_create(
        [
            UsageAttempt(**dict(zip(("event_id", *_ATTEMPT_COLUMNS[1:]), row, strict=True)))
            for row in attempts
        ],
        ignore_conflicts=True,
    )


def usage_events_write(*, payloads: list[dict[str, Any]]) -> int:
    """Insert events and their attempts in one transaction; events already stored (same
    request id) are skipped, their attempts too. Returns how many new events were written.
    Raises UsagePayloadInvalid for a malformed payload and DataError/IntegrityError for a row
    the database refuses (see usage_events_write_each for the per-event fallback)."""
    if not payloads:
        return 0
    ingested_at = timezone.now()
    by_request: dict[str, dict[str, Any]] = {}
    rows = []
    for payload in payloads:
        values = usage_event_values(payload, ingested_at=ingested_at)
        if values["request_id"] in by_request:
            continue
        by_request[values["request_id"]] = payload
        rows.append(values)
    with transaction.atomic():
        created = _insert_rows(rows)
        _insert_attempts(_attempts_for(created, by_request))
    if created:
        logger.info("usage.events_written", extra={"count": len(created)})
    return len(created)


def usage_events_write_each(*, payloads: Iterable[dict[str, Any]]) -> WriteReport:
    """Batch write with a per-event fallback: when the batch is refused, each event is written
    on its own so one bad event never blocks the others. Refused events are returned with the
    reason (the caller dead-letters or logs them); database outages still raise."""
    payloads = list(payloads)
    report = WriteReport()
    try:
        report.written = usage_events_write(payloads=payloads)
        return report
    except (UsagePayloadInvalid, DataError, IntegrityError):
        pass
    for payload in payloads:
        try:
            report.written += usage_events_write(payloads=[payload])
        except (UsagePayloadInvalid, DataError, IntegrityError) as exc:
            report.rejected.append((payload, f"{type(exc).__name__}: {exc}"[:500]))
    for payload, reason in report.rejected:
        logger.error(
            "usage.event_rejected",
            extra={"request_id": str(payload.get("request_id")), "reason": reason},
        )
    return report


# -- direct mode: bounded queue + background writer on the running loop ----------------------

# One thread does the database work of every writer of the process: one connection, and
# batches from one loop are committed in order.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-writer")
_RETRY_MAX_DELAY_S = 5.0


def _write_batch_blocking(payloads: list[dict[str, Any]]) -> WriteReport:
    try:
        return usage_events_write_each(payloads=payloads)
    finally:
        # Returns the connection to the pool (or closes it): this thread lives forever.
        close_old_connections()


def _rollup_blocking() -> None:
    from usage.rollups import usage_rollup

    try:
        usage_rollup()
    finally:
        close_old_connections()


class UsageWriter:
    """Owns the queue and the writer task of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(
            maxsize=max(1, settings.GATEWAY_USAGE_QUEUE_MAX)
        )
        self.batch_size = max(1, settings.GATEWAY_USAGE_WRITER_BATCH)
        self.task = loop.create_task(self._run(), name="usage-writer")
        self._rollup_handle: asyncio.TimerHandle | None = None
        self._rollup_last = 0.0

    def _rollup_soon(self) -> None:
        """Embedded mode has no beat: after a write, roll up once the interval since the last
        rollup has passed (one trailing run covers every write in between)."""
        interval = settings.GATEWAY_USAGE_ROLLUP_AFTER_WRITE_SECONDS
        if interval <= 0 or self._rollup_handle is not None:
            return
        delay = max(0.0, self._rollup_last + interval - self.loop.time())
        self._rollup_handle = self.loop.call_later(delay, self._rollup_start)

    def _rollup_start(self) -> None:
        self.loop.create_task(self._rollup(), name="usage-rollup-after-write")

    async def _rollup(self) -> None:
        self._rollup_last = self.loop.time()
        try:
            await self.loop.run_in_executor(_executor, _rollup_blocking)
        except Exception:
            logger.exception("usage.rollup_after_write_failed")
        finally:
            self._rollup_handle = None

    async def put(self, payload: dict[str, Any]) -> None:
        # A full queue makes the caller wait (back-pressure); an event is never dropped.
        await self.queue.put(payload)

    def _take_ready(self, batch: list[dict[str, Any]]) -> None:
        while len(batch) < self.batch_size:
            try:
                batch.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    def _done(self, count: int) -> None:
        for _ in range(count):
            self.queue.task_done()

    async def _write_until_stored(self, batch: list[dict[str, Any]]) -> None:
        delay = 0.05
        while True:
            try:
                await self.loop.run_in_executor(_executor, _write_batch_blocking, batch)
                self._rollup_soon()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database is away: keep the batch and retry; the bounded queue turns a
                # long outage into back-pressure on requests instead of lost events.
                logger.exception("usage.writer_retry", extra={"count": len(batch)})
                await asyncio.sleep(delay)
                delay = min(_RETRY_MAX_DELAY_S, delay * 2)

    async def _run(self) -> None:
        batch: list[dict[str, Any]] = []
        try:
            while True:
                batch = [await self.queue.get()]
                self._take_ready(batch)
                await self._write_until_stored(batch)
                self._done(len(batch))
                batch = []
        except asyncio.CancelledError:
            # Loop shutdown (asyncio.run cancels pending tasks): store what is left, once.
            # The in-flight batch may be written twice; request ids make that harmless.
            rest = batch
            while True:
                try:
                    rest.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            if rest:
                try:
                    await self.loop.run_in_executor(_executor, _write_batch_blocking, rest)
                except Exception:
                    logger.exception("usage.writer_shutdown_failed", extra={"count": len(rest)})
                self._done(len(rest))
            raise

    async def flush(self, max_wait_s: float | None = None) -> None:
        await asyncio.wait_for(self.queue.join(), max_wait_s)


_writers: dict[int, UsageWriter] = {}


def _writer_for_running_loop() -> UsageWriter:
    loop = asyncio.get_running_loop()
    writer = _writers.get(id(loop))
    if writer is None or writer.loop is not loop or writer.task.done():
        for key, old in list(_writers.items()):
            if old.loop.is_closed():
                del _writers[key]
        writer = UsageWriter(loop)
        _writers[id(loop)] = writer
    return writer


async def usage_events_flush(*, max_wait_s: float | None = 30.0) -> None:
    """Wait until every event queued on this loop is stored (tests, graceful shutdown)."""
    writer = _writers.get(id(asyncio.get_running_loop()))
    if writer is not None and not writer.task.done():
        await writer.flush(max_wait_s)


async def usage_event_record(*, payload: dict[str, Any]) -> None:
    """Hot-path entry for events the settlement call did not already carry (rejected
    requests, or every request in direct mode). Returns without waiting for the database."""
    if settings.GATEWAY_USAGE_WRITE_MODE == "stream":
        from usage.stream import usage_stream_append

        try:
            await usage_stream_append(payload=payload)
            return
        except Exception:
            # Redis is away: the database is still the truth, so write through instead.
            logger.exception(
                "usage.stream_append_failed", extra={"request_id": str(payload.get("request_id"))}
            )
    await _writer_for_running_loop().put(payload)
