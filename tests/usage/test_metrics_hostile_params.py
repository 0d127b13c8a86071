"""Hostile query parameters on a live gateway: the metrics API and /stats answer every odd
date, window, limit or text (NUL bytes, dates at the ends of the calendar, windows too large
for a timedelta) with a 400 in OpenAI's error shape, never a 500; the reports API's date
range is parsed by the same function."""

from __future__ import annotations

import httpx
import pytest

from tests.routing.support import tenant_key
from usage.access import parse_range
from usage.metrics_selectors import window_parse

pytestmark = pytest.mark.live_server_process

HOSTILE = [
    ("/api/v1/metrics/logs", {"model": "\x00"}),
    ("/api/v1/metrics/logs", {"model": "gpt\x00x"}),
    ("/api/v1/metrics/logs", {"outcome": "ok\x00"}),
    ("/api/v1/metrics/models/a%00b", {}),
    ("/api/v1/metrics/summary", {"start": "9999-12-30", "end": "9999-12-31"}),
    ("/api/v1/metrics/costs", {"start": "9999-12-30", "end": "9999-12-31"}),
    ("/api/v1/metrics/providers", {"end": "0001-01-01"}),
    ("/api/v1/metrics/summary", {"end": "0001-01-01T00:00:00+14:00"}),
    ("/api/v1/metrics/summary", {"window": "99999999999999999999999d"}),
    ("/api/v1/metrics/costs", {"window": "99999999999999999999999s"}),
    ("/api/v1/metrics/models/x", {"window": "9" * 400 + "h"}),
]


@pytest.mark.parametrize(("path", "params"), HOSTILE)
def test_odd_query_parameters_answer_400_never_500(live_gateway, path, params):
    _, _, raw = tenant_key()
    with live_gateway() as base, httpx.Client(base_url=base, timeout=30) as client:
        response = client.get(path, params=params, headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("start", "end"),
    [("9999-12-30", "9999-12-31"), (None, "0001-01-01"), ("0001-01-01T00:00:00+14:00", None)],
)
def test_calendar_edges_are_value_errors_for_every_caller(start, end):
    with pytest.raises(ValueError):
        parse_range(start, end)


def test_a_window_too_large_for_a_timedelta_is_a_value_error():
    with pytest.raises(ValueError):
        window_parse("99999999999999999999999d")


def test_a_model_name_with_nul_still_leaves_its_refusal_row(live_gateway):
    """PostgreSQL text cannot hold NUL: the refusal's usage event (route = the requested
    name) was rejected by the database and lost; NUL is now replaced before the write."""
    from tests.routing.support import LIVE_ENV, usage_events_wait_sync

    _, key_id, raw = tenant_key()
    with live_gateway(env=LIVE_ENV) as base, httpx.Client(base_url=base, timeout=30) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "no\x00such", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {raw}"},
        )
        assert response.status_code == 404
        (event,) = usage_events_wait_sync(1)
    assert event.api_key_id == key_id and event.outcome == "rejected"
    assert event.route == "no\ufffdsuch"
