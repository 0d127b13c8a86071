"""The gateway's own cost per request, in-process: no load generator, no socket to the client,
so the numbers hold on a busy machine. Requests go through `gateway_project.asgi.application`
(the production ASGI app) on a uvloop loop, one at a time, against the real upstream, Redis and
PostgreSQL of the environment.

    python bench/inprocess.py KEY [--requests 2000] [--stream] [--cache] [--profile cprofile|none]

Needs the benchmark catalog (bench/setup_gateway.py) and the mock upstream running
(../shared/bench/start-upstream.sh start). Prints CPU microseconds per request (process time,
so time spent waiting on the upstream and Redis does not count), the RSS, and optionally the
top functions by cProfile's own time."""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import uvloop  # noqa: E402

from gateway_project.asgi import application  # noqa: E402
from tests.gateway_project.asgi_client import asgi_request  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def one(key: str, stream: bool, model: str, cache: bool = False) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
        "stream": stream,
    }
    headers = {"authorization": f"Bearer {key}"}
    if cache:
        # Every request after the first is a response-cache hit (no upstream call).
        body["temperature"] = 0
        headers["x-gateway-cache"] = "use"
    response = await asgi_request(
        application, "POST", "/v1/chat/completions", headers=headers, json=body
    )
    if response.status != 200:
        raise SystemExit(f"request failed: {response.status} {response.body[:300]!r}")


async def run(args: argparse.Namespace) -> None:
    for _ in range(50):  # warm caches, pools, the Lua scripts
        await one(args.key, args.stream, args.model, args.cache)
    profiler = cProfile.Profile() if args.profile == "cprofile" else None
    times0, wall0 = os.times(), time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(args.requests):
        await one(args.key, args.stream, args.model, args.cache)
    if profiler:
        profiler.disable()
    times1, wall = os.times(), time.perf_counter() - wall0
    user, system = times1.user - times0.user, times1.system - times0.system
    cpu = user + system
    mode = ("stream" if args.stream else "json") + (" cache-hit" if args.cache else "")
    print(
        f"{mode}: {args.requests} requests, CPU {cpu / args.requests * 1e6:.0f} us/request "
        f"(user {user / args.requests * 1e6:.0f}, system {system / args.requests * 1e6:.0f}), "
        f"wall {wall / args.requests * 1e6:.0f} us/request, RSS {rss_mb():.0f} MB"
        + (" (under cProfile: inflated)" if profiler else "")
    )
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(args.sort)
        stats.print_stats(args.top)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("key")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument(
        "--cache", action="store_true", help="ask for the response cache: every request hits"
    )
    parser.add_argument("--model", default="mock-gpt")
    parser.add_argument("--profile", choices=["cprofile", "none"], default="none")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="tottime", help="pstats order: tottime, cumtime...")
    args = parser.parse_args()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
