"""Database errors on the inference paths answer 503 in OpenAI's shape (issue 14, item 7).

While PostgreSQL cannot be read, known keys and the routes keep working from their last good
copies (tenants.outage); what needs the database and has no copy (an unknown key, a first
catalog load) raises a database error, which this handler turns into 503 with `Retry-After`
instead of the catch-all 500."""

from __future__ import annotations

import logging

from django.db import Error as DbError

from routing.errors import GatewayError, error_response

logger = logging.getLogger("gateway.asgi")

RETRY_AFTER_S = 1


def database_unavailable_error() -> GatewayError:
    return GatewayError(
        status=503,
        message="The gateway cannot reach its database; retry shortly",
        error_type="server_error",
        code="database_unavailable",
        headers={"Retry-After": str(RETRY_AFTER_S), "x-should-retry": "true"},
    )


def _on_database_error(request, exc: DbError):
    logger.warning("api.database_unavailable", extra={"error_class": type(exc).__name__})
    return error_response(database_unavailable_error())


def inference_outage_handlers_install(api) -> None:
    """Register the 503 answer on a NinjaAPI (the most specific handler wins over Exception)."""
    api.add_exception_handler(DbError, _on_database_error)
