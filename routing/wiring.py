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


def _route_model_ids() -> dict[str, list[int]]:
    """Route name -> model ids of its chain (usage's savings report needs the route's most
    expensive model; usage may not import routing)."""
    from routing.models import RouteStep

    chains: dict[str, list[int]] = {}
    for route, model_id in RouteStep.objects.values_list("route__name", "model_id"):
        chains.setdefault(route, []).append(model_id)
    return chains


def connect() -> None:
    from providers.catalog import catalog_change_listener_add
    from routing.breakers import breaker_board
    from routing.metrics import key_policy_cache_observe
    from routing.snapshot import snapshot_invalidate
    from tenants.admission import config_change_listener_add, spend_loader_set
    from tenants.selectors import policy_cache_observer_set
    from usage.metrics_selectors import breaker_states_loader_set
    from usage.selectors import route_models_loader_set, spend_sum

    catalog_change_listener_add(_local_invalidate)
    catalog_change_listener_add(_catalog_changed_everywhere)
    config_change_listener_add(snapshot_invalidate)
    spend_loader_set(spend_sum)
    route_models_loader_set(_route_model_ids)
    policy_cache_observer_set(key_policy_cache_observe)
    breaker_states_loader_set(breaker_board().provider_states)
