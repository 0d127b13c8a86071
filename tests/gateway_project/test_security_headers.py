"""Security headers on every answer, the thread-free inference handler included, and CORS by
origin (off unless configured) on inference and management paths alike."""

from __future__ import annotations

import httpx
import pytest
from django.test import override_settings

from gateway_project.asgi import application
from gateway_project.fast_asgi import InferenceASGIHandler
from tests.gateway_project.asgi_client import asgi_request
from tests.gateway_project.test_asgi import catalog, run  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}
CHAT = {"model": "asgi-chat", "messages": [{"role": "user", "content": "hi"}]}


def _has_security_headers(headers: dict[str, str]) -> None:
    for name, value in EXPECTED.items():
        assert headers.get(name) == value, (name, headers)


def test_inference_answers_carry_security_headers(catalog):  # noqa: F811
    async def scenario(loop):
        ok = await asgi_request(
            application, "POST", "/v1/chat/completions", json=CHAT, headers=catalog["auth"]
        )
        streamed = await asgi_request(
            application,
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers=catalog["auth"],
        )
        denied = await asgi_request(application, "POST", "/v1/chat/completions", json=CHAT)
        unknown = await asgi_request(application, "GET", "/v1/nothing-here")
        too_large = await asgi_request(
            application,
            "POST",
            "/v1/chat/completions",
            headers={**catalog["auth"], "content-length": str(64 * 1024 * 1024)},
        )
        health = await asgi_request(application, "GET", "/health")
        return ok, streamed, denied, unknown, too_large, health

    answers, _loop = run(scenario)
    assert [a.status for a in answers] == [200, 200, 401, 404, 413, 200]
    for answer in answers:
        _has_security_headers(answer.headers)
    assert "strict-transport-security" not in answers[0].headers  # plain http


def test_hsts_is_sent_on_inference_answers_that_came_over_https(catalog):  # noqa: F811
    with override_settings(
        SECURE_HSTS_SECONDS=3600,
        SECURE_HSTS_INCLUDE_SUBDOMAINS=True,
        SECURE_HSTS_PRELOAD=False,
        SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
    ):
        handler = InferenceASGIHandler()

        async def scenario(loop):
            secure = await asgi_request(
                handler,
                "POST",
                "/v1/chat/completions",
                json=CHAT,
                headers={**catalog["auth"], "x-forwarded-proto": "https"},
            )
            plain = await asgi_request(
                handler, "POST", "/v1/chat/completions", json=CHAT, headers=catalog["auth"]
            )
            return secure, plain

        (secure, plain), _loop = run(scenario)
    assert secure.headers["strict-transport-security"] == "max-age=3600; includeSubDomains"
    assert "strict-transport-security" not in plain.headers


@pytest.mark.live_server_process
def test_cors_is_off_by_default_and_allows_only_configured_origins(live_gateway, catalog):  # noqa: F811
    app = "https://app.example.com"
    preflight = {
        "Origin": app,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with live_gateway() as base:
        closed = httpx.options(f"{base}/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in closed.headers
    with live_gateway(env={"GATEWAY_CORS_ALLOWED_ORIGINS": app}) as base:
        opened = httpx.options(f"{base}/v1/chat/completions", headers=preflight)
        assert opened.status_code == 200
        assert opened.headers["access-control-allow-origin"] == app
        assert "authorization" in opened.headers["access-control-allow-headers"]
        chat = httpx.post(
            f"{base}/v1/chat/completions",
            json=CHAT,
            headers={"Origin": app, "Authorization": catalog["auth"]["authorization"]},
        )
        assert chat.status_code == 200
        assert chat.headers["access-control-allow-origin"] == app
        assert "x-request-id" in chat.headers["access-control-expose-headers"]
        _has_security_headers(dict(chat.headers))
        other = httpx.options(
            f"{base}/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
        manage = httpx.options(f"{base}/api/manage/tenants/", headers=preflight)
        assert manage.headers.get("access-control-allow-origin") == app


def test_the_header_list_is_built_once_not_per_request():
    handler = InferenceASGIHandler()
    assert [name for name, _, _ in handler._security_headers] == [
        b"X-Content-Type-Options",
        b"X-Frame-Options",
        b"Referrer-Policy",
    ]
