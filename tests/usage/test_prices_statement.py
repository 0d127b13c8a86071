"""Effective-dated prices: the catalog snapshot charges each request the price in force at
its time, and a mid-month change gives a statement that charges every event at its own price."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from providers.catalog import catalog_load
from providers.models import Model, ModelPrice
from providers.prices import model_price_set, model_prices_sync
from tests.usage.conftest import at
from usage.exports import csv_lines, statement_rows
from usage.rollups import usage_rollup
from usage.selectors import month_bounds, statement_build
from usage.services import usage_events_write


def test_price_change_adds_a_row_and_the_snapshot_prices_each_moment(usage_world):
    cheap = usage_world["cheap"]
    model_price_set(
        model=cheap,
        input_price_per_mtok="0.300000",
        output_price_per_mtok="1.2",
        effective_from=at(15),
    )
    assert ModelPrice.objects.filter(model=cheap).count() == 2  # the old price kept as history
    cheap.refresh_from_db()
    assert cheap.input_price_per_mtok == Decimal("0.3")  # in force now (2026-10-15 is past)
    entry = catalog_load().models["u-cheap"]
    assert entry.price_at(at(14, 23, 59)) == (Decimal("0.15"), Decimal("0.6"))
    assert entry.price_at(at(15)) == (Decimal("0.3"), Decimal("1.2"))
    assert (entry.input_price_per_mtok, entry.output_price_per_mtok) == (
        Decimal("0.3"),
        Decimal("1.2"),
    )


def test_a_future_price_comes_into_force_at_its_moment(usage_world):
    from datetime import timedelta

    from django.utils import timezone

    dear = usage_world["dear"]
    soon = timezone.now() + timedelta(days=2)
    model_price_set(
        model=dear, input_price_per_mtok="5", output_price_per_mtok="20", effective_from=soon
    )
    dear.refresh_from_db()
    assert dear.input_price_per_mtok == Decimal("2.5")  # not yet
    entry = catalog_load().models["u-dear"]
    assert entry.price_at(timezone.now()) == (Decimal("2.5"), Decimal("10"))
    assert entry.price_at(soon) == (Decimal("5"), Decimal("20"))
    assert model_prices_sync() == 0
    ModelPrice.objects.filter(model=dear, effective_from=soon).update(
        effective_from=timezone.now() - timedelta(seconds=1)
    )
    assert model_prices_sync() == 1
    assert Model.objects.get(pk=dear.pk).output_price_per_mtok == Decimal("20")


def test_mid_month_price_change_statement_charges_each_event_at_its_own_price(usage_world, maker):
    cheap = usage_world["cheap"]
    model_price_set(
        model=cheap,
        input_price_per_mtok="0.450000",
        output_price_per_mtok="1.800000",
        effective_from=at(16, 0),
    )
    m = maker(usage_world["key_a"])  # snapshot loaded after the change: carries the schedule
    before = [
        m.payload(created_at=at(d, 10), tokens_in=120_000, tokens_out=30_001) for d in range(1, 16)
    ]
    after = [
        m.payload(created_at=at(d, 10), tokens_in=120_000, tokens_out=30_001) for d in range(16, 32)
    ]
    usage_events_write(payloads=before + after)
    usage_rollup()
    start, end = month_bounds(at(1).date())
    statement = statement_build(tenant_id=usage_world["acme"].id, start=start, end=end)
    lines = {
        (line.input_price_per_mtok, line.output_price_per_mtok): line for line in statement.lines
    }
    old_line = lines[(Decimal("0.15"), Decimal("0.6"))]
    new_line = lines[(Decimal("0.45"), Decimal("1.8"))]
    assert (old_line.requests, new_line.requests) == (15, 16)
    per_event_old = (Decimal(120_000) * Decimal("0.15") + Decimal(30_001) * Decimal("0.6")) / 10**6
    per_event_new = (Decimal(120_000) * Decimal("0.45") + Decimal(30_001) * Decimal("1.8")) / 10**6
    assert old_line.cost_usd == 15 * per_event_old
    assert new_line.cost_usd == 16 * per_event_new
    assert statement.total_usd == sum(Decimal(p["cost_usd"]) for p in before + after)
    assert statement.total_cents == (15 * per_event_old + 16 * per_event_new).quantize(
        Decimal("0.01")
    )

    rows = list(csv.reader(io.StringIO("".join(csv_lines(statement_rows(statement))))))
    total_row = next(r for r in rows if r[0] == "total")
    assert Decimal(total_row[8]) == statement.total_usd
    assert total_row[9] == format(statement.total_cents, "f")
    assert any(r[0] == "rounding_rule" and "ROUND_HALF_UP" in r[1] for r in rows)
