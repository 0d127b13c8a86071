"""Production settings refuse to start with development secrets, and `check --deploy` is
clean with a production environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STRONG_KEY = "prod-like-secret-9f8e7d6c5b4a39281706f5e4d3c2b1a0-9f8e7d6c5b4a3928"
FERNET_KEY = "RNcHAzkFFlw56B7iKd0BUE4uStQHGgykeiv2TqWGc8Y="
# Everything the test run put in the environment that production settings read.
_SCRUB = (
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "GATEWAY_ENCRYPTION_KEYS",
    "GATEWAY_ENCRYPTION_KEY",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "DJANGO_SETTINGS_MODULE",
)
PRODUCTION = {
    "SECRET_KEY": STRONG_KEY,
    "ALLOWED_HOSTS": "gateway.example.com",
    "GATEWAY_ENCRYPTION_KEYS": FERNET_KEY,
}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "gateway_project.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _load_settings(env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run(env, "-c", "import gateway_project.settings")


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"}, "SECRET_KEY"),
        (
            {
                **PRODUCTION,
                "SECRET_KEY": "embedded-dev-only-secret-change-me-in-production-0123456789",
            },
            "SECRET_KEY",
        ),
        ({**PRODUCTION, "SECRET_KEY": "short-but-random-Zx81"}, "SECRET_KEY"),
        ({**PRODUCTION, "SECRET_KEY": "django-insecure-" + "a1b2c3d4e5" * 5}, "SECRET_KEY"),
        ({**PRODUCTION, "SECRET_KEY": "a" * 64}, "SECRET_KEY"),
        ({**PRODUCTION, "DEBUG": "0", "ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({**PRODUCTION, "GATEWAY_ENCRYPTION_KEYS": ""}, "GATEWAY_ENCRYPTION_KEYS"),
        ({**PRODUCTION, "GATEWAY_ENCRYPTION_KEYS": "not-a-fernet-key"}, "GATEWAY_ENCRYPTION_KEYS"),
        ({**PRODUCTION, "GATEWAY_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/99"}, "ALLOWED_NETWORKS"),
    ],
)
def test_production_settings_refuse_to_load_with_development_defaults(env, complaint):
    result = _load_settings(env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and complaint in result.stderr


def test_production_settings_load_with_real_secrets_and_debug_accepts_dev_defaults():
    assert _load_settings(PRODUCTION).returncode == 0, _load_settings(PRODUCTION).stderr
    debug = _run(
        {"DEBUG": "1"},
        "-c",
        "from gateway_project import settings as s; print(s.ALLOWED_HOSTS, len(s.SECRET_KEY))",
    )
    assert debug.returncode == 0, debug.stderr
    assert "['*']" in debug.stdout


def test_check_deploy_is_clean_with_production_settings():
    result = _run(PRODUCTION, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
