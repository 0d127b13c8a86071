"""Connects the rooms at start-up: catalog changes drop the routing snapshot and the key
policy cache. (Cross-process invalidation rides on the state store's config version.)"""

from __future__ import annotations


def _local_invalidate() -> None:
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    snapshot_invalidate()
    policy_cache_clear()


def _catalog_changed_everywhere() -> None:
    # Other processes drop their snapshots when the shared config version moves; move it only
    # once the catalog change is committed, or they could reload the old rows.
    from django.db import transaction

    from tenants.admission import config_changed_notify

    transaction.on_commit(config_changed_notify)


def connect() -> None:
    from providers.catalog import catalog_change_listener_add
    from routing.snapshot import snapshot_invalidate
    from tenants.admission import config_change_listener_add, spend_loader_set
    from usage.selectors import spend_sum

    catalog_change_listener_add(_local_invalidate)
    catalog_change_listener_add(_catalog_changed_everywhere)
    config_change_listener_add(snapshot_invalidate)
    spend_loader_set(spend_sum)
