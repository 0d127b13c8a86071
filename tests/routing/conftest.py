"""Routing tests: catalogs on the mock provider and on the fake upstream, usage waiting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from routing.breakers import breaker_board
from tests.fake_upstream.fixtures import fake_upstream, fake_upstream_thread  # noqa: F401


@pytest.fixture(autouse=True)
def _breakers_reset() -> Iterator[None]:
    """Breaker state is per process: no test inherits another's open deployments."""
    breaker_board().reset()
    yield
    breaker_board().reset()
