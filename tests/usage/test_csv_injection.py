"""CSV exports cannot carry spreadsheet formulas: tenant-chosen text (key names, request ids)
that starts like a formula is quoted; numbers stay numbers."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tenants.models import ApiKey
from tests.usage.conftest import at
from usage.exports import csv_lines
from usage.rollups import usage_rollup
from usage.services import usage_events_write


@pytest.mark.parametrize(
    "text", ['=HYPERLINK("http://x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx"]
)
def test_cells_that_start_a_formula_are_quoted(text):
    (line,) = csv_lines([[text, "plain", -1.5, "-0.25", 3]])
    first, plain, negative, negative_text, number = next(csv.reader(io.StringIO(line)))
    assert first == "'" + text
    assert (plain, negative, negative_text, number) == ("plain", "-1.5", "-0.25", "3")


def test_statement_and_event_exports_quote_hostile_key_names_and_request_ids(usage_world, maker):
    ApiKey.objects.filter(pk=usage_world["key_a"].pk).update(name='=HYPERLINK("http://evil")')
    usage_world["key_a"].refresh_from_db()
    payload = maker(usage_world["key_a"]).payload(
        created_at=at(3), tokens_in=10, tokens_out=5, request_id="=cmd|' /C calc'!A0"
    )
    usage_events_write(payloads=[payload])
    usage_rollup()
    client = Client()
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw-123456789"))
    acme = usage_world["acme"].id
    statement = client.get(f"/api/reports/statements/{acme}/2026-10/", {"format": "csv"})
    text = b"".join(statement.streaming_content).decode()
    assert "'=HYPERLINK" in text, text
    assert not any(cell.startswith("=") for row in csv.reader(io.StringIO(text)) for cell in row)
    events = client.get("/api/reports/events/", {"start": "2026-10-01", "end": "2026-10-31"})
    rows = list(csv.DictReader(io.StringIO(b"".join(events.streaming_content).decode())))
    assert rows[0]["request_id"] == "'=cmd|' /C calc'!A0"
