"""Summarize a py-spy profile (`py-spy record --format raw`, i.e. collapsed stacks) of one
gateway worker: where the worker's busy time goes, as Markdown.

    python bench/profile_top.py PROFILE.txt [--top 20] [--title "..."]

Three views: busy time by component (the package of the innermost frame that is ours, or the
library the time is spent in), functions by self time, and our functions by inclusive time."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_OURS = ("gateway_project/", "routing/", "tenants/", "providers/", "usage/")
_LIBS = (
    ("django/", "django"),
    ("ninja/", "django-ninja"),
    ("pydantic/", "pydantic"),
    ("pydantic_core/", "pydantic"),
    ("aiohttp/", "aiohttp (upstream client)"),
    ("yarl/", "aiohttp (upstream client)"),
    ("multidict/", "aiohttp (upstream client)"),
    ("redis/", "redis-py"),
    ("uvicorn/", "uvicorn"),
    ("asgiref/", "asgiref"),
    ("asyncio/", "asyncio"),
    ("logging/", "logging"),
    ("prometheus_client/", "prometheus_client"),
    ("tiktoken", "tiktoken"),
    ("decimal", "decimal"),
)


def short_path(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/", "/lib/python3.12/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse(path: Path) -> Counter[tuple[str, ...]]:
    """Stacks of the event loop's thread only: the worker's other threads (uvicorn's
    supervisor pipe, executor threads) only wait, and py-spy cannot always tell waiting from
    working in them."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            match = _FRAME.match(raw.strip())
            if match is None:
                continue  # "process ..." / "thread ..." headers
            frames.append(f"{match['func']} ({short_path(match['file'])})")
        if frames and any("asyncio/runners.py" in frame for frame in frames):
            stacks[tuple(frames)] += int(count)
    return stacks


def component(frames: tuple[str, ...]) -> str:
    """Ours if any frame is ours (innermost first), else the library of the innermost frame."""
    leaf = frames[-1]
    for lib_marker, name in _LIBS:
        if f"({lib_marker}" in leaf or f"/{lib_marker}" in leaf:
            leaf_lib = name
            break
    else:
        leaf_lib = "other (C / stdlib)"
    for frame in reversed(frames):
        file = frame.rsplit("(", 1)[-1]
        if file.startswith(_OURS):
            module = file.split("/", 1)[0]
            detail = file.rstrip(")")
            return (
                f"{module}: {detail} -> {leaf_lib}"
                if leaf_lib != "other (C / stdlib)"
                else f"{module}: {detail}"
            )
    return leaf_lib


def report(stacks: Counter[tuple[str, ...]], top: int, title: str) -> str:
    total = sum(stacks.values()) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_component: Counter[str] = Counter()
    by_outer: Counter[str] = Counter()
    for frames, count in stacks.items():
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        by_component[component(frames)] += count
        outer = "uvicorn / asyncio loop (outside any request handler)"
        for frame in frames:
            if "gateway_project/fast_asgi.py" in frame:
                outer = "inference handler (fast_asgi) and everything under it"
                break
        by_outer[outer] += count

    def pct(n: int) -> str:
        return f"{100.0 * n / total:.1f} %"

    lines = [
        f"### {title}",
        "",
        f"{total} busy samples of the event loop thread of one worker.",
        "",
    ]
    lines += ["| where | share |", "|---|---|"]
    lines += [f"| {name} | {pct(n)} |" for name, n in by_outer.most_common()]
    lines += [
        "",
        "By component (our module that is on the stack, and the library doing the work):",
        "",
    ]
    lines += ["| component | share |", "|---|---|"]
    lines += [f"| {name} | {pct(n)} |" for name, n in by_component.most_common(top)]
    lines += ["", "Functions by self time:", "", "| function | self |", "|---|---|"]
    lines += [f"| `{name}` | {pct(n)} |" for name, n in self_time.most_common(top)]
    ours = Counter({k: v for k, v in inclusive.items() if k.rsplit("(", 1)[-1].startswith(_OURS)})
    lines += ["", "Our functions by inclusive time:", "", "| function | inclusive |", "|---|---|"]
    lines += [f"| `{name}` | {pct(n)} |" for name, n in ours.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--title", default="Profile")
    args = parser.parse_args()
    print(report(parse(args.profile), args.top, args.title))


if __name__ == "__main__":
    main()
