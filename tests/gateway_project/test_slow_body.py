"""Issue 14, item 5: slowloris on the inference handler. A live gateway (uvicorn on loopback)
and a real socket that trickles the request body: a body that falls below the minimum rate, or
is not complete by the deadline, is answered 408 in OpenAI's error shape and the connection is
closed; an honest body is read as before."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

pytestmark = pytest.mark.live_server_process

SLOW_ENV = {
    "GATEWAY_BODY_READ_TIMEOUT_S": "4",
    "GATEWAY_BODY_MIN_RATE_BYTES": "1024",
    "GATEWAY_BODY_MIN_RATE_GRACE_S": "0.5",
}


def _open(base: str, length: int) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Authorization: Bearer gw-whatever\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def _trickle_until_answered(sock: socket.socket, *, chunk: int, every_s: float, limit_s: float):
    """Send `chunk` bytes every `every_s` until the server answers (or `limit_s` passes).
    Returns (seconds until the answer, the raw answer, whether the server closed)."""
    started = time.monotonic()
    sock.settimeout(every_s)
    received = b""
    while time.monotonic() - started < limit_s:
        try:
            sock.sendall(b" " * chunk)
        except OSError:
            break  # the server closed on us mid-trickle: read what it said
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        received += data
        break
    elapsed = time.monotonic() - started
    sock.settimeout(5)
    closed = False
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                closed = True
                break
            received += data
    except (TimeoutError, ConnectionResetError):
        pass  # still open after 5 s (or reset): `closed` stays False unless it was a reset
    return elapsed, received, closed


def _status_and_body(raw: bytes) -> tuple[int, dict, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body), head.decode().lower()


def test_a_body_below_the_minimum_rate_is_cut_with_408_and_the_connection_closed(live_gateway):
    with live_gateway(env=SLOW_ENV) as base:
        sock = _open(base, 100_000)
        try:
            # 100 bytes every 0.2 s: 500 B/s, half the floor; the total deadline is not reached.
            elapsed, raw, closed = _trickle_until_answered(sock, chunk=100, every_s=0.2, limit_s=30)
        finally:
            sock.close()
    status, body, head = _status_and_body(raw)
    assert status == 408
    assert body["error"]["code"] == "request_timeout"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "connection: close" in head
    assert closed
    # Cut by the rate floor (after its grace, at about 1 s), well before the total deadline.
    assert 0.5 <= elapsed < 3.0


def test_a_body_at_a_fair_rate_is_still_cut_at_the_total_deadline(live_gateway):
    with live_gateway(env=SLOW_ENV) as base:
        sock = _open(base, 1_000_000)
        try:
            # 1 KB every 0.1 s: 10 KB/s, above the floor, but the body would take 100 s.
            elapsed, raw, closed = _trickle_until_answered(
                sock, chunk=1024, every_s=0.1, limit_s=30
            )
        finally:
            sock.close()
    status, body, _ = _status_and_body(raw)
    assert status == 408 and body["error"]["type"] == "invalid_request_error"
    assert closed
    assert elapsed >= 3.9  # not before the deadline (the server started counting first)


def test_an_honest_body_sent_in_parts_is_read(live_gateway):
    with live_gateway(env=SLOW_ENV) as base:
        payload = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        sock = _open(base, len(payload))
        try:
            half = len(payload) // 2
            sock.sendall(payload[:half].encode())
            time.sleep(0.3)  # inside the grace
            sock.sendall(payload[half:].encode())
            sock.settimeout(10)
            raw = b""
            # Headers and body may come in separate segments: read until the answer is whole.
            while b"authentication_error" not in raw:
                part = sock.recv(65536)
                if not part:
                    break
                raw += part
        finally:
            sock.close()
        # The body was read and the request went on to authentication (a made-up key).
        assert raw.startswith(b"HTTP/1.1 401 ") and b"authentication_error" in raw
        # The server still serves after the cuts.
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
