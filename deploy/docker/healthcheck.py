"""The image's HEALTHCHECK, for whichever role the container runs (read from PID 1's command
line, or GATEWAY_HEALTHCHECK_ROLE): web -> GET /health; beat -> its Redis heartbeat is younger than a minute; worker ->
`celery inspect ping` answers for this host. Exit 0 healthy, 1 not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request


def _role() -> str:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "web"
    words = {a.decode(errors="replace") for a in argv}
    if "uvicorn" in words or any(w.endswith("uvicorn") for w in words):
        return "web"
    if "beat" in words:
        return "beat"
    if "worker" in words:
        return "worker"
    return "other"


def main() -> int:
    role = os.environ.get("GATEWAY_HEALTHCHECK_ROLE") or _role()
    if role == "web":
        port = os.environ.get("PORT", "8000")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:  # noqa: S310 - loopback
            return 0 if response.status == 200 else 1
    if role == "beat":
        import redis

        value = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2).get(
            "gw:beat:heartbeat"
        )
        return 0 if value and time.time() - float(value) < 60 else 1
    if role == "worker":
        result = subprocess.run(  # noqa: S603 - fixed argv
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "gateway_project",
                "inspect",
                "ping",
                "-d",
                f"celery@{socket.gethostname()}",
                "--timeout",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return 0 if "pong" in result.stdout else 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001 - any failure is "unhealthy"
        sys.exit(1)
