"""Usage pipeline benchmark (not a test): stream drain throughput and rollup time.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/gw_usage_bench \\
    REDIS_URL=redis://127.0.0.1:6379/4 .venv/bin/python bench/usage_bench.py \\
        [--drain-events 100000] [--rollup-events 1000000]

WARNING: truncates the usage tables of the database it is given; use a bench database.

1. XADDs --drain-events events (routing's payload shape, orjson under field "e") to a bench
   stream and drains them with usage.stream.usage_stream_drain (the code the Celery task runs)
   into PostgreSQL: events drained per second.
2. COPYs --rollup-events events spread over 30 days, 5 tenants, 50 keys, 4 models into
   usage_usageevent and times a full rollup (every hour and day recomputed), then an
   incremental run after 1,000 late events.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from providers.pricing import cost_usd  # noqa: E402
from usage.models import RollupPeriod, UsageEvent, UsageRollup  # noqa: E402
from usage.rollups import usage_rollup, usage_rollup_window  # noqa: E402
from usage.services import _PAYLOAD_COLUMNS  # noqa: E402
from usage.stream import stream_client, usage_payload_encode, usage_stream_drain  # noqa: E402

MODELS = [
    (1, 1, "gpt-small", Decimal("0.150000"), Decimal("0.600000")),
    (2, 1, "gpt-large", Decimal("2.500000"), Decimal("10.000000")),
    (3, 2, "claude-mid", Decimal("3.000000"), Decimal("15.000000")),
    (4, 3, "local-llm", Decimal("0.000000"), Decimal("0.000000")),
]
START = datetime(2026, 9, 1, tzinfo=UTC)


def event(i: int, *, created_at: datetime | None = None) -> dict:
    model_id, provider_id, name, price_in, price_out = MODELS[i % len(MODELS)]
    tokens_in, tokens_out = 100 + (i * 7919) % 4000, 10 + (i * 104729) % 1500
    cost = cost_usd(
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        input_price_per_mtok=price_in,
        output_price_per_mtok=price_out,
    )
    when = created_at or START + timedelta(seconds=(i * 2_592_000) // 1_000_003 % 2_592_000)
    key = i % 50
    return {
        "request_id": uuid.uuid4().hex,
        "created_at": when.isoformat(),
        "tenant_id": key % 5 + 1,
        "api_key_id": key + 1,
        "route": "chat",
        "model": name,
        "model_id": model_id,
        "provider_id": provider_id,
        "upstream_model": name,
        "endpoint": "chat",
        "stream": bool(i % 2),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "usage_estimated": False,
        "input_price_per_mtok": str(price_in),
        "output_price_per_mtok": str(price_out),
        "cost_usd": format(cost, "f"),
        "latency_ms": 12.3,
        "ttft_ms": 4.5,
        "status_code": 200,
        "outcome": "error" if i % 101 == 0 else "ok",
        "error_type": "",
        "fallbacks": 0,
        "attempts": [
            {
                "model_id": model_id,
                "provider_id": provider_id,
                "status_code": 200,
                "error_type": "",
                "latency_ms": 12.0,
            }
        ],
    }


def truncate() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE usage_usageattempt, usage_usageevent, usage_usagerollup, "
            "usage_purgedusage, usage_usagemark RESTART IDENTITY"
        )


def bench_drain(count: int) -> None:
    settings.GATEWAY_USAGE_STREAM = "gw:usage:bench"
    settings.GATEWAY_USAGE_DEAD_LETTER_STREAM = "gw:usage:bench:dead"
    client = stream_client()
    client.delete(settings.GATEWAY_USAGE_STREAM, settings.GATEWAY_USAGE_DEAD_LETTER_STREAM)
    for batch in (500, 2000):
        truncate()
        client.delete(settings.GATEWAY_USAGE_STREAM)
        pipe = client.pipeline(transaction=False)
        for i in range(count):
            pipe.xadd(settings.GATEWAY_USAGE_STREAM, usage_payload_encode(event(i)))
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        started = time.perf_counter()
        result = usage_stream_drain(batch_size=batch, max_seconds=3600, consumer="bench")
        elapsed = time.perf_counter() - started
        stored = UsageEvent.objects.count()
        print(
            f"drain batch={batch}: {result.written} events in {elapsed:.2f}s = "
            f"{result.written / elapsed:,.0f} events/s (rows={stored}, batches={result.batches})"
        )
    client.delete(settings.GATEWAY_USAGE_STREAM)


def copy_events(count: int) -> None:
    # The writer's own column list, so the bench loads exactly what the drain writes.
    columns = ("request_id", "created_at", "ingested_at", *_PAYLOAD_COLUMNS)
    # Ingested an hour ago: a past rollup run has seen them (outside the rollup overlap).
    loaded_at = datetime.now(tz=UTC) - timedelta(hours=1)
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        with cursor.copy(f"COPY usage_usageevent ({', '.join(columns)}) FROM STDIN") as copy:
            for i in range(count):
                e = event(i)
                copy.write_row(
                    (
                        e["request_id"],
                        e["created_at"],
                        loaded_at,
                        e["tenant_id"],
                        e["api_key_id"],
                        e["route"],
                        e["model"],
                        e["model_id"],
                        e["provider_id"],
                        e["upstream_model"],
                        e["endpoint"],
                        e["stream"],
                        e["tokens_in"],
                        e["tokens_out"],
                        0,
                        0,
                        False,
                        e["input_price_per_mtok"],
                        e["output_price_per_mtok"],
                        e["cost_usd"],
                        e["latency_ms"],
                        e["ttft_ms"],
                        200,
                        e["outcome"],
                        "",
                        0,
                    )
                )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE usage_usageevent")


def bench_rollup(count: int) -> None:
    truncate()
    started = time.perf_counter()
    copy_events(count)
    print(f"loaded {count:,} events by COPY in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    result = usage_rollup()
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(cost_usd) FROM usage_usageevent")
        event_total = cursor.fetchone()[0]
    rolled = sum(
        UsageRollup.objects.filter(period=RollupPeriod.DAY).values_list("cost_usd", flat=True),
        Decimal(0),
    )
    print(
        f"rollup of {count:,} events (first run: every hour+day): {elapsed:.2f}s, "
        f"{result.hours} hours, {result.days} days, {result.rows} rows; "
        f"events total {event_total} == day rollups {rolled}: {event_total == rolled}"
    )
    started = time.perf_counter()
    usage_rollup_window(start=START, end=START + timedelta(days=30))
    print(f"full window recompute (30 days): {time.perf_counter() - started:.2f}s")
    late = [
        event(count + i, created_at=START + timedelta(days=i % 30, hours=5)) for i in range(1000)
    ]
    from usage.services import usage_events_write

    usage_events_write(payloads=late)
    started = time.perf_counter()
    result = usage_rollup()
    print(
        f"incremental rollup after 1,000 late events over 30 days: "
        f"{time.perf_counter() - started:.2f}s ({result.hours} hours recomputed)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drain-events", type=int, default=100_000)
    parser.add_argument("--rollup-events", type=int, default=1_000_000)
    args = parser.parse_args()
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        sys.exit("needs DATABASE_URL (PostgreSQL) and REDIS_URL")
    call_command("migrate", verbosity=0, skip_checks=True)
    print(f"database {connection.settings_dict['NAME']}, {os.cpu_count()} CPUs")
    if args.drain_events:
        bench_drain(args.drain_events)
    if args.rollup_events:
        bench_rollup(args.rollup_events)


if __name__ == "__main__":
    main()
