"""Admin at scale: generate a large data set with COPY and time every admin changelist and
the dashboards.

    .venv/bin/python bench/admin_scale.py                      # 1M keys, 10k tenants, 100M events
    .venv/bin/python bench/admin_scale.py --events 10000000    # what fits in ~15 min on 2 cores
    .venv/bin/python bench/admin_scale.py --reuse              # time again, keep the data

1. Switches to its own database (--database, default gw_admin_scale, on the server of
   DATABASE_URL), creates it if missing and migrates it. --reuse keeps the rows already
   there; otherwise the generated tables are emptied first.
2. COPYs (psycopg's copy) M tenants, N keys (1 % revoked, some with budgets), one audit entry
   per key (as the service writes when it issues one), E usage events over the last 30 days
   (on a share of the keys, as real traffic is skewed) and the day/hour rollups of those
   events (aggregated in the database, as the rollup job does). Secondary indexes of the big
   tables are dropped during the COPY and rebuilt after it (the migrations' own definitions),
   then every table is ANALYZEd.
3. Logs a superuser in through Django's test Client and times each changelist (plain, one
   filter, one search), a deep page, and the cost dashboard (all tenants and one tenant):
   the median of --repeat runs after one warm-up, with the query count.
4. Replaces the "Admin at scale" section of docs/benchmarks.md with the table (--output;
   --no-write prints only).

The test suite never generates this data; tests/bench/test_admin_scale.py runs the generator
and the timing at a tiny scale to prove they work."""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Admin at scale"
DAYS = 30
# (model_id offset, name, input, output USD per 1M tokens)
MODELS = [
    ("bench-small", Decimal("0.150000"), Decimal("0.600000")),
    ("bench-large", Decimal("2.500000"), Decimal("10.000000")),
    ("bench-mid", Decimal("3.000000"), Decimal("15.000000")),
    ("bench-local", Decimal("0.000000"), Decimal("0.000000")),
]
# The event columns in the order the drain writes them (checked against usage.services).
EVENT_COLUMNS = (
    "request_id",
    "created_at",
    "ingested_at",
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
CHUNK = 20_000
NULL = r"\N"  # COPY's text format


def key_prefix(i: int) -> str:
    return "gw-" + hashlib.blake2b(i.to_bytes(8, "little"), digest_size=6).hexdigest()[:9]


# -- loading -------------------------------------------------------------------------------
def _secondary_indexes(cursor, table: str) -> list[tuple[str, str]]:
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s))",
        [table, table],
    )
    return list(cursor.fetchall())


def copy_rows(table: str, columns: Iterable[str], lines: Iterator[str], *, rebuild: bool) -> int:
    """COPY tab-separated lines into `table`. With `rebuild`, its secondary indexes are
    dropped first and recreated from their own definitions afterwards (faster than keeping
    them up to date row by row)."""
    from django.db import connection

    connection.ensure_connection()
    count = 0
    with connection.cursor() as cursor:
        indexes = _secondary_indexes(cursor, table) if rebuild else []
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX IF EXISTS "{name}"')
    with connection.connection.cursor() as raw:
        with raw.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            buffer: list[str] = []
            for line in lines:
                buffer.append(line)
                if len(buffer) >= CHUNK:
                    copy.write("".join(buffer))
                    count += len(buffer)
                    buffer.clear()
            if buffer:
                copy.write("".join(buffer))
                count += len(buffer)
    with connection.cursor() as cursor:
        if connection.in_atomic_block:
            # Run the deferred foreign-key checks now: CREATE INDEX refuses a table with
            # pending trigger events in the same transaction.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.execute(f"ANALYZE {table}")
    return count


def _tenant_lines(tenants: int, now: str) -> Iterator[str]:
    for i in range(tenants):
        budget = "100.0000" if i % 3 == 0 else NULL
        rpm = "600" if i % 2 else NULL
        yield (
            f"t-{i:06d}\tTenant {i:06d}\tUTC\tt\t[50, 80, 100]\t\t\t{now}\t{now}"
            f"\t{budget}\tmonthly\t{rpm}\t\\N\t\\N\n"
        )


