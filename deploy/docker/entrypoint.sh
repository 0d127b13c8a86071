#!/bin/sh
# One image, one role per container: web | worker | beat | migrate | <any command>.
set -eu
cd "$(dirname "$0")/../.."  # the app root (/app in the image)
role="${1:-web}"
if [ "$role" != "web" ]; then
  # Only web serves /metrics; elsewhere multiprocess mode would need a directory for nothing.
  unset PROMETHEUS_MULTIPROC_DIR
fi
case "$role" in
  web)
    # prometheus_client multiprocess mode: every uvicorn worker writes its samples here and
    # /metrics merges them; emptied at each start so dead processes leave nothing behind.
    rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    if [ "${GATEWAY_MIGRATE_ON_START:-false}" = "true" ]; then
      python manage.py migrate --noinput
    fi
    exec python -m uvicorn gateway_project.asgi:application --host 0.0.0.0 --port "${PORT:-8000}" \
      --workers "${WEB_CONCURRENCY:-2}" --loop uvloop --http httptools --no-access-log \
      --lifespan on --proxy-headers --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-127.0.0.1}"
    ;;
  worker)
    # Each worker process drains the usage stream continuously (usage/drainer.py).
    exec python -m celery -A gateway_project worker --loglevel "${CELERY_LOG_LEVEL:-INFO}" \
      --concurrency "${CELERY_CONCURRENCY:-2}"
    ;;
  beat)
    # Exactly one beat per deployment; it records a heartbeat in Redis on every tick.
    exec python -m celery -A gateway_project beat --loglevel "${CELERY_LOG_LEVEL:-INFO}" \
      --schedule /tmp/celerybeat-schedule
    ;;
  migrate)
    exec python manage.py migrate --noinput
    ;;
  *)
    exec "$@"
    ;;
esac
