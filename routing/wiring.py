"""Connects the rooms at start-up: catalog changes drop the routing snapshot and the key
policy cache. (Cross-process invalidation rides on the state store's config version.)"""

from __future__ import annotations


def _local_invalidate() -> None:
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    snapshot_invalidate()
    policy_cache_clear()


def connect() -> None:
    from providers.catalog import catalog_change_listener_add

    catalog_change_listener_add(_local_invalidate)
