"""Settings of the test run: the production settings module with what tests need set
explicitly in the environment (pyproject's DJANGO_SETTINGS_MODULE points here).

The production checks in gateway_project/settings.py stay as they are: tests run with DEBUG
off like production, so they give it a strong test-only SECRET_KEY, their own encryption key,
the loopback host names, and plain-http cookies and no https redirect (test servers listen on
http://127.0.0.1). Values go into os.environ (unless already set, e.g. by CI) before the real
settings load, so gateway and Celery processes that tests start inherit them."""

from __future__ import annotations

import os

_TEST_ENV = {
    "SECRET_KEY": "tests-only-secret-key-never-used-in-production-4f9c2a7e1b3d5f80a6c4e2",
    "GATEWAY_ENCRYPTION_KEYS": "C7pjelBU8kx8Aw7uoyRSiQWrhxlGzfWrSWvQjqY3yQE=",
    "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver,[::1]",
    "SECURE_SSL_REDIRECT": "0",
    "SESSION_COOKIE_SECURE": "0",
    "CSRF_COOKIE_SECURE": "0",
    "GATEWAY_METRICS_TOKEN": "tests-metrics-token",
}
for _name, _value in _TEST_ENV.items():
    os.environ.setdefault(_name, _value)

from gateway_project.settings import *  # noqa: E402, F403
