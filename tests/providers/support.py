"""Helpers for provider tests: configurations pointing at the fake upstream, bounded waits."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from providers.adapters.base import ProviderAdapter, ProviderConfig, adapter_class_for
from tests.fake_upstream.server import DEFAULT_API_KEY, FakeUpstream

_ids = itertools.count(9000)


def provider_config(fake: FakeUpstream, kind: str, **overrides) -> ProviderConfig:
    """A provider configuration pointing at the fake upstream, with short timeouts so a
    failing test fails fast."""
    base_url = {
        "openai": fake.openai_base_url,
        "openai_compatible": fake.openai_base_url,
        "azure_openai": fake.azure_base_url,
        "anthropic": fake.anthropic_base_url,
    }[kind]
    values = {
        "id": next(_ids),
        "name": f"fake-{kind}",
        "kind": kind,
        "base_url": base_url,
        "secret": DEFAULT_API_KEY,
        "connect_timeout_s": 2.0,
        "first_byte_timeout_s": 5.0,
        "stream_idle_timeout_s": 5.0,
        "total_timeout_s": 20.0,
        **overrides,
    }
    return ProviderConfig(**values)


def adapter(fake: FakeUpstream, kind: str, **overrides) -> ProviderAdapter:
    return adapter_class_for(kind)(provider_config(fake, kind, **overrides))


async def wait_until(predicate: Callable[[], bool], *, timeout_s: float = 2.0) -> bool:
    """Poll a condition on the running loop, bounded in time; True when it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.002)
    return predicate()
