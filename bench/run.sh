#!/usr/bin/env bash
# The gateway benchmark, one command (`make bench`):
#   1. the shared harness (../shared/bench: nginx mock upstream, wrk, LiteLLM venv; setup.sh
#      runs once if its venvs are missing);
#   2. the gateway in production mode: PostgreSQL, Redis, GATEWAY_STATE_BACKEND=redis, usage in
#      stream mode, a Celery worker (with beat) draining the usage stream, and `make serve`'s
#      uvicorn command with $GW_WORKERS (2) workers;
#   3. the catalog of bench/catalog.toml (route mock-gpt -> openai_compatible provider at the
#      mock upstream) and a fresh API key (bench/setup_gateway.py);
#   4. a py-spy profile of one worker under JSON load and under streaming load;
#   5. ../shared/bench/compare.sh with LiteLLM at 2 workers (LITELLM_WORKERS_LIST=2);
#   6. docs/benchmarks.md (bench/report.py): targets, the full table, the profile.
# Everything it starts is stopped by PID on exit. Every wait is bounded.
#
# Env: BENCH_HARNESS (/work/shared/bench), BENCH_TMP (/tmp/gwbench),
#      BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/gw_perf_bench),
#      BENCH_REDIS_URL (redis://127.0.0.1:6379/6; this script FLUSHDBs that index),
#      GW_PORT (8088), GW_WORKERS (2), BENCH_PROFILE (1), BENCH_PROFILE_S (15),
#      BENCH_REPORT (docs/benchmarks.md; empty = do not write it).
# Extra arguments go to bench.py (e.g. `-c 1,50 --stream-conc 1,50 -d 10`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${BENCH_HARNESS:-/work/shared/bench}"
export BENCH_TMP="${BENCH_TMP:-/tmp/gwbench}"
PY="$ROOT/.venv/bin/python"
CLIENT_PY="$BENCH_TMP/client-venv/bin/python"
GW_PORT="${GW_PORT:-8088}"
GW_WORKERS="${GW_WORKERS:-2}"
MOCK_PORT="${MOCK_PORT:-18080}"
PROFILE="${BENCH_PROFILE:-1}"
PROFILE_S="${BENCH_PROFILE_S:-15}"
REPORT="${BENCH_REPORT-$ROOT/docs/benchmarks.md}"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$BENCH_TMP/results/gateway-$STAMP"
RUN="$BENCH_TMP/gateway-run"
mkdir -p "$OUT" "$RUN"

