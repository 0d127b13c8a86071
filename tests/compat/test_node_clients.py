"""The official Node SDKs (openai-node, @anthropic-ai/sdk), pinned in tests/compat/node/
package.json(-lock), driven by tests/compat/node/check.mjs against a live gateway. Installed
with npm on first use; skipped where Node or npm is absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.compat.conftest import record_outcome
from tests.compat.test_clients import catalog  # noqa: F401 - the same catalog
from tests.routing.support import LIVE_ENV

pytestmark = pytest.mark.live_server_process

NODE_DIR = Path(__file__).with_name("node")


def _node_ready() -> None:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are not installed")
    if not (NODE_DIR / "node_modules" / "openai").exists():
        try:
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                check=True,
                timeout=300,
                capture_output=True,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"npm ci failed (no registry?): {output.decode(errors='replace')[-300:]}")


def test_node_sdks(live_gateway, catalog):  # noqa: F811
    _node_ready()
    with live_gateway(env=LIVE_ENV) as base:
        run = subprocess.run(
            ["node", "check.mjs"],
            cwd=NODE_DIR,
            env={**os.environ, "GATEWAY_BASE": base, "GATEWAY_KEY": catalog["raw"]},
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    failures = []
    for client, features in results.items():
        for feature, outcome in features.items():
            record_outcome(client, feature, "pass" if outcome == "pass" else "fail")
            if outcome != "pass":
                failures.append(f"{client} / {feature}: {outcome}")
    assert results and not failures, "\n".join(failures)
