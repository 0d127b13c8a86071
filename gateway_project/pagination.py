"""Pagination of the DRF APIs."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """`?limit=` is capped: DRF's default accepts any number, and one past the database's
    integer range turned into a 500 (found by the schemathesis run)."""

    max_limit = 1000
