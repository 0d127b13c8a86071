"""Real Celery worker processes for tests: started by PID in their own process group, stopped
by that PID; and a bounded wait on a condition."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests import conftest as root_conftest


def celery_worker_start(
    redis_url: str, tmp_path: Path, name: str, *, beat: bool, extra_env: dict
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "gateway_project",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        "1",
        "--pool",
        "prefork",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if beat:
        cmd += ["-B", "-s", str(tmp_path / f"beat-{name}")]
    env = {
        **os.environ,
        "DATABASE_URL": root_conftest.test_database_url(),
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
    # Own process group: the worker and its pool children are killed together, by our PID.
    return subprocess.Popen(
        cmd,
        cwd=root_conftest.ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def process_stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_until(condition, *, timeout_s: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
