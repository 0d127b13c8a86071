"""Write docs/benchmarks.md from one bench/run.sh run: the targets, the full comparison table
(../shared/bench's own Markdown), the machine, the commands and the hot-path profile.

    python bench/report.py --results DIR [--workers 2] [--serve-cmd ...] [--loadavg "1.0 0.9"]
                           [--output docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_top import parse, report  # noqa: E402

GATEWAY, DIRECT, LITELLM = "gateway", "direct", "litellm-w2"
NOTES_MARKER = "<!-- notes: kept across runs of bench/report.py -->"
TARGETS = (
    ("added latency p50, JSON, c=1", "<= 0.5 ms"),
    ("added TTFB p50, stream, c=1", "<= 1 ms"),
    ("throughput vs LiteLLM (2 workers), JSON, c=50", ">= 10x"),
    ("CPU per request vs LiteLLM (2 workers), worst row", "<= 0.1x"),
    ("RSS per worker, after the run", "<= 120 MB"),
    ("errors (gateway, all rows)", "0"),
)


def _row(rows: list[dict], target: str, mode: str, conc: int) -> dict | None:
    return next(
        (r for r in rows if r["target"] == target and r["mode"] == mode and r["conc"] == conc),
        None,
    )


def _fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}{unit}"


def targets_table(rows: list[dict], worker_rss_mb: list[float]) -> str:
    def delta(mode: str, conc: int, key: str) -> float | None:
        gw, base = _row(rows, GATEWAY, mode, conc), _row(rows, DIRECT, mode, conc)
        if not gw or not base or gw.get(key) is None or base.get(key) is None:
            return None
        return gw[key] - base[key]

    gw50, ll50 = _row(rows, GATEWAY, "json", 50), _row(rows, LITELLM, "json", 50)
    rps_ratio = gw50["rps"] / ll50["rps"] if gw50 and ll50 and ll50["rps"] else None
    cpu_ratios = []
    for r in rows:
        if r["target"] != GATEWAY or not r.get("cpu_ms_per_req"):
            continue
        other = _row(rows, LITELLM, r["mode"], r["conc"])
        if other and other.get("cpu_ms_per_req"):
            cpu_ratios.append(
                (r["cpu_ms_per_req"] / other["cpu_ms_per_req"], f"{r['mode']} c={r['conc']}")
            )
    worst_cpu = max(cpu_ratios) if cpu_ratios else None
    errors = sum(r.get("errors") or 0 for r in rows if r["target"] == GATEWAY)
    measured = [
        _fmt(delta("json", 1, "p50_ms"), " ms"),
        _fmt(delta("stream", 1, "ttfb_p50_ms"), " ms"),
        _fmt(rps_ratio, "x"),
        f"{worst_cpu[0]:.3f}x ({worst_cpu[1]})" if worst_cpu else "-",
        ", ".join(f"{mb:.0f} MB" for mb in worker_rss_mb) or "-",
        str(errors),
    ]
    checks = [
        (delta("json", 1, "p50_ms") or 99) <= 0.5,
        (delta("stream", 1, "ttfb_p50_ms") or 99) <= 1.0,
        (rps_ratio or 0) >= 10,
        bool(worst_cpu) and worst_cpu[0] <= 0.1,
        bool(worker_rss_mb) and max(worker_rss_mb) <= 120,
        errors == 0,
    ]
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for (name, goal), value, ok in zip(TARGETS, measured, checks, strict=True):
        lines.append(f"| {name} | {goal} | {value} | {'yes' if ok else 'no'} |")
    return "\n".join(lines)


def machine() -> list[str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    versions = []
    for package in ("django", "django-ninja", "uvicorn", "uvloop", "httptools", "aiohttp", "redis"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return [
        f"- **Machine**: {os.cpu_count()} vCPU ({cpu}), {mem_kb / 1024 / 1024:.0f} GiB RAM, "
        f"kernel {platform.release()}",
        f"- **Software**: Python {platform.python_version()}; {', '.join(versions)}",
    ]


def git_head(root: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serve-cmd", default="make serve")
    parser.add_argument("--loadavg", default="")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    compare_json = sorted(args.results.glob("compare-*.json"))
    if not compare_json:
        raise SystemExit(f"no compare-*.json in {args.results}")
    data = json.loads(compare_json[-1].read_text())
    rows = data["results"]
    table_md = compare_json[-1].with_suffix(".md").read_text().strip()
    rss_file = args.results / "rss-kb.txt"
    rss = [line.split() for line in rss_file.read_text().splitlines()] if rss_file.exists() else []
    worker_rss_mb = [int(kb) / 1024 for _pid, kb in rss[1:]]
    master_rss_mb = int(rss[0][1]) / 1024 if rss else None
    usage_file = args.results / "usage.json"
    usage = json.loads(usage_file.read_text()) if usage_file.exists() else None
    busy = [r["sys_busy_pct"] for r in rows if r.get("sys_busy_pct") is not None]
    stamp = data["meta"]["date"]  # local time of the machine, "YYYYmmdd-HHMMSS"
    started = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}"
    root = Path(__file__).resolve().parent.parent

    out = [
        "# Benchmarks",
        "",
        "Written by `bench/run.sh` (`make bench`); numbers from one run, never asserted in tests.",
        "The machine has 2 cores shared by the load generator, nginx, LiteLLM and the gateway;",
        "compare targets within one run (bench.py interleaves them at every level).",
        "",
        "## Run",
        "",
        f"- **Date**: {started} (results `{args.results}`), commit `{git_head(root)}`",
        *machine(),
        f"- **Load before the run** (1 / 5 min load average): {args.loadavg or '?'}; "
        f"machine busy during the runs: {min(busy):.0f}-{max(busy):.0f} % "
        "(`sys busy %`, 100 % = both cores)"
        if busy
        else "- **Load**: ?",
        f"- **Gateway**: `{args.serve_cmd}` ({args.workers} uvicorn workers, uvloop, httptools), "
        "PostgreSQL, Redis, `GATEWAY_STATE_BACKEND=redis`, `GATEWAY_USAGE_WRITE_MODE=stream`, "
        "a Celery worker with beat draining the usage stream, logs and metrics on (defaults), "
        "`DEBUG=0`; catalog `bench/catalog.toml` (route `mock-gpt` -> `openai_compatible` "
        "provider at the mock upstream), a tenant and key with every limit set",
        "- **Baseline**: LiteLLM proxy, 2 workers (`LITELLM_WORKERS_LIST=2`), as in "
        "../shared/bench/BASELINE.md",
        "",
        "## Commands",
        "",
        "```bash",
        "make bench            # = bash bench/run.sh",
        "# which runs ../shared/bench/compare.sh with LITELLM_WORKERS_LIST=2 and:",
        f"#   gateway=http://127.0.0.1:8088/v1,pid=<uvicorn master>,keyenv=GW_KEY --out {args.results}",
        f"# argv: {' '.join(data['meta'].get('argv', [])[1:2])} ...",
        "```",
        "",
        "## Targets",
        "",
        targets_table(rows, worker_rss_mb),
        "",
        f"RSS: uvicorn master {master_rss_mb:.0f} MB, workers "
        + ", ".join(f"{mb:.0f} MB" for mb in worker_rss_mb)
        + " (`RSS MB` in the table is the whole tree)."
        if master_rss_mb
        else "",
        "",
    ]
    if usage:
        out += [
            f"Usage pipeline after the run: {usage['events_stored']} usage events stored in "
            f"PostgreSQL; stream backlog {usage['stream']}.",
            "",
        ]
    out += ["## Results", "", table_md, ""]
    profiles = [
        (args.results / "profile-json.txt", "JSON, c=50, one worker of two"),
        (args.results / "profile-stream.txt", "SSE streams, 10 concurrent, one worker of two"),
    ]
    present = [(p, t) for p, t in profiles if p.exists() and p.stat().st_size]
    if present:
        out += [
            "## Profile of the hot path",
            "",
            "py-spy (`record --rate 200 --format raw`, 15 s) on one uvicorn worker while the",
            "harness loads the gateway (before the comparison); summarized by",
            "`bench/profile_top.py`. Raw stacks are in the results directory.",
            "",
        ]
        for path, title in present:
            out.append(report(parse(path), 15, title))
    # Hand-written analysis below the marker survives a re-run.
    notes = ""
    if args.output.exists():
        previous = args.output.read_text()
        if NOTES_MARKER in previous:
            notes = previous[previous.index(NOTES_MARKER) :]
    args.output.write_text("\n".join(out).rstrip() + "\n\n" + (notes or NOTES_MARKER + "\n"))


if __name__ == "__main__":
    main()
