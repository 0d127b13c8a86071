"""End-to-end tests: the fake upstream fixtures for live-gateway tests."""

from tests.fake_upstream.fixtures import fake_upstream, fake_upstream_thread  # noqa: F401
