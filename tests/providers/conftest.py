"""Provider tests: adapters over real HTTP against the fake upstream."""

from tests.fake_upstream.fixtures import fake_upstream, fake_upstream_thread  # noqa: F401
