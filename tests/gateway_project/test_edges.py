"""Edges of the inference handler and the stock one: errors in OpenAI's shape on unknown
paths and methods, API docs without a CDN, static assets under the production server, and the
buffered JSON log handler."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway_project.asgi import application
from gateway_project.logging import BufferedStreamHandler, JsonFormatter
from tests.gateway_project.asgi_client import asgi_request

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/no-such-endpoint", 404, "not_found"),
        ("GET", "/api/v1/generate", 405, "method_not_allowed"),
        ("DELETE", "/v1/chat/completions", 405, "method_not_allowed"),
    ],
)
async def test_unknown_paths_and_methods_answer_in_openai_error_shape(method, path, status, code):
    response = await asgi_request(application, method, path)
    assert response.status == status
    body = json.loads(response.body)
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_api_docs_load_their_assets_from_the_gateway_not_a_cdn():
    docs = await asgi_request(application, "GET", "/v1/docs")
    assert docs.status == 200
    assert b"cdn." not in docs.body
    assert b"/static/ninja/swagger-ui-bundle.js" in docs.body
    asset = await asgi_request(application, "GET", "/static/ninja/swagger-ui-bundle.js")
    assert asset.status == 200 and len(asset.body) > 100_000
    admin_css = await asgi_request(application, "GET", "/static/admin/css/base.css")
    assert admin_css.status == 200


def _record(level: int, message: str, **extra) -> logging.LogRecord:
    record = logging.LogRecord("gateway.test", level, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_buffered_log_handler_batches_info_and_writes_warnings_at_once():
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval_s=3600)
    handler.setFormatter(JsonFormatter())
    try:
        handler.handle(_record(logging.INFO, "request.finished", tenant_id=7, api_key="gw-secret"))
        assert stream.getvalue() == ""  # batched
        handler.handle(_record(logging.WARNING, "breaker.opened"))
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["request.finished", "breaker.opened"]
        assert lines[0]["tenant_id"] == 7
        assert "api_key" not in lines[0]  # secret-looking fields never reach the log
        handler.handle(_record(logging.INFO, "late.event"))
        handler.flush()
        assert stream.getvalue().splitlines()[-1].startswith('{"ts"')
        assert json.loads(stream.getvalue().splitlines()[-1])["event"] == "late.event"
    finally:
        handler.close()


def test_buffered_log_handler_flushes_on_its_own_within_the_interval():
    import time

    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval_s=0.05)
    handler.setFormatter(JsonFormatter())
    try:
        handler.handle(_record(logging.INFO, "tick"))
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads(stream.getvalue())["event"] == "tick"
    finally:
        handler.close()
