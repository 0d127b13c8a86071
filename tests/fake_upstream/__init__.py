"""The project's own fake provider server (see server.py) and its pytest fixtures
(fixtures.py)."""

from tests.fake_upstream.server import FakeUpstream, Fault, RecordedRequest

__all__ = ["FakeUpstream", "Fault", "RecordedRequest"]