def _key_lines(keys: int, tenant_ids: list[int], now: datetime) -> Iterator[str]:
    m = len(tenant_ids)
    for i in range(keys):
        created = (now - timedelta(seconds=(keys - i) * 5)).isoformat()
        revoked = created if i % 100 == 7 else r"\N"
        budget = "25.0000" if i % 10 == 0 else r"\N"
        period = ("daily", "weekly", "monthly", "lifetime")[i % 4]
        key_hash = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        yield (
            f"{tenant_ids[i % m]}\tkey {i}\t{key_prefix(i)}\t{key_hash}\t[]\t\\N\t{revoked}"
            f"\t{created}\t{created}\t{budget}\t{period}\t\\N\t\\N\t\\N\tkey_{i:020x}\n"
        )


def _audit_lines(key_rows: list[tuple[int, int, str]], now: str) -> Iterator[str]:
    for key_id, tenant_id, prefix in key_rows:
        yield (
            f"{now}\t{tenant_id}\tapi-token:ops\tcreate\ttenants.apikey\t{key_id}"
            f'\t{prefix}…\t\t{{"name": [null, "key {key_id}"], "key_hash": [null, "[redacted]"]}}\n'
        )


def _event_lines(
    events: int,
    active: list[tuple[int, int]],
    models: list[tuple[int, int, str, Decimal, Decimal]],
    now: datetime,
) -> Iterator[str]:
    span = DAYS * 86_400
    ingested = (now - timedelta(hours=1)).isoformat()
    n_active = len(active)
    for i in range(events):
        key_id, tenant_id = active[(i * 7919) % n_active]
        model_id, provider_id, name, price_in, price_out = models[key_id % len(models)]
        tokens_in, tokens_out = 100 + (i * 7919) % 4000, 10 + (i * 104729) % 1500
        cost = (tokens_in * price_in + tokens_out * price_out) / 1_000_000
        created = now - timedelta(seconds=span - (i * span) // events)
        outcome = "error" if i % 101 == 0 else "ok"
        yield (
            f"r{i:015d}\t{created.isoformat()}\t{ingested}\t\t{tenant_id}\t{key_id}\tchat\t{name}"
            f"\t{model_id}\t{provider_id}\t{name}\t{'chat' if i % 10 else 'embeddings'}"
            f"\t{'t' if i % 2 else 'f'}\t{tokens_in}\t{tokens_out}\t0\t0\tf\t{price_in}"
            f"\t{price_out}\t{cost:.9f}\t0\t12.3\t4.5\t{500 if outcome == 'error' else 200}"
            f"\t{outcome}\t\t0\n"
        )


_ROLLUP_SQL = """
INSERT INTO usage_usagerollup (period, bucket_start, tenant_id, api_key_id, route, model_id,
    provider_id, model, input_price_per_mtok, output_price_per_mtok, requests, errors,
    tokens_in, tokens_out, cache_read_tokens, cost_usd, cache_savings_usd, computed_at)
SELECT %s, date_trunc(%s, created_at), COALESCE(tenant_id, 0), COALESCE(api_key_id, 0), route,
    COALESCE(model_id, 0), COALESCE(provider_id, 0), MAX(model), input_price_per_mtok,
    output_price_per_mtok, COUNT(*), COUNT(*) FILTER (WHERE outcome <> 'ok'), SUM(tokens_in),
    SUM(tokens_out), SUM(cache_read_tokens), SUM(cost_usd), 0, now()
FROM usage_usageevent WHERE created_at >= %s
GROUP BY 2, 3, 4, 5, 6, 7, 9, 10
"""


def generate(
    *, keys: int, tenants: int, events: int, active_keys: int, log: Callable[[str], None]
) -> dict[str, int]:
    """Load the data set into the current database (its tables must be empty)."""
    from django.db import connection

    from providers.services import model_create, provider_create
    from routing.models import Route, RouteStep
    from usage.services import _COLUMNS

    if tuple(_COLUMNS) != EVENT_COLUMNS:
        raise SystemExit("usage event columns changed; update EVENT_COLUMNS")
    now = datetime.now(tz=UTC)
    stamp = now.isoformat()
    counts: dict[str, int] = {}

    started = time.perf_counter()
    catalog = []
    for p in range(4):
        provider = provider_create(name=f"bench-provider-{p}", kind="mock")
        for m, (name, price_in, price_out) in enumerate(MODELS):
            model = model_create(
                name=f"{name}-{p}",
                provider=provider,
                upstream_model=name,
                input_price_per_mtok=price_in,
                output_price_per_mtok=price_out,
            )
            catalog.append((model.pk, provider.pk, model.name, price_in, price_out))
            route = Route.objects.create(name=f"bench-route-{p}-{m}")
            RouteStep.objects.create(route=route, position=0, model=model)
    counts["catalog models"] = len(catalog)

    tenant_columns = (
        "slug, name, timezone, is_active, alert_thresholds, alert_webhook_url, alert_email, "
        "created_at, updated_at, budget_usd, budget_period, rpm_limit, tpm_limit, "
        "max_concurrency"
    ).split(", ")
    counts["tenants"] = copy_rows(
        "tenants_tenant", tenant_columns, _tenant_lines(tenants, stamp), rebuild=False
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM tenants_tenant ORDER BY id")
        tenant_ids = [row[0] for row in cursor.fetchall()]
    log(f"tenants: {counts['tenants']:,} in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    key_columns = (
        "tenant_id, name, prefix, key_hash, allowed_models, expires_at, revoked_at, "
        "created_at, updated_at, budget_usd, budget_period, rpm_limit, tpm_limit, "
        "max_concurrency, public_id"
    ).split(", ")
    counts["keys"] = copy_rows(
        "tenants_apikey", key_columns, _key_lines(keys, tenant_ids, now), rebuild=True
    )
    log(f"keys: {counts['keys']:,} in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, tenant_id, prefix FROM tenants_apikey ORDER BY id")
        key_rows = cursor.fetchall()
    audit_columns = (
        "created_at, tenant_id, actor, action, object_type, object_id, object_repr, parent, changes"
    ).split(", ")
    counts["audit entries"] = copy_rows(
        "audit_auditentry", audit_columns, _audit_lines(key_rows, stamp), rebuild=True
    )
    log(f"audit entries: {counts['audit entries']:,} in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    step = max(1, len(key_rows) // max(1, active_keys))
    active = [(k, t) for k, t, _ in key_rows[::step]][:active_keys]
    counts["events"] = copy_rows(
        "usage_usageevent",
        EVENT_COLUMNS,
        _event_lines(events, active, catalog, now),
        rebuild=True,
    )
    log(f"events: {counts['events']:,} in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(_ROLLUP_SQL, ["day", "day", now - timedelta(days=DAYS + 1)])
        cursor.execute(_ROLLUP_SQL, ["hour", "hour", now - timedelta(hours=48)])
        cursor.execute("ANALYZE usage_usagerollup")
        cursor.execute("SELECT COUNT(*) FROM usage_usagerollup")
        counts["rollups"] = cursor.fetchone()[0]
    log(f"rollups: {counts['rollups']:,} in {time.perf_counter() - started:.1f}s")
    return counts


def truncate() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE usage_usageattempt, usage_usageevent, usage_usagerollup, "
            "usage_purgedusage, audit_auditentry, tenants_auditevent, tenants_budgetalert, "
            "tenants_tenantmembership, tenants_apikey, tenants_tenant, routing_routestep, "
            "routing_route, providers_modelprice, providers_model, providers_provider "
            "RESTART IDENTITY CASCADE"
        )


# -- timing --------------------------------------------------------------------------------
def pages() -> list[tuple[str, str, str]]:
    """(page, variant, url) for every admin changelist and the dashboards."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT id, slug FROM tenants_tenant ORDER BY id DESC LIMIT 1")
        tenant_id, slug = cursor.fetchone()
        cursor.execute("SELECT prefix FROM tenants_apikey ORDER BY id DESC LIMIT 1")
        prefix = cursor.fetchone()[0]
        cursor.execute("SELECT request_id FROM usage_usageevent ORDER BY id DESC LIMIT 1")
        row = cursor.fetchone()
        request_id = row[0] if row else "none"
        cursor.execute("SELECT id FROM usage_usageevent ORDER BY id DESC LIMIT 1")
        row = cursor.fetchone()
        event_id = row[0] if row else 0
        cursor.execute("SELECT COUNT(*) FROM (SELECT 1 FROM tenants_apikey LIMIT 10000) k")
        deep = max(1, min(150, cursor.fetchone()[0] // 50 - 1))
    a = "/admin"
    return [
        ("tenants", "list", f"{a}/tenants/tenant/"),
        ("tenants", "filter: active", f"{a}/tenants/tenant/?is_active__exact=1"),
        ("tenants", "search: slug prefix", f"{a}/tenants/tenant/?q={slug[:-2]}"),
        ("keys", "list", f"{a}/tenants/apikey/"),
        ("keys", f"page {deep}", f"{a}/tenants/apikey/?p={deep}"),
        ("keys", "filter: one tenant", f"{a}/tenants/apikey/?tenant={tenant_id}"),
        ("keys", "filter: revoked", f"{a}/tenants/apikey/?status=revoked"),
        ("keys", "search: key prefix", f"{a}/tenants/apikey/?q={prefix[:7]}"),
        ("keys", "add form (autocomplete)", f"{a}/tenants/apikey/add/"),
        ("usage events", "list", f"{a}/usage/usageevent/"),
        ("usage events", "filter: errors", f"{a}/usage/usageevent/?outcome__exact=error"),
        ("usage events", "filter: last 24 h", f"{a}/usage/usageevent/?recent=24h"),
        ("usage events", "search: request id", f"{a}/usage/usageevent/?q={request_id}"),
        ("usage events", "one event", f"{a}/usage/usageevent/{event_id}/change/"),
        ("usage rollups", "list", f"{a}/usage/usagerollup/"),
        ("usage rollups", "filter: day", f"{a}/usage/usagerollup/?period__exact=day"),
        ("providers", "list", f"{a}/providers/provider/"),
        ("providers", "filter: mock", f"{a}/providers/provider/?kind__exact=mock"),
        ("providers", "search", f"{a}/providers/provider/?q=bench"),
        ("models", "list", f"{a}/providers/model/"),
        ("models", "filter: active", f"{a}/providers/model/?is_active__exact=1"),
        ("models", "search", f"{a}/providers/model/?q=bench-large"),
        ("routes", "list", f"{a}/routing/route/"),
        ("routes", "filter: fallback", f"{a}/routing/route/?strategy__exact=fallback"),
        ("routes", "search", f"{a}/routing/route/?q=bench-route-1"),
        ("audit log", "list", f"{a}/audit/auditentry/"),
        ("audit log", "filter: create", f"{a}/audit/auditentry/?action__exact=create"),
        ("audit log", "search: actor prefix", f"{a}/audit/auditentry/?q=api-token"),
        ("tenant actions", "list", f"{a}/tenants/auditevent/"),
        ("dashboard", "all tenants, 30 days", f"{a}/usage/usageevent/dashboard/"),
        ("dashboard", "one tenant, 30 days", f"{a}/usage/usageevent/dashboard/?tenant={tenant_id}"),
        (
            "statement",
            "one tenant, this month",
            f"{a}/usage/usageevent/statement/?tenant={tenant_id}",
        ),
    ]


def time_pages(client, urls: list[tuple[str, str, str]], *, repeat: int) -> list[dict]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    results = []
    for page, variant, url in urls:
        client.get(url)  # warm-up (template and plan caches)
        timings, queries, status = [], 0, 0
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as ctx:
                started = time.perf_counter()
                response = client.get(url)
                if getattr(response, "streaming", False):
                    b"".join(response.streaming_content)
                timings.append((time.perf_counter() - started) * 1000)
            queries, status = len(ctx.captured_queries), response.status_code
        results.append(
            {
                "page": page,
                "variant": variant,
                "url": url,
                "status": status,
                "median_ms": statistics.median(timings),
                "max_ms": max(timings),
                "queries": queries,
            }
        )
    return results


def superuser_client():
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.filter(username="bench-root").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench-root", password="bench-root-pw")
    client = Client()
    client.force_login(user)
    return client


def table(results: list[dict], *, limit_ms: float = 300.0) -> str:
    lines = [
        "| page | variant | median ms | max ms | queries | HTTP | under 300 ms |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ok = "yes" if r["median_ms"] < limit_ms and r["status"] == 200 else "**no**"
        lines.append(
            f"| {r['page']} | {r['variant']} | {r['median_ms']:.0f} | {r['max_ms']:.0f} "
            f"| {r['queries']} | {r['status']} | {ok} |"
        )
    return "\n".join(lines)


def section_replace(path: Path, body: str) -> None:
    """Replace (or append) only the '## Admin at scale' section of the file."""
    text = path.read_text() if path.exists() else ""
    start = text.find(SECTION + "\n")
    if start == -1:
        path.write_text(text.rstrip() + "\n\n" + body.rstrip() + "\n")
        return
    end = text.find("\n## ", start + len(SECTION))
    rest = text[end + 1 :] if end != -1 else ""
    path.write_text(text[:start] + body.rstrip() + "\n" + ("\n" + rest if rest else ""))


# -- main ----------------------------------------------------------------------------------
def _database_url(name: str) -> str:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(base)
    if not parts.scheme.startswith("postgres"):
        raise SystemExit("admin_scale needs PostgreSQL: set DATABASE_URL to a postgres:// URL")
    return urlunsplit(parts._replace(path=f"/{name}"))


def _database_create(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000_000)
    parser.add_argument(
        "--active-keys", type=int, default=20_000, help="keys that have traffic (skewed, as real)"
    )
    parser.add_argument("--database", default="gw_admin_scale")
    parser.add_argument("--reuse", action="store_true", help="keep the data already loaded")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    url = _database_url(args.database)
    _database_create(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import setup_test_environment

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    if args.reuse:
        with connection.cursor() as cursor:
            counts = {}
            for label, tbl in [
                ("tenants", "tenants_tenant"),
                ("keys", "tenants_apikey"),
                ("audit entries", "audit_auditentry"),
                ("events", "usage_usageevent"),
                ("rollups", "usage_usagerollup"),
            ]:
                cursor.execute(f"SELECT COUNT(*) FROM {tbl}")  # noqa: S608 (fixed names)
                counts[label] = cursor.fetchone()[0]
    else:
        truncate()
        counts = generate(
            keys=args.keys,
            tenants=args.tenants,
            events=args.events,
            active_keys=args.active_keys,
            log=lambda line: print(line, flush=True),  # noqa: T201 (a command-line tool)
        )
    load_s = time.perf_counter() - started
    setup_test_environment()
    results = time_pages(superuser_client(), pages(), repeat=args.repeat)
    report = table(results)
    print(report)  # noqa: T201

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        size = cursor.fetchone()[0]
        cursor.execute("SHOW server_version")
        server = cursor.fetchone()[0]
    scale = ", ".join(f"{v:,} {k}" for k, v in counts.items())
    body = "\n".join(
        [
            SECTION,
            "",
            f"Written by `bench/admin_scale.py` on {datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC "
            f"(`{' '.join(sys.argv[1:]) or 'defaults'}`): Django's test Client, logged in as "
            f"a superuser, in one process against PostgreSQL {server} on this 2-core machine "
            "(shared with other work during the run). Median of "
            f"{args.repeat} requests after one warm-up; server-side time including template "
            "rendering, no network.",
            "",
            f"- **Scale**: {scale}; database {size}"
            + ("" if args.reuse else f"; generated and indexed in {load_s / 60:.1f} min")
            + ".",
            "",
            report,
            "",
        ]
    )
    if not args.no_write:
        section_replace(args.output, body)
        print(f"wrote the '{SECTION[3:]}' section of {args.output}")  # noqa: T201


if __name__ == "__main__":
    main()
