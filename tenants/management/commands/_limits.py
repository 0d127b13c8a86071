"""Argument parsing shared by the tenant and key commands (thin: parse, then call a service)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.core.management.base import CommandError

from tenants.models import BudgetPeriod


def decimal_arg(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise CommandError(f"--budget-usd must be a decimal amount, got {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise CommandError(f"--budget-usd must be a non-negative amount, got {value!r}")
    return amount


def add_limit_arguments(parser, *, concurrency: bool = True) -> None:
    parser.add_argument("--budget-usd", type=str, default=None, help="Budget in USD per period")
    parser.add_argument(
        "--budget-period", choices=BudgetPeriod.values, default=BudgetPeriod.MONTHLY
    )
    parser.add_argument("--rpm", type=int, default=None, help="Requests per minute")
    parser.add_argument("--tpm", type=int, default=None, help="Tokens per minute")
    if concurrency:
        parser.add_argument("--max-concurrency", type=int, default=None)


def limits_from(options: dict) -> dict:
    for name in ("rpm", "tpm", "max_concurrency"):
        value = options.get(name)
        if value is not None and value < 0:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 0")
    budget = options.get("budget_usd")
    return {
        "budget_usd": decimal_arg(budget) if budget is not None else None,
        "budget_period": options["budget_period"],
        "rpm_limit": options.get("rpm"),
        "tpm_limit": options.get("tpm"),
        "max_concurrency": options.get("max_concurrency"),
    }
