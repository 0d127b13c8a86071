"""Settings: every knob comes from the environment, read here and nowhere else.

With no environment at all this is the embedded default: SQLite, in-process state store,
in-memory channel layer, Celery tasks run eagerly. Setting DATABASE_URL and REDIS_URL switches
to PostgreSQL and Redis with no code change.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


DEBUG = env_bool("DEBUG", False)
_EMBEDDED_SECRET = "embedded-dev-only-secret-change-me-in-production-0123456789"  # noqa: S105
SECRET_KEY = env_str("SECRET_KEY", _EMBEDDED_SECRET)
ALLOWED_HOSTS = [h.strip() for h in env_str("ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

# daphne's app exists to make `manage.py runserver` serve ASGI (development); importing it
# installs twisted's asyncio reactor, ~16 MB per process that uvicorn workers and Celery
# never use, so it is only installed for runserver.
_RUNSERVER = sys.argv[1:2] == ["runserver"]
INSTALLED_APPS = [
    *(["daphne"] if _RUNSERVER else []),
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "channels",
    "ninja",  # its bundled Swagger UI files (no CDN) for /v1/docs
    "providers",
    "tenants",
    "routing",
    "usage",
]

# The stock chain: admin, DRF, /metrics and every other view (Django's stock ASGI handler).
MIDDLEWARE = [
    "gateway_project.middleware.RequestIdMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]
# The inference API (gateway_project.fast_asgi) runs its own chain of native async middleware
# only: the MiddlewareMixin ones above hop to a thread twice per request each. Its metrics are
# routing.metrics' gateway_* series (recorded by the routing service, no middleware needed).
INFERENCE_MIDDLEWARE = [
    "gateway_project.middleware.RequestIdMiddleware",
    "gateway_project.middleware.InferenceErrorShapeMiddleware",
]
# HTTP paths served by that handler (a prefix ending in "/" covers its subtree; otherwise the
# exact path, with or without a trailing slash).
INFERENCE_PATHS = ("/v1/", "/api/v1/generate")
INFERENCE_URLCONF = "gateway_project.urls_inference"

ROOT_URLCONF = "gateway_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "gateway_project.asgi.application"

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # A file (not :memory:) so that live server processes started by tests share it.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test_db.sqlite3")}
else:
    # Persistent connections are unsafe under ASGI; use psycopg's own pool instead.
    DATABASES["default"].setdefault("OPTIONS", {})
    if env_bool("DATABASE_POOL", True):
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": env_int("DATABASE_POOL_MAX", 10),
        }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "")

# The state store holds rate windows, concurrency slots, budget counters and the usage stream.
GATEWAY_STATE_BACKEND = env_str("GATEWAY_STATE_BACKEND", "redis" if REDIS_URL else "memory")
# Concurrency slots and budget reservations of a process that died expire after this; keep it
# above the longest request (GATEWAY_UPSTREAM_TOTAL_TIMEOUT) so a live request never loses its slot.
GATEWAY_ADMISSION_TTL_SECONDS = env_float("GATEWAY_ADMISSION_TTL_SECONDS", 900.0)
# An inference call's hold (slot + reservation) lasts as long as its route can run (every
# target's total timeout x attempts, plus retry pauses) plus this margin for settling; the
# call's own deadline is the hold minus the margin (routing.inference.hold_seconds).
GATEWAY_HOLD_MARGIN_SECONDS = env_float("GATEWAY_HOLD_MARGIN_SECONDS", 30.0)
# The reservation of an image part: the worst case of the providers' documented rules
# (OpenAI high detail 1,445 (gpt-4o), patch models up to ~2,650; Anthropic ~1,600). Raise it
# for models that bill images at a multiple (gpt-4o-mini: up to ~48,000).
GATEWAY_IMAGE_TOKENS_MAX = env_int("GATEWAY_IMAGE_TOKENS_MAX", 3_000)
# Idempotency-Key records: how long an answered key is remembered (and its JSON answer
# replayed), and the largest answer kept for replay (larger ones: 409 on retry).
GATEWAY_IDEMPOTENCY_TTL_SECONDS = env_float("GATEWAY_IDEMPOTENCY_TTL_SECONDS", 86_400.0)
GATEWAY_IDEMPOTENCY_MAX_BODY_BYTES = env_int("GATEWAY_IDEMPOTENCY_MAX_BODY_BYTES", 1_048_576)
GATEWAY_STATE_REDIS_POOL_SIZE = env_int("GATEWAY_STATE_REDIS_POOL_SIZE", 64)
# Budget alerts (webhook POST, email) run in Celery, off the request path.
GATEWAY_ALERT_WEBHOOK_TIMEOUT_SECONDS = env_float("GATEWAY_ALERT_WEBHOOK_TIMEOUT_SECONDS", 5.0)

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 defaults socket_timeout to 5 s, which tears down idle consumers
            # (channels_redis #422); the layer's blocking receive needs more.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 60}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "")
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Periodic work (`celery -A gateway_project beat`). Each entry expires after one interval so a
# backlog of stale ticks never piles up behind a slow run.
CELERY_BEAT_SCHEDULE = {
    "usage-stream-drain": {
        "task": "usage.tasks.usage_stream_drain",
        "schedule": env_float("GATEWAY_USAGE_DRAIN_INTERVAL_SECONDS", 5.0),
        "options": {"expires": env_float("GATEWAY_USAGE_DRAIN_INTERVAL_SECONDS", 5.0)},
    },
    "usage-orphaned-holds-settle": {
        "task": "usage.tasks.usage_orphaned_holds_settle",
        "schedule": env_float("GATEWAY_HOLDS_SWEEP_INTERVAL_SECONDS", 10.0),
        "options": {"expires": env_float("GATEWAY_HOLDS_SWEEP_INTERVAL_SECONDS", 10.0)},
    },
    "usage-rollup": {
        "task": "usage.tasks.usage_rollup",
        "schedule": env_float("GATEWAY_USAGE_ROLLUP_INTERVAL_SECONDS", 60.0),
        "options": {"expires": env_float("GATEWAY_USAGE_ROLLUP_INTERVAL_SECONDS", 60.0)},
    },
    "model-prices-sync": {"task": "usage.tasks.model_prices_sync", "schedule": 60.0},
    "usage-retention": {"task": "usage.tasks.usage_retention", "schedule": 3600.0},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
GATEWAY_SERVE_STATIC = env_bool("GATEWAY_SERVE_STATIC", True)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Gateway management API",
    "DESCRIPTION": "Tenants, API keys, limits and budgets. Authenticate with "
    "`Authorization: Token <operator token>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Gateway knobs.
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_BODY_BYTES
GATEWAY_KEY_PREFIX = env_str("GATEWAY_KEY_PREFIX", "gw-")
GATEWAY_SNAPSHOT_TTL_SECONDS = env_float("GATEWAY_SNAPSHOT_TTL_SECONDS", 30.0)
GATEWAY_UPSTREAM_CONNECT_TIMEOUT = env_float("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", 5.0)
GATEWAY_UPSTREAM_READ_TIMEOUT = env_float("GATEWAY_UPSTREAM_READ_TIMEOUT", 60.0)
GATEWAY_UPSTREAM_TOTAL_TIMEOUT = env_float("GATEWAY_UPSTREAM_TOTAL_TIMEOUT", 600.0)
GATEWAY_MOCK_LATENCY_MS = env_float("GATEWAY_MOCK_LATENCY_MS", 0.0)
# Streaming: an SSE comment goes out after this many seconds of upstream silence, so proxies
# and clients keep the connection; early failures within that window still get a real status.
GATEWAY_SSE_KEEPALIVE_SECONDS = env_float("GATEWAY_SSE_KEEPALIVE_SECONDS", 15.0)
# Circuit breakers per deployment: open after N consecutive retryable failures, probe again
# (half-open, one request) after the cooldown.
GATEWAY_BREAKER_FAILURE_THRESHOLD = env_int("GATEWAY_BREAKER_FAILURE_THRESHOLD", 5)
GATEWAY_BREAKER_COOLDOWN_SECONDS = env_float("GATEWAY_BREAKER_COOLDOWN_SECONDS", 30.0)
# Websocket /ws/v1/chat: requests in flight per connection, and how long a connection may stay
# unauthenticated when the key comes in the first message.
GATEWAY_WS_MAX_CONCURRENT_REQUESTS = env_int("GATEWAY_WS_MAX_CONCURRENT_REQUESTS", 4)
GATEWAY_WS_AUTH_TIMEOUT_SECONDS = env_float("GATEWAY_WS_AUTH_TIMEOUT_SECONDS", 10.0)
# Secrets of providers are encrypted at rest with a key derived from this (or SECRET_KEY).
GATEWAY_ENCRYPTION_KEY = env_str("GATEWAY_ENCRYPTION_KEY", "")
GATEWAY_USAGE_WRITE_MODE = env_str(
    "GATEWAY_USAGE_WRITE_MODE", "stream" if GATEWAY_STATE_BACKEND == "redis" else "direct"
)
# Usage pipeline. In "stream" mode settlement XADDs the event (orjson under field "e") to this
# stream; Celery drains it through the consumer group. Block time stays below redis-py 8's
# default socket_timeout (5 s) so blocking reads never time out the connection.
GATEWAY_USAGE_STREAM = env_str("GATEWAY_USAGE_STREAM", "gw:usage")
GATEWAY_USAGE_STREAM_GROUP = env_str("GATEWAY_USAGE_STREAM_GROUP", "usage-writers")
GATEWAY_USAGE_DEAD_LETTER_STREAM = env_str("GATEWAY_USAGE_DEAD_LETTER_STREAM", "gw:usage:dead")
GATEWAY_USAGE_DRAIN_BATCH = env_int("GATEWAY_USAGE_DRAIN_BATCH", 500)
GATEWAY_USAGE_DRAIN_BLOCK_MS = env_int("GATEWAY_USAGE_DRAIN_BLOCK_MS", 1000)
# How long a drain waits for a partial batch to fill (fewer, larger transactions under load).
GATEWAY_USAGE_DRAIN_LINGER_MS = env_int("GATEWAY_USAGE_DRAIN_LINGER_MS", 200)
GATEWAY_USAGE_DRAIN_MAX_SECONDS = env_float("GATEWAY_USAGE_DRAIN_MAX_SECONDS", 50.0)
GATEWAY_USAGE_CLAIM_MIN_IDLE_MS = env_int("GATEWAY_USAGE_CLAIM_MIN_IDLE_MS", 60_000)
GATEWAY_USAGE_DRAIN_INTERVAL_SECONDS = env_float("GATEWAY_USAGE_DRAIN_INTERVAL_SECONDS", 5.0)
# Direct mode: bounded in-process queue; a full queue makes the caller wait (never drops).
GATEWAY_USAGE_QUEUE_MAX = env_int("GATEWAY_USAGE_QUEUE_MAX", 10_000)
GATEWAY_USAGE_WRITER_BATCH = env_int("GATEWAY_USAGE_WRITER_BATCH", 500)
# Rollups recompute every bucket touched by events ingested since the last run minus this
# overlap (covers batches that committed late).
GATEWAY_USAGE_ROLLUP_INTERVAL_SECONDS = env_float("GATEWAY_USAGE_ROLLUP_INTERVAL_SECONDS", 60.0)
GATEWAY_USAGE_ROLLUP_OVERLAP_SECONDS = env_int("GATEWAY_USAGE_ROLLUP_OVERLAP_SECONDS", 600)
# Raw events older than this are deleted once rollups covering them are final.
GATEWAY_USAGE_RETENTION_DAYS = env_int("GATEWAY_USAGE_RETENTION_DAYS", 90)
GATEWAY_LOG_LEVEL = env_str("GATEWAY_LOG_LEVEL", "INFO")
GATEWAY_ACCESS_LOG = env_bool("GATEWAY_ACCESS_LOG", True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "gateway_project.logging.JsonFormatter"}},
    "handlers": {
        "console": {"class": "gateway_project.logging.BufferedStreamHandler", "formatter": "json"}
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "django": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "gateway": {"handlers": ["console"], "level": GATEWAY_LOG_LEVEL, "propagate": False},
    },
}

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "gateway@localhost")
