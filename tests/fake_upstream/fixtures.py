"""Pytest fixtures around the fake upstream. Import them into a conftest.py:

from tests.fake_upstream.fixtures import fake_upstream, fake_upstream_thread  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from providers.http import http_clients_close
from tests.fake_upstream.server import FakeUpstream


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """A fake provider on the test's event loop. Pooled client sessions of the loop are closed
    before the server stops, so no test leaks connections into the next."""
    async with FakeUpstream() as fake:
        try:
            yield fake
        finally:
            await http_clients_close()


@pytest.fixture
def fake_upstream_thread() -> Iterator[FakeUpstream]:
    """A fake provider on its own loop in a background thread, for sync tests (a live gateway
    process driven by the sync openai SDK)."""
    with FakeUpstream().serve_in_thread() as fake:
        yield fake
