"""Admission cost against the size of a rate window (issue 14, item 4).

Fills a tenant's request and token windows with N admitted requests (pipelined, through the
real admission script), then times refused and admitted admissions against it, round trip on
loopback (median of `--probes` calls). With `--ref <git ref>` the same is run with that
revision's admit.lua for comparison (e.g. the sliding-log script before bucketing).

    REDIS_URL=redis://127.0.0.1:6379/3 python bench/admission_window_bench.py \\
        --sizes 10 10000 100000 --ref 88da122

It FLUSHes the Redis database it is given: use your own index."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tenants" / "state" / "lua" / "admit.lua"
HUGE = 10**12


def _keys(scope: int) -> list[str]:
    base = f"gw:{{bench}}:t:{scope}"
    names = ["rpm:b", "tpm:b", "win:tickets", "tpm:sum", "slots", "spend:m", "resv:m"]
    names += ["resv:m:exp", "resv:m:sum"]
    return ["gw:{bench}:config_version", *(f"{base}:{name}" for name in names)]


def _argv(ticket: str, tokens: int, rpm: int, tpm: int) -> list:
    return [ticket, tokens, 0, 900_000, 60_000, 1, rpm, tpm, -1, -1]


def _fill(client, script, keys: list[str], count: int) -> None:
    done = 0
    while done < count:
        batch = min(5_000, count - done)
        pipe = client.pipeline(transaction=False)
        for k in range(batch):
            script(keys=keys, args=_argv(f"f{done + k}", 1, HUGE, HUGE), client=pipe)
        pipe.execute()
        done += batch


def _time(client, script, keys, args, probes: int) -> float:
    samples = []
    for _ in range(probes):
        started = time.perf_counter()
        script(keys=keys, args=args)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def run(client, source: str, label: str, sizes: list[int], probes: int) -> None:
    script = client.register_script(source)
    for n, size in enumerate(sizes):
        client.flushdb()
        keys = _keys(n + 1)
        started = time.perf_counter()
        _fill(client, script, keys, size)
        fill_s = time.perf_counter() - started
        tpm_refused = _time(client, script, keys, _argv("p", 10, HUGE, size + 5), probes)
        rpm_refused = _time(client, script, keys, _argv("p", 1, size, HUGE), probes)
        # Admitted probes add entries; a handful next to `size` changes nothing measurable.
        admitted = _time(client, script, keys, _argv("p", 1, HUGE, HUGE), probes)
        print(
            f"{label:>10} window={size:>7}  fill {fill_s:6.2f} s  "
            f"tpm refusal {tpm_refused:8.1f} us  rpm refusal {rpm_refused:8.1f} us  "
            f"admitted {admitted:8.1f} us"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 10_000, 100_000])
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--ref", help="also run admit.lua as of this git revision")
    args = parser.parse_args()
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3"))
    run(client, SCRIPT.read_text(), "bucketed", args.sizes, args.probes)
    if args.ref:
        old = subprocess.run(
            ["git", "show", f"{args.ref}:tenants/state/lua/admit.lua"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        run(client, old, args.ref[:10], args.sizes, args.probes)
    client.flushdb()


if __name__ == "__main__":
    main()
