"""Settings: every knob comes from the environment, read here and nowhere else.

With no environment at all this is the embedded default: SQLite, in-process state store,
in-memory channel layer, Celery tasks run eagerly. Setting DATABASE_URL and REDIS_URL switches
to PostgreSQL and Redis with no code change.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url
from corsheaders.defaults import default_headers as cors_default_headers
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent

# A `.env` beside manage.py (the quick start copies .env.example there) fills in variables the
# environment does not set; the real environment always wins. GATEWAY_ENV_FILE names another
# file, or "" for none.
_ENV_FILE = os.environ.get("GATEWAY_ENV_FILE", str(BASE_DIR / ".env"))
if _ENV_FILE:
    load_dotenv(_ENV_FILE, override=False)


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


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


# -- security: refuse to start in production with development defaults (docs/security.md) --
# DEBUG on is development: a public SECRET_KEY, any Host and a derived encryption key are then
# accepted. DEBUG off (the default) is production: each of them must be set.
DEBUG = env_bool("DEBUG", False)
_DEV_SECRET = "embedded-dev-only-secret-change-me-in-production-0123456789"  # noqa: S105
SECRET_KEY = env_str("SECRET_KEY", _DEV_SECRET if DEBUG else "")
if not DEBUG and (
    SECRET_KEY == _DEV_SECRET
    or len(SECRET_KEY) < 50
    or len(set(SECRET_KEY)) < 5
    or SECRET_KEY.startswith("django-insecure-")
):
    raise ImproperlyConfigured(
        "SECRET_KEY is missing, the public development default, or weak (under 50 characters "
        "or under 5 distinct ones) while DEBUG is off. Set a random SECRET_KEY, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(64))', or DEBUG=1 for "
        "development."
    )
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "*" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS is empty while DEBUG is off: list the host names the gateway answers "
        "to (comma-separated), e.g. ALLOWED_HOSTS=gateway.example.com"
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# Provider secrets stored in the database are sealed with these Fernet keys (comma-separated;
# the first seals, every one opens: add a new key in front, run `manage.py reseal_secrets`,
# then drop the old one). Generate one with
# python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'.
# GATEWAY_ENCRYPTION_KEY (a passphrase, the earlier scheme) still opens what it sealed.
# With DEBUG on and neither set, a key derived from SECRET_KEY is used (development only).
GATEWAY_ENCRYPTION_KEYS = env_list("GATEWAY_ENCRYPTION_KEYS")
GATEWAY_ENCRYPTION_KEY = env_str("GATEWAY_ENCRYPTION_KEY", "")
for _key in GATEWAY_ENCRYPTION_KEYS:
    try:
        if len(base64.urlsafe_b64decode(_key.encode())) != 32:
            raise ValueError("not 32 bytes")
    except ValueError as _exc:
        raise ImproperlyConfigured(
            "GATEWAY_ENCRYPTION_KEYS holds a value that is not a Fernet key (32 url-safe "
            "base64-encoded bytes)"
        ) from _exc
if not DEBUG and not (GATEWAY_ENCRYPTION_KEYS or GATEWAY_ENCRYPTION_KEY):
    raise ImproperlyConfigured(
        "GATEWAY_ENCRYPTION_KEYS is not set while DEBUG is off: provider secrets would be "
        "sealed with a key derived from SECRET_KEY. Generate one with python -c 'from "
        "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
    )

# A provider's `secret_env` may only name variables with one of these prefixes, or listed
# in GATEWAY_PROVIDER_SECRET_ENV_ALLOWED (e.g. OPENAI_API_KEY for an existing deployment).
GATEWAY_PROVIDER_SECRET_ENV_PREFIXES = tuple(
    env_list("GATEWAY_PROVIDER_SECRET_ENV_PREFIXES", "GATEWAY_PROVIDER_")
)
GATEWAY_PROVIDER_SECRET_ENV_ALLOWED = frozenset(env_list("GATEWAY_PROVIDER_SECRET_ENV_ALLOWED"))

# HTTPS. Behind a TLS-terminating reverse proxy set GATEWAY_TRUST_X_FORWARDED_PROTO=1 (and
# make the proxy overwrite X-Forwarded-Proto); never set it when clients reach the gateway
# directly, or they could claim https. Production defaults: redirect http to https (health
# probes exempt), HSTS for a year with subdomains and preload, cookies only over https.
if env_bool("GATEWAY_TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^health(/|$)"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Messages (which carry a new API key's raw value once) live in the server-side session, not
# in a signed but readable cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
# /metrics: scrapes send `Authorization: Bearer <token>`; unset, the endpoint is off (404)
# except with DEBUG on.
GATEWAY_METRICS_TOKEN = env_str("GATEWAY_METRICS_TOKEN", "")

# daphne's app exists to make `manage.py runserver` serve ASGI (development); importing it
# installs twisted's asyncio reactor, ~16 MB per process that uvicorn workers and Celery
# never use, so it is only installed for runserver.
_RUNSERVER = sys.argv[1:2] == ["runserver"]
INSTALLED_APPS = [
    *(["daphne"] if _RUNSERVER else []),
    # Before django.contrib.admin: its admin/object_history.html adds the audit log to every
    # object's History page.
    "audit",
    "gateway_project.apps.GatewayAdminConfig",  # django.contrib.admin + 2FA + banner
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "axes",
    "django_prometheus",
    "rest_framework",
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
    "django_otp.middleware.OTPMiddleware",
    "audit.middleware.AuditActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # Last, as django-axes asks: answers a locked-out login with 429.
    "axes.middleware.AxesMiddleware",
]
# The audit log (audit app, docs/audit.md): every save and delete of these models is recorded.
# "tenant": the attribute holding the tenant id (entries without one are platform-staff only);
# "parent": (label, attribute) of the row it belongs to; "redact": fields never recorded (any
# field or JSON key named like a secret, hash, token or password is redacted anyway).
GATEWAY_AUDIT_MODELS = {
    "providers.Provider": {"redact": ["secret_encrypted"]},
    "providers.Model": {},
    "providers.ModelPrice": {"parent": ("providers.model", "model_id")},
    "routing.Route": {},
    "routing.RouteStep": {"parent": ("routing.route", "route_id")},
    "tenants.Tenant": {"tenant": "id"},
    "tenants.ApiKey": {"tenant": "tenant_id", "redact": ["key_hash"]},
    "tenants.TenantMembership": {"tenant": "tenant_id"},
}
GATEWAY_AUDIT_TENANT_SCOPE = "tenants.selectors.tenant_ids_visible_to"
GATEWAY_ADMIN_PAGINATOR = "tenants.paging.EstimatedCountPaginator"

# The inference API (gateway_project.fast_asgi) runs its own chain of native async middleware
# only: the MiddlewareMixin ones above hop to a thread twice per request each. Its metrics are
# routing.metrics' gateway_* series (recorded by the routing service, no middleware needed).
INFERENCE_MIDDLEWARE = [
    "gateway_project.middleware.RequestIdMiddleware",
    "gateway_project.middleware.InferenceErrorShapeMiddleware",
    "gateway_project.middleware.UnauthenticatedLimitMiddleware",
]
# Security headers the inference handler adds to every answer (precomputed there; the stock
# chain gets the same from SecurityMiddleware and XFrameOptionsMiddleware). HSTS is added
# when the request came over https (SECURE_HSTS_* above).
GATEWAY_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": X_FRAME_OPTIONS,
    "Referrer-Policy": SECURE_REFERRER_POLICY,
}
# CORS for browser clients, off unless origins are listed (django-cors-headers), on the
# inference API and the rest alike: GATEWAY_CORS_ALLOWED_ORIGINS=https://app.example.com,...
# No credentials (cookies) cross origins; keys travel in the Authorization header.
CORS_ALLOWED_ORIGINS = env_list("GATEWAY_CORS_ALLOWED_ORIGINS")
CORS_ALLOW_CREDENTIALS = False
CORS_ALLOW_HEADERS = (
    *cors_default_headers,
    "x-api-key",
    "x-request-id",
    "anthropic-version",
    "anthropic-beta",
    "openai-organization",
    "openai-project",
)
CORS_EXPOSE_HEADERS = [
    "x-request-id",
    "retry-after",
    *(
        f"x-ratelimit-{what}-{unit}"
        for what in ("limit", "remaining", "reset")
        for unit in ("requests", "tokens")
    ),
    "x-gateway-model",
    "x-gateway-provider",
    "x-gateway-route",
    "x-gateway-fallbacks",
    "x-gateway-cost-usd",
]
CORS_PREFLIGHT_MAX_AGE = 600
if CORS_ALLOWED_ORIGINS:
    INSTALLED_APPS.append("corsheaders")
    MIDDLEWARE.insert(1, "corsheaders.middleware.CorsMiddleware")
    INFERENCE_MIDDLEWARE.insert(1, "corsheaders.middleware.CorsMiddleware")
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
                "gateway_project.admin_site.environment",
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
            # How long a query waits for a pooled connection (psycopg's default is 30 s: in a
            # database outage every request would hang that long before its 503).
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 5.0),
        }
    # libpq's connect timeout (whole seconds, 2 at least) and an optional statement timeout.
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", env_int("DATABASE_CONNECT_TIMEOUT", 2)
    )
    _statement_timeout_ms = env_int("DATABASE_STATEMENT_TIMEOUT_MS", 0)
    if _statement_timeout_ms > 0:
        DATABASES["default"]["OPTIONS"]["options"] = f"-c statement_timeout={_statement_timeout_ms}"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "")

# The state store holds rate windows, concurrency slots, budget counters and the usage stream.
GATEWAY_STATE_BACKEND = env_str("GATEWAY_STATE_BACKEND", "redis" if REDIS_URL else "memory")
# The hot-path client (tenants/state/resp.py) speaks redis:// and rediss:// (TLS; CA bundle,
# client certificate and verification from ssl_* query parameters as with redis-py).
if GATEWAY_STATE_BACKEND == "redis" and REDIS_URL.split("://", 1)[0] not in ("redis", "rediss"):
    raise ImproperlyConfigured(
        "REDIS_URL must start with redis:// or rediss:// (TLS) for the Redis state store"
    )
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
# Webhook URLs are tenant input fetched by the server (an SSRF path; see docs/security.md):
# https only unless this is on (development), never to loopback/private/link-local/reserved
# addresses except the networks listed here (CIDRs, comma-separated; for an internal
# receiver), and through this egress proxy when set (http://proxy:3128).
GATEWAY_WEBHOOK_ALLOW_HTTP = env_bool("GATEWAY_WEBHOOK_ALLOW_HTTP", False)
GATEWAY_WEBHOOK_ALLOWED_NETWORKS = [
    n.strip() for n in env_str("GATEWAY_WEBHOOK_ALLOWED_NETWORKS", "").split(",") if n.strip()
]
try:
    for _network in GATEWAY_WEBHOOK_ALLOWED_NETWORKS:
        ipaddress.ip_network(_network, strict=False)
except ValueError as _exc:
    raise ImproperlyConfigured(f"GATEWAY_WEBHOOK_ALLOWED_NETWORKS: {_exc}") from _exc
GATEWAY_WEBHOOK_PROXY = env_str("GATEWAY_WEBHOOK_PROXY", "")

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
# Beat records its liveness in Redis on every tick (gateway_project/celery.py).
CELERY_BEAT_SCHEDULER = env_str(
    "CELERY_BEAT_SCHEDULER", "gateway_project.celery:HeartbeatScheduler"
)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
GATEWAY_OPS_ALERT_INTERVAL_SECONDS = env_float("GATEWAY_OPS_ALERT_INTERVAL_SECONDS", 30.0)
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
    "ops-alerts-evaluate": {
        "task": "gateway_project.alerts.ops_alerts_evaluate",
        "schedule": GATEWAY_OPS_ALERT_INTERVAL_SECONDS,
        "options": {"expires": GATEWAY_OPS_ALERT_INTERVAL_SECONDS},
    },
    "api-key-reminders": {
        "task": "tenants.tasks.api_key_reminders_dispatch",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
}
# gateway_project is not an app: its task module is imported by name.
CELERY_IMPORTS = ["gateway_project.alerts"]

# Operational alerts (gateway_project/alerts.py, the same rules as deploy/prometheus/alerts.yml).
GATEWAY_OPS_ALERT_WINDOW_SECONDS = env_float("GATEWAY_OPS_ALERT_WINDOW_SECONDS", 300.0)
GATEWAY_OPS_ALERT_MIN_REQUESTS = env_int("GATEWAY_OPS_ALERT_MIN_REQUESTS", 20)
GATEWAY_OPS_ALERT_ERROR_RATE = env_float("GATEWAY_OPS_ALERT_ERROR_RATE", 0.05)
GATEWAY_OPS_ALERT_P95_LATENCY_SECONDS = env_float("GATEWAY_OPS_ALERT_P95_LATENCY_SECONDS", 30.0)
GATEWAY_OPS_ALERT_PROVIDER_FAILURE_RATIO = env_float(
    "GATEWAY_OPS_ALERT_PROVIDER_FAILURE_RATIO", 0.5
)
GATEWAY_OPS_ALERT_BACKLOG = env_int("GATEWAY_OPS_ALERT_BACKLOG", 10_000)
GATEWAY_OPS_ALERT_DRAIN_LAG_SECONDS = env_float("GATEWAY_OPS_ALERT_DRAIN_LAG_SECONDS", 300.0)
# Where notifications go (operator-configured, none by default): comma-separated addresses, a
# JSON webhook, and a Slack (or Mattermost, Rocket.Chat...) incoming-webhook URL.
GATEWAY_OPS_ALERT_EMAILS = [
    a.strip() for a in env_str("GATEWAY_OPS_ALERT_EMAILS", "").split(",") if a.strip()
]
GATEWAY_OPS_ALERT_WEBHOOK_URL = env_str("GATEWAY_OPS_ALERT_WEBHOOK_URL", "")
GATEWAY_OPS_ALERT_SLACK_WEBHOOK_URL = env_str("GATEWAY_OPS_ALERT_SLACK_WEBHOOK_URL", "")
GATEWAY_OPS_ALERT_SOURCE = env_str("GATEWAY_OPS_ALERT_SOURCE", "llm-gateway")

# -- admin security (docs/admin-security.md) -------------------------------------------------
# Shown as a banner on every admin page; "production" (or prod-*) also turns on the secure
# defaults below.
GATEWAY_ENVIRONMENT_NAME = env_str("GATEWAY_ENVIRONMENT_NAME", "development")
_PRODUCTION = GATEWAY_ENVIRONMENT_NAME.lower().startswith("prod")
# Staff must log in to the admin with a TOTP code as well (django-otp); enroll with
# `manage.py admin_2fa_enroll <username>`. On by default in production only.
GATEWAY_ADMIN_REQUIRE_2FA = env_bool("GATEWAY_ADMIN_REQUIRE_2FA", _PRODUCTION)
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", f"LLM Gateway ({GATEWAY_ENVIRONMENT_NAME})")

# Login throttling (django-axes): after this many failed logins for one username from one
# address, that pair is locked out for the cool-off time (answers 429); `manage.py
# axes_reset` or the admin's "Access attempts" unlocks. Attempts are kept in the database so
# every worker sees them.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("GATEWAY_ADMIN_LOGIN_THROTTLE", True)
AXES_FAILURE_LIMIT = env_int("GATEWAY_ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("GATEWAY_ADMIN_LOGIN_COOLOFF_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The address is REMOTE_ADDR: behind a reverse proxy, run uvicorn with --proxy-headers and
# --forwarded-allow-ips=<proxy> so that it is the client's, not the proxy's.

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": env_int("GATEWAY_PASSWORD_MIN_LENGTH", 12)},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Admin sessions: absolute lifetime, gone when the browser closes (secure-only cookies: see
# SESSION_COOKIE_SECURE / CSRF_COOKIE_SECURE above, on unless DEBUG).
SESSION_COOKIE_AGE = env_int("GATEWAY_SESSION_AGE_SECONDS", 8 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = env_bool("GATEWAY_SESSION_EXPIRE_AT_BROWSER_CLOSE", True)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
GATEWAY_SERVE_STATIC = env_bool("GATEWAY_SERVE_STATIC", True)

REST_FRAMEWORK = {
    # Operator tokens: hashed, expiring, read or write, optionally tenant-limited
    # (tenants/api/auth.py; `manage.py create_operator_token`).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api.auth.OperatorTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "tenants.api.auth.TokenScopeAllows",
    ],
    "DEFAULT_PAGINATION_CLASS": "gateway_project.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# Operator tokens expire after this many days unless created with another lifetime (at most
# the maximum).
GATEWAY_OPERATOR_TOKEN_DAYS = env_int("GATEWAY_OPERATOR_TOKEN_DAYS", 90)
GATEWAY_OPERATOR_TOKEN_MAX_DAYS = env_int("GATEWAY_OPERATOR_TOKEN_MAX_DAYS", 366)
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Gateway management API",
    "DESCRIPTION": "Tenants, API keys, limits and budgets. Authenticate with "
    "`Authorization: Token <operator token>` (manage.py create_operator_token).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Gateway knobs.
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_BODY_BYTES
# Slowloris on the inference paths (see docs/asgi.md): a request body must arrive within
# GATEWAY_BODY_READ_TIMEOUT_S and, after a grace, at GATEWAY_BODY_MIN_RATE_BYTES per second on
# average (0 = no rate floor); otherwise 408 and the connection is closed.
GATEWAY_BODY_READ_TIMEOUT_S = env_float("GATEWAY_BODY_READ_TIMEOUT_S", 30.0)
GATEWAY_BODY_MIN_RATE_BYTES = env_int("GATEWAY_BODY_MIN_RATE_BYTES", 1024)
GATEWAY_BODY_MIN_RATE_GRACE_S = env_float("GATEWAY_BODY_MIN_RATE_GRACE_S", 5.0)
# Key policy caches per process (bounded LRUs): keys that exist, and keys that do not (so that
# random keys neither reach the database each time nor push valid keys out).
GATEWAY_KEY_CACHE_SIZE = env_int("GATEWAY_KEY_CACHE_SIZE", 100_000)
GATEWAY_NEGATIVE_KEY_CACHE_SIZE = env_int("GATEWAY_NEGATIVE_KEY_CACHE_SIZE", 10_000)
# Unauthenticated traffic per client address: after this many 401s in a minute, requests from
# that address with a key not known to the process get 429 until the minute ends (0 = off).
GATEWAY_UNAUTH_PER_IP_PER_MINUTE = env_int("GATEWAY_UNAUTH_PER_IP_PER_MINUTE", 20)
# PostgreSQL outage (docs/security.md): key policies and the routing snapshot are served from
# the last good copy up to this many seconds after it was loaded while the database cannot be
# read; after a failed read the database is tried again at most every GATEWAY_DB_RETRY_SECONDS.
GATEWAY_STALE_MAX_SECONDS = env_float("GATEWAY_STALE_MAX_SECONDS", 900.0)
GATEWAY_DB_RETRY_SECONDS = env_float("GATEWAY_DB_RETRY_SECONDS", 1.0)
# /health/ready answers within this many seconds, naming the dependency that did not answer.
GATEWAY_READY_TIMEOUT_SECONDS = env_float("GATEWAY_READY_TIMEOUT_SECONDS", 0.9)
# Websocket, before and after authentication (gateway_project.ws_guard, docs/security.md).
GATEWAY_WS_PREAUTH_MAX_MESSAGES = env_int("GATEWAY_WS_PREAUTH_MAX_MESSAGES", 4)
GATEWAY_WS_PREAUTH_MAX_BYTES = env_int("GATEWAY_WS_PREAUTH_MAX_BYTES", 16 * 1024)
GATEWAY_WS_MAX_MESSAGE_BYTES = env_int("GATEWAY_WS_MAX_MESSAGE_BYTES", GATEWAY_MAX_BODY_BYTES)
GATEWAY_WS_MAX_JSON_DEPTH = env_int("GATEWAY_WS_MAX_JSON_DEPTH", 64)
GATEWAY_KEY_PREFIX = env_str("GATEWAY_KEY_PREFIX", "gw-")
# Key rotation: the secret a rotation replaces keeps working this long (same key record, same
# billing); reminders (alert webhook/email) go out this many days before a key expires or a
# rotation's grace period ends.
GATEWAY_KEY_ROTATION_GRACE_SECONDS = env_int("GATEWAY_KEY_ROTATION_GRACE_SECONDS", 86_400)
GATEWAY_KEY_EXPIRY_REMINDER_DAYS = env_int("GATEWAY_KEY_EXPIRY_REMINDER_DAYS", 7)
GATEWAY_SNAPSHOT_TTL_SECONDS = env_float("GATEWAY_SNAPSHOT_TTL_SECONDS", 30.0)
GATEWAY_UPSTREAM_CONNECT_TIMEOUT = env_float("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", 5.0)
GATEWAY_UPSTREAM_READ_TIMEOUT = env_float("GATEWAY_UPSTREAM_READ_TIMEOUT", 60.0)
GATEWAY_UPSTREAM_TOTAL_TIMEOUT = env_float("GATEWAY_UPSTREAM_TOTAL_TIMEOUT", 600.0)
GATEWAY_MOCK_LATENCY_MS = env_float("GATEWAY_MOCK_LATENCY_MS", 0.0)
# Streaming: an SSE comment goes out after this many seconds of upstream silence, so proxies
# and clients keep the connection; early failures within that window still get a real status.
GATEWAY_SSE_KEEPALIVE_SECONDS = env_float("GATEWAY_SSE_KEEPALIVE_SECONDS", 15.0)
# Circuit breakers per deployment, shared by every process through the state store: open when
# more than FAILURE_RATIO of at least MIN_VOLUME calls within WINDOW failed; probe again
# (half-open, one request) after the cooldown. REFRESH/FLUSH: how stale this process's mirror
# may get and how long successes may wait to be counted (docs/routing.md).
GATEWAY_BREAKER_WINDOW_SECONDS = env_float("GATEWAY_BREAKER_WINDOW_SECONDS", 60.0)
GATEWAY_BREAKER_MIN_VOLUME = env_int("GATEWAY_BREAKER_MIN_VOLUME", 10)
GATEWAY_BREAKER_FAILURE_RATIO = env_float("GATEWAY_BREAKER_FAILURE_RATIO", 0.5)
GATEWAY_BREAKER_REFRESH_SECONDS = env_float("GATEWAY_BREAKER_REFRESH_SECONDS", 0.5)
GATEWAY_BREAKER_FLUSH_SECONDS = env_float("GATEWAY_BREAKER_FLUSH_SECONDS", 0.25)
GATEWAY_BREAKER_COOLDOWN_SECONDS = env_float("GATEWAY_BREAKER_COOLDOWN_SECONDS", 30.0)
# Websocket /ws/v1/chat: requests in flight per connection, and how long a connection may stay
# unauthenticated when the key comes in the first message.
GATEWAY_WS_MAX_CONCURRENT_REQUESTS = env_int("GATEWAY_WS_MAX_CONCURRENT_REQUESTS", 4)
GATEWAY_WS_AUTH_TIMEOUT_SECONDS = env_float("GATEWAY_WS_AUTH_TIMEOUT_SECONDS", 10.0)
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
# Every Celery worker drains the stream continuously in a background thread (usage/drainer.py),
# in slices of this length, so usage flows with or without beat.
GATEWAY_USAGE_DRAIN_IN_WORKER = env_bool("GATEWAY_USAGE_DRAIN_IN_WORKER", True)
GATEWAY_USAGE_DRAIN_SLICE_SECONDS = env_float("GATEWAY_USAGE_DRAIN_SLICE_SECONDS", 5.0)
# /health/ready and the alerts call the drain "stale" when no drain slice finished (or beat did
# not tick) for this long, and lagging when the oldest undrained event is older than the lag.
GATEWAY_OPS_HEARTBEAT_STALE_SECONDS = env_float("GATEWAY_OPS_HEARTBEAT_STALE_SECONDS", 60.0)
GATEWAY_OPS_DRAIN_LAG_READY_SECONDS = env_float("GATEWAY_OPS_DRAIN_LAG_READY_SECONDS", 300.0)
# Direct mode: bounded in-process queue; a full queue makes the caller wait (never drops).
GATEWAY_USAGE_QUEUE_MAX = env_int("GATEWAY_USAGE_QUEUE_MAX", 10_000)
GATEWAY_USAGE_WRITER_BATCH = env_int("GATEWAY_USAGE_WRITER_BATCH", 500)
# Rollups recompute every bucket touched by events ingested since the last run minus this
# overlap (covers batches that committed late).
GATEWAY_USAGE_ROLLUP_INTERVAL_SECONDS = env_float("GATEWAY_USAGE_ROLLUP_INTERVAL_SECONDS", 60.0)
GATEWAY_USAGE_ROLLUP_OVERLAP_SECONDS = env_int("GATEWAY_USAGE_ROLLUP_OVERLAP_SECONDS", 600)
# Direct (embedded) mode has no beat: the in-process writer rolls up at most this often after
# it wrote events, so dashboards follow within that time (0 turns it off).
GATEWAY_USAGE_ROLLUP_AFTER_WRITE_SECONDS = env_float(
    "GATEWAY_USAGE_ROLLUP_AFTER_WRITE_SECONDS", 10.0 if CELERY_TASK_ALWAYS_EAGER else 0.0
)
# Raw events older than this are deleted once rollups covering them are final.
GATEWAY_USAGE_RETENTION_DAYS = env_int("GATEWAY_USAGE_RETENTION_DAYS", 90)
# Prometheus: per-tenant series (gateway_tenant_*) only when turned on (one series per tenant).
GATEWAY_METRICS_TENANT_LABEL = env_bool("GATEWAY_METRICS_TENANT_LABEL", False)
# OpenTelemetry traces (off by default; docs/metrics-api.md): OTLP over HTTP to
# OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + "/v1/traces".
GATEWAY_OTEL_ENABLED = env_bool("GATEWAY_OTEL_ENABLED", False)
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
GATEWAY_OTEL_TRACES_ENDPOINT = env_str(
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", OTEL_EXPORTER_OTLP_ENDPOINT.rstrip("/") + "/v1/traces"
)
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME", "llm-gateway")
if GATEWAY_OTEL_ENABLED:
    # Keeps the client's traceparent for the request span; absent (zero cost) when off.
    INFERENCE_MIDDLEWARE = [*INFERENCE_MIDDLEWARE, "routing.tracing.TraceContextMiddleware"]
# Response cache (docs/cache.md): off unless a route or key enables it. It may live in its own
# Redis; when that store is slow or down, requests are served from upstream (never refused).
GATEWAY_CACHE_ENABLED = env_bool("GATEWAY_CACHE_ENABLED", True)
# A request may turn the cache on for itself (`x-gateway-cache: use`), within its own tenant.
GATEWAY_CACHE_REQUEST_OPT_IN = env_bool("GATEWAY_CACHE_REQUEST_OPT_IN", True)
GATEWAY_CACHE_REDIS_URL = env_str("GATEWAY_CACHE_REDIS_URL", REDIS_URL)
GATEWAY_CACHE_TIMEOUT_S = env_float("GATEWAY_CACHE_TIMEOUT_S", 0.25)
GATEWAY_CACHE_PAUSE_AFTER_ERROR_S = env_float("GATEWAY_CACHE_PAUSE_AFTER_ERROR_S", 1.0)
GATEWAY_CACHE_MAX_TTL_S = env_int("GATEWAY_CACHE_MAX_TTL_S", 7 * 24 * 3600)
GATEWAY_CACHE_MAX_ENTRY_BYTES = env_int("GATEWAY_CACHE_MAX_ENTRY_BYTES", 256 * 1024)
GATEWAY_CACHE_MAX_ENTRIES_PER_TENANT = env_int("GATEWAY_CACHE_MAX_ENTRIES_PER_TENANT", 10_000)
GATEWAY_CACHE_LOCAL_ENTRIES = env_int("GATEWAY_CACHE_LOCAL_ENTRIES", 512)
GATEWAY_CACHE_LOCAL_TTL_S = env_float("GATEWAY_CACHE_LOCAL_TTL_S", 2.0)
# Semantic cache: questions kept per identical context (tenant, route, system prompt, tools,
# parameters); a lookup compares against at most this many vectors.
GATEWAY_CACHE_SEMANTIC_MAX_PER_CONTEXT = env_int("GATEWAY_CACHE_SEMANTIC_MAX_PER_CONTEXT", 256)
GATEWAY_LOG_LEVEL = env_str("GATEWAY_LOG_LEVEL", "INFO")
GATEWAY_ACCESS_LOG = env_bool("GATEWAY_ACCESS_LOG", True)

# Optional JSON log file besides stdout, rotated by size. "{pid}" in the path gives each
# process its own file (several uvicorn workers must not rotate one file between them).
GATEWAY_LOG_FILE = env_str("GATEWAY_LOG_FILE", "").replace("{pid}", str(os.getpid()))
GATEWAY_LOG_FILE_MAX_BYTES = env_int("GATEWAY_LOG_FILE_MAX_BYTES", 50 * 1024 * 1024)
GATEWAY_LOG_FILE_BACKUPS = env_int("GATEWAY_LOG_FILE_BACKUPS", 5)
_LOG_HANDLERS = ["console", *(["file"] if GATEWAY_LOG_FILE else [])]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "gateway_project.logging.JsonFormatter"}},
    "handlers": {
        "console": {"class": "gateway_project.logging.BufferedStreamHandler", "formatter": "json"},
        **(
            {
                "file": {
                    "class": "logging.handlers.RotatingFileHandler",
                    "formatter": "json",
                    "filename": GATEWAY_LOG_FILE,
                    "maxBytes": GATEWAY_LOG_FILE_MAX_BYTES,
                    "backupCount": GATEWAY_LOG_FILE_BACKUPS,
                    "encoding": "utf-8",
                }
            }
            if GATEWAY_LOG_FILE
            else {}
        ),
    },
    "root": {"handlers": _LOG_HANDLERS, "level": "WARNING"},
    "loggers": {
        "django": {"handlers": _LOG_HANDLERS, "level": "WARNING", "propagate": False},
        "gateway": {"handlers": _LOG_HANDLERS, "level": GATEWAY_LOG_LEVEL, "propagate": False},
    },
}

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "gateway@localhost")
