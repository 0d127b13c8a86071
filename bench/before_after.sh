#!/usr/bin/env bash
# Before/after: two gateway checkouts served side by side (2 uvicorn workers each, PostgreSQL,
# Redis, a Celery worker draining usage), compared in ONE interleaved compare.sh run, so both
# see the same machine load. Each checkout needs its own .venv (pip install -e .).
#   BEFORE_ROOT=/path/to/old AFTER_ROOT=/path/to/new bash bench/before_after.sh -c 1,50 -d 8
# Uses PostgreSQL databases gw_bench_before/gw_bench_after (recreated) and Redis indexes 7/8
# (flushed), ports 8091/8092 and the shared harness's mock upstream on 18080. Everything it
# starts is stopped on exit; every load is bounded by compare.sh's duration and counts.
set -uo pipefail
: "${BEFORE_ROOT:?set BEFORE_ROOT}" "${AFTER_ROOT:?set AFTER_ROOT}"
OUT="${BENCH_TMP:-/tmp/gwbench}/before-after"
mkdir -p "$OUT"
HARNESS=/work/shared/bench
export BENCH_TMP=/tmp/gwbench
MOCK_PORT=18080
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; sleep 2; for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done; MOCK_PORT=$MOCK_PORT "$HARNESS/start-upstream.sh" stop >/dev/null 2>&1; }
trap cleanup EXIT
start() {  # name root port db redis_index
  local name=$1 root=$2 port=$3 db=$4 idx=$5
  local env=(DJANGO_SETTINGS_MODULE=gateway_project.settings DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
    REDIS_URL=redis://127.0.0.1:6379/$idx GATEWAY_STATE_BACKEND=redis GATEWAY_USAGE_WRITE_MODE=stream DEBUG=0
    CELERY_TASK_ALWAYS_EAGER=0 SECRET_KEY=bench-only-secret-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFG
    GATEWAY_ENCRYPTION_KEYS=C7pjelBU8kx8Aw7uoyRSiQWrhxlGzfWrSWvQjqY3yQE= ALLOWED_HOSTS=127.0.0.1,localhost
    SECURE_SSL_REDIRECT=0 )
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
  (cd "$root" && env "${env[@]}" .venv/bin/python manage.py migrate --noinput -v 0) || exit 1
  redis-cli -n "$idx" flushdb >/dev/null
  local key; key=$(cd "$root" && env "${env[@]}" .venv/bin/python bench/setup_gateway.py | tail -n 1)
  export "KEY_${name}=$key"
  (cd "$root" && exec env "${env[@]}" .venv/bin/celery -A gateway_project worker -B --pool solo --concurrency 1 \
     --loglevel WARNING --schedule $OUT/beat-$name >$OUT/celery-$name.log 2>&1) & pids+=($!)
  (cd "$root" && exec env "${env[@]}" .venv/bin/python -m uvicorn gateway_project.asgi:application --host 127.0.0.1 \
     --port "$port" --workers 2 --loop uvloop --http httptools --no-access-log --lifespan on >$OUT/gw-$name.log 2>&1) &
  pids+=($!); eval "PID_${name}=$!"
  for i in $(seq 1 300); do curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/health" && break; sleep 0.1; done
}
MOCK_PORT=$MOCK_PORT "$HARNESS/start-upstream.sh" start >/dev/null
start before "$BEFORE_ROOT" 8091 gw_bench_before 7
start after "$AFTER_ROOT" 8092 gw_bench_after 8
echo "keys: $KEY_before $KEY_after pids $PID_before $PID_after"
LITELLM_WORKERS_LIST="" WITH_PORTKEY=0 bash "$HARNESS/compare.sh" \
  "before=http://127.0.0.1:8091/v1,pid=$PID_before,keyenv=KEY_before" \
  "after=http://127.0.0.1:8092/v1,pid=$PID_after,keyenv=KEY_after" "$@"
