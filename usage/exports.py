"""CSV shapes of statements, reports and raw events, produced row by row so large exports
stream (StreamingHttpResponse) instead of being built in memory."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from typing import Any

from usage.selectors import EVENT_EXPORT_COLUMNS, Statement, to_cents


class _Echo:
    """A file-like object whose write returns the line, for csv.writer in a generator."""

    def write(self, value: str) -> str:
        return value


# Spreadsheets run a cell that starts with one of these as a formula (OWASP "CSV injection");
# key names, request ids and labels are tenant input.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def csv_cell(value: Any) -> Any:
    """A value safe for a spreadsheet: text that would start a formula gets a leading quote
    (numbers, including negative ones, stay as they are)."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_lines(rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    for row in rows:
        yield writer.writerow([csv_cell(v) for v in row])


def _fmt(value: Any) -> Any:
    return format(value, "f") if hasattr(value, "quantize") else value


def statement_rows(statement: Statement) -> Iterator[list[Any]]:
    yield [
        "statement",
        statement.tenant_slug,
        statement.start.date().isoformat(),
        statement.end.date().isoformat(),
        "UTC, end exclusive",
    ]
    yield [
        "section",
        "key",
        "model",
        "input_usd_per_mtok",
        "output_usd_per_mtok",
        "requests",
        "tokens_in",
        "tokens_out",
        "cost_usd_exact",
        "cost_usd",
    ]
    for line in statement.lines:
        yield [
            "line",
            line.key_label,
            line.model,
            _fmt(line.input_price_per_mtok),
            _fmt(line.output_price_per_mtok),
            line.requests,
            line.tokens_in,
            line.tokens_out,
            _fmt(line.cost_usd),
            _fmt(line.cost_cents),
        ]
    for entry in statement.per_key:
        yield [
            "key_subtotal",
            entry["label"],
            "",
            "",
            "",
            entry["requests"],
            entry["tokens_in"],
            entry["tokens_out"],
            _fmt(entry["cost_usd"]),
            _fmt(entry["cost_cents"]),
        ]
    for entry in statement.per_model:
        yield [
            "model_subtotal",
            "",
            entry["label"],
            "",
            "",
            entry["requests"],
            entry["tokens_in"],
            entry["tokens_out"],
            _fmt(entry["cost_usd"]),
            _fmt(entry["cost_cents"]),
        ]
    yield [
        "total",
        "",
        "",
        "",
        "",
        statement.total_requests,
        statement.total_tokens_in,
        statement.total_tokens_out,
        _fmt(statement.total_usd),
        _fmt(statement.total_cents),
    ]
    yield ["rounding_rule", statement.rounding_rule]


REPORT_COLUMNS = ("requests", "errors", "tokens_in", "tokens_out", "cost_usd", "cache_savings_usd")


def report_row(row: dict[str, Any], group_by: str, labels: dict[Any, str]) -> dict[str, Any]:
    """One JSON/CSV report row: the group's id, label, and totals (money as strings)."""
    if group_by in ("day", "hour"):
        when = row.get("day") or row.get("bucket_start")
        out: dict[str, Any] = {group_by: when.isoformat()}
    else:
        column = {
            "tenant": "tenant_id",
            "key": "api_key_id",
            "model": "model_id",
            "provider": "provider_id",
        }[group_by]
        out = {column: row[column], "label": labels.get(row[column]) or row.get("model_name") or ""}
        if group_by == "key":
            out["tenant_id"] = row["tenant_id"]
    for name in REPORT_COLUMNS:
        value = row[name]
        out[name] = format(value, "f") if name.endswith("_usd") else int(value or 0)
    out["cost_usd_cents"] = format(to_cents(row["cost_usd"]), "f")
    return out


def event_rows(rows: Iterable[tuple]) -> Iterator[list[Any]]:
    yield list(EVENT_EXPORT_COLUMNS)
    for row in rows:
        yield [v.isoformat() if hasattr(v, "isoformat") else _fmt(v) for v in row]