# The gateway's production environment (only its own processes get it: LiteLLM, started by
# compare.sh, must not see DATABASE_URL).
GW_ENV=(
    DJANGO_SETTINGS_MODULE=gateway_project.settings
    DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/gw_perf_bench}"
    REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/6}"
    GATEWAY_STATE_BACKEND=redis
    GATEWAY_USAGE_WRITE_MODE=stream
    DEBUG=0
    CELERY_TASK_ALWAYS_EAGER=0
    SECRET_KEY="${SECRET_KEY:-bench-only-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
    GATEWAY_ENCRYPTION_KEYS="${GATEWAY_ENCRYPTION_KEYS:-$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')}"
    ALLOWED_HOSTS="${ALLOWED_HOSTS:-127.0.0.1,localhost}"
    SECURE_SSL_REDIRECT=0  # plain http on loopback
)
gw() { env "${GW_ENV[@]}" "$@"; }

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# -- process bookkeeping: stop what we started, by PID, newest first ------------------------
started_pids=()
upstream_started=0
stop_pid() {  # TERM, wait (bounded), then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "pid $pid did not stop in 15 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local i
    for ((i = ${#started_pids[@]} - 1; i >= 0; i--)); do stop_pid "${started_pids[i]}"; done
    if ((upstream_started)); then MOCK_PORT=$MOCK_PORT "$HARNESS/start-upstream.sh" stop || true; fi
}
trap cleanup EXIT

wait_http() {  # URL, seconds
    local url=$1 limit=$2 i
    for i in $(seq 1 $((limit * 10))); do
        if curl -fs -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    log "$url did not answer within ${limit}s"
    return 1
}

# -- 1. harness -------------------------------------------------------------------------------
if [[ ! -x "$CLIENT_PY" || ! -x "$BENCH_TMP/litellm-venv/bin/litellm" ]] || ! command -v wrk >/dev/null; then
    log "installing the shared harness (once)"
    bash "$HARNESS/setup.sh"
fi

# -- 2. database, Redis, catalog, key ---------------------------------------------------------
log "database ${GW_ENV[1]#DATABASE_URL=}"
gw "$PY" - <<'PYEOF'
import os
import dj_database_url
import psycopg
cfg = dj_database_url.parse(os.environ["DATABASE_URL"])
with psycopg.connect(host=cfg["HOST"] or "127.0.0.1", port=cfg["PORT"] or 5432,
                     user=cfg["USER"] or "postgres", password=cfg["PASSWORD"] or None,
                     dbname="postgres", autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (cfg["NAME"],)).fetchone():
        conn.execute(f'CREATE DATABASE "{cfg["NAME"]}"')
PYEOF
(cd "$ROOT" && gw "$PY" manage.py migrate --noinput -v 0)
gw "$PY" -c 'import os, redis; redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()'
GW_KEY="$(cd "$ROOT" && gw "$PY" bench/setup_gateway.py | tail -n 1)"
export GW_KEY
[[ "$GW_KEY" == ${GATEWAY_KEY_PREFIX:-gw-}* ]] || { log "no API key issued"; exit 1; }

# -- 3. processes -------------------------------------------------------------------------------
if ! MOCK_PORT=$MOCK_PORT "$HARNESS/start-upstream.sh" status >/dev/null 2>&1; then
    MOCK_PORT=$MOCK_PORT "$HARNESS/start-upstream.sh" start
    upstream_started=1
fi

log "celery worker (usage drain, beat embedded)"
(cd "$ROOT" && exec env "${GW_ENV[@]}" "$ROOT/.venv/bin/celery" -A gateway_project worker -B --pool solo \
    --concurrency 1 --loglevel WARNING --schedule "$RUN/celerybeat-schedule" \
    >"$RUN/celery.log" 2>&1) &
started_pids+=($!)

# The `make serve` command (see Makefile), with the bench's host, port and workers.
SERVE_CMD=("$PY" -m uvicorn gateway_project.asgi:application --host 127.0.0.1 --port "$GW_PORT"
    --workers "$GW_WORKERS" --loop uvloop --http httptools --no-access-log --lifespan on
    --limit-concurrency 1000 --timeout-keep-alive 5 --ws-max-size 4194304)
log "gateway: ${SERVE_CMD[*]}"
(cd "$ROOT" && exec env "${GW_ENV[@]}" "${SERVE_CMD[@]}" >"$RUN/gateway.log" 2>&1) &
GW_PID=$!
started_pids+=("$GW_PID")
wait_http "http://127.0.0.1:$GW_PORT/health" 60
worker_pids() { pgrep -P "$GW_PID" -f spawn_main || true; }
log "gateway pid $GW_PID, workers: $(worker_pids | tr '\n' ' ')"

# -- 4. profile of one worker under load ------------------------------------------------------
if [[ "$PROFILE" == 1 ]]; then
    worker="$(worker_pids | head -n 1)"
    for mode in json stream; do
        log "profile: $mode load for ${PROFILE_S}s, py-spy on worker $worker"
        if [[ $mode == json ]]; then
            load=("$CLIENT_PY" "$HARNESS/bench.py" load "http://127.0.0.1:$GW_PORT/v1" -c 50
                -d "$((PROFILE_S + 4))" --warmup 1 --out "$OUT/profile-load")
        else
            load=("$CLIENT_PY" "$HARNESS/bench.py" stream "http://127.0.0.1:$GW_PORT/v1"
                --stream-conc 10 --stream-requests 1000000 --stream-max-s "$((PROFILE_S + 4))"
                --out "$OUT/profile-load")
        fi
        BENCH_API_KEY="$GW_KEY" "${load[@]}" >"$OUT/profile-load-$mode.log" 2>&1 &
        load_pid=$!
        started_pids+=("$load_pid")
        sleep 2  # let the load reach its steady state before sampling
        timeout $((PROFILE_S + 30)) "$ROOT/.venv/bin/py-spy" record --pid "$worker" \
            --duration "$PROFILE_S" --rate 200 --threads --format raw --output "$OUT/profile-$mode.txt" \
            >"$OUT/py-spy-$mode.log" 2>&1 || log "py-spy failed: $(tail -n 3 "$OUT/py-spy-$mode.log")"
        wait "$load_pid" || log "profile load exited non-zero (see $OUT/profile-load-$mode.log)"
    done
fi

# -- 5. the comparison --------------------------------------------------------------------------
log "compare.sh: direct, LiteLLM (2 workers), gateway"
read -r load1 load5 _ </proc/loadavg
LITELLM_WORKERS_LIST="${LITELLM_WORKERS_LIST-2}" WITH_PORTKEY="${WITH_PORTKEY:-0}" \
    env -u DATABASE_URL -u REDIS_URL bash "$HARNESS/compare.sh" \
    "gateway=http://127.0.0.1:$GW_PORT/v1,pid=$GW_PID,keyenv=GW_KEY" --out "$OUT" "$@" \
    | tee "$OUT/compare.out"

# Per-process RSS after the run (the table has the whole tree).
for pid in "$GW_PID" $(worker_pids); do
    printf '%s %s\n' "$pid" "$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
done >"$OUT/rss-kb.txt"

# -- 6. usage pipeline check and report -----------------------------------------------------------
sleep 8  # one beat interval (5 s) plus a drain: let Celery take the stream's tail
(cd "$ROOT" && gw "$PY" - >"$OUT/usage.json" <<'PYEOF'
import json, os
import django
django.setup()
from usage.models import UsageEvent
from usage.stream import usage_stream_backlog
print(json.dumps({"events_stored": UsageEvent.objects.count(), "stream": usage_stream_backlog()}))
PYEOF
) || log "usage check failed"

if [[ -n "$REPORT" ]]; then
    "$PY" "$ROOT/bench/report.py" --results "$OUT" --workers "$GW_WORKERS" \
        --serve-cmd "make serve HOST=127.0.0.1 PORT=$GW_PORT WORKERS=$GW_WORKERS" \
        --loadavg "$load1 $load5" --output "$REPORT"
    log "wrote $REPORT"
fi
log "results in $OUT"
