"""Shared test plumbing: service checks, factories, a live gateway server process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
# /metrics needs the bearer token (tests/settings.py sets it for every process tests start).
METRICS_AUTH = {"Authorization": f"Bearer {os.environ.get('GATEWAY_METRICS_TOKEN', '')}"}


def _tcp_open(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def pytest_configure(config):
    """When the services are required (CI), fail at once if they do not answer."""
    if os.environ.get("GATEWAY_TEST_REQUIRE_SERVICES") not in ("1", "true"):
        return
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise pytest.UsageError(
            "GATEWAY_TEST_REQUIRE_SERVICES is set but DATABASE_URL is not PostgreSQL"
        )
    if not _tcp_open(f"postgres://{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}", 5432):
        raise pytest.UsageError("PostgreSQL is required but does not answer")
    if not settings.REDIS_URL or not _tcp_open(settings.REDIS_URL, 6379):
        raise pytest.UsageError("Redis is required but REDIS_URL is unset or does not answer")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(
    url: str, *, timeout_s: float = 20.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s: {last_error}")


def test_database_url() -> str:
    """The URL of the database the test run uses (pytest-django's test database)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


# base URL -> the server process (fault tests kill it with SIGKILL).
SERVER_PROCESSES: dict[str, subprocess.Popen] = {}


@contextmanager
def gateway_server(
    *, env: dict[str, str] | None = None, workers: int = 1, server: str = "uvicorn"
) -> Iterator[str]:
    """Start a real gateway server process on loopback against the test database; yield its
    base URL; stop it (by PID) afterwards."""
    port = free_port()
    # As `make serve` does: an empty multiprocess directory, so /metrics merges all workers.
    metrics_dir = Path(tempfile.mkdtemp(prefix=f"gw-prom-{port}-"))
    process_env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "GATEWAY_SNAPSHOT_TTL_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    if server == "daphne":
        cmd = [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "gateway_project.asgi:application",
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "gateway_project.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--lifespan",
            "auto",
        ]
    log = open(ROOT / f".test-server-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(cmd, cwd=ROOT, env=process_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    SERVER_PROCESSES[base] = process
    try:
        wait_for_http(f"{base}/health", process=process)
        yield base
    finally:
        SERVER_PROCESSES.pop(base, None)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
        log_path = Path(log.name)
        server_log = log_path.read_text(errors="replace")
        log_path.unlink(missing_ok=True)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if "Traceback" in server_log:
            print(server_log[-4000:])  # noqa: T201 - surfaced on failure by pytest


@pytest.fixture
def live_gateway(transactional_db) -> Callable[..., object]:
    """Factory fixture: `with live_gateway(env={...}) as base_url:`."""
    return gateway_server


@pytest.fixture
def redis_url() -> str:
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    return settings.REDIS_URL


@pytest.fixture(autouse=True)
def _process_state_fresh() -> Iterator[None]:
    """Each test starts with this process's caches empty and its own Redis index flushed, so
    no test sees another's snapshot, key policies, counters or usage stream entries."""
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear
    from tenants.state import state_store_set

    if settings.REDIS_URL:
        import redis as redis_sync

        client = redis_sync.Redis.from_url(settings.REDIS_URL)
        try:
            client.flushdb()
        finally:
            client.close()
    snapshot_invalidate()
    policy_cache_clear()
    state_store_set(None)
    yield
    snapshot_invalidate()
    policy_cache_clear()
