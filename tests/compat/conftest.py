"""The compatibility suite: real client libraries against a live gateway over the mock and
the fake upstream. Each check is one (client, feature) cell; the outcomes of the last run are
merged into tests/compat/last_run.json, from which `python -m tests.compat.report` renders
docs/compatibility.md."""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fake_upstream.fixtures import fake_upstream, fake_upstream_thread  # noqa: F401

RESULTS = Path(__file__).with_name("last_run.json")
_outcomes: dict[str, dict[str, str]] = {}


def record_outcome(client: str, feature: str, outcome: str) -> None:
    _outcomes.setdefault(client, {})[feature] = outcome


class Cells:
    """Runs each check, records pass/fail, and fails the test at the end if any failed (so
    one broken feature does not hide the others)."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    @contextmanager
    def cell(self, client: str, feature: str) -> Iterator[None]:
        try:
            yield
        except Exception:  # noqa: BLE001 - recorded, then reported by `finish`
            _outcomes.setdefault(client, {})[feature] = "fail"
            self.failures.append(f"{client} / {feature}:\n{traceback.format_exc(limit=6)}")
        else:
            _outcomes.setdefault(client, {})[feature] = "pass"

    def finish(self) -> None:
        if self.failures:
            pytest.fail("\n\n".join(self.failures), pytrace=False)


@pytest.fixture
def cells() -> Iterator[Cells]:
    recorder = Cells()
    yield recorder
    recorder.finish()


def pytest_sessionfinish(session, exitstatus):
    if not _outcomes:
        return
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for client, features in _outcomes.items():
        previous.setdefault(client, {}).update(features)
    RESULTS.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
