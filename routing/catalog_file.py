"""Declarative catalog files (TOML or JSON): providers, models with prices, routes.

Loading is idempotent: entries are matched by name and updated in place, route steps are
replaced by the file's, and nothing absent from the file is deleted (use --prune for that).
The format is documented in docs/catalog.md."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from providers.catalog import catalog_changed
from providers.models import Model, Provider, ProviderKind
from providers.secrets import secret_env_validate
from providers.services import model_upsert, provider_create, provider_update
from providers.urls import base_url_normalize
from routing.decide.tasks import TASK_NAMES
from routing.models import Route, RouteStep, Strategy
from routing.options import RouteOptionsError, route_options_parse

_TIMEOUT_FIELDS = {
    "connect": "connect_timeout_s",
    "first_byte": "first_byte_timeout_s",
    "stream_idle": "stream_idle_timeout_s",
    "total": "total_timeout_s",
}
_CAPABILITIES = {
    "streaming": "supports_streaming",
    "tools": "supports_tools",
    "vision": "supports_vision",
    "embeddings": "supports_embeddings",
    "json_mode": "supports_json_mode",
}


class CatalogFileError(ValueError):
    """The file is not a valid catalog; the message says where and why."""


@dataclass
class CatalogLoadResult:
    created: dict[str, int] = field(
        default_factory=lambda: {"providers": 0, "models": 0, "routes": 0}
    )
    updated: dict[str, int] = field(
        default_factory=lambda: {"providers": 0, "models": 0, "routes": 0}
    )
    pruned: dict[str, int] = field(
        default_factory=lambda: {"providers": 0, "models": 0, "routes": 0}
    )
    # What was normalized on the way in (base URLs given in the other convention...).
    normalized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        for kind in ("providers", "models", "routes"):
            parts.append(
                f"{kind}: {self.created[kind]} created, {self.updated[kind]} updated"
                + (f", {self.pruned[kind]} deactivated" if self.pruned[kind] else "")
            )
        lines = ["; ".join(parts)]
        lines.extend(f"normalized {note}" for note in self.normalized)
        return "\n".join(lines)


def catalog_file_parse(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogFileError(
            f"{path.name} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise CatalogFileError("the top level must be a table/object")
    unknown = set(data) - {"providers", "models", "routes"}
    if unknown:
        raise CatalogFileError(f"unknown top-level sections: {', '.join(sorted(unknown))}")
    return data


def _price(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise CatalogFileError(f"{where}: a price is required (USD per 1M tokens)")
    try:
        price = Decimal(str(value))
    except InvalidOperation as exc:
        raise CatalogFileError(f"{where}: {value!r} is not a number") from exc
    if price < 0 or price != price.quantize(Decimal("0.000001")):
        raise CatalogFileError(f"{where}: prices must be >= 0 with at most 6 decimals")
    return price


def _messages(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
    return " ".join(exc.messages)


def _require(entry: dict[str, Any], name: str, where: str) -> Any:
    if name not in entry or entry[name] in (None, ""):
        raise CatalogFileError(f"{where}: '{name}' is required")
    return entry[name]


def _provider_values(entry: dict[str, Any], where: str) -> dict[str, Any]:
    kind = _require(entry, "kind", where)
    if kind not in ProviderKind.values:
        raise CatalogFileError(f"{where}: kind must be one of {', '.join(ProviderKind.values)}")
    if "secret" in entry or "api_key" in entry:
        raise CatalogFileError(
            f"{where}: secrets do not go in catalog files; name an environment variable "
            "with 'secret_env'"
        )
    try:
        secret_env_validate(entry.get("secret_env", ""))
    except ValidationError as exc:
        raise CatalogFileError(f"{where}: {_messages(exc)}") from exc
    values: dict[str, Any] = {
        "kind": kind,
        "base_url": entry.get("base_url", ""),
        "secret_env": entry.get("secret_env", ""),
        "options": entry.get("options", {}) or {},
        "is_active": bool(entry.get("active", True)),
    }
    if "max_retries" in entry:
        values["max_retries"] = int(entry["max_retries"])
    timeouts = entry.get("timeouts", {}) or {}
    for key, value in timeouts.items():
        if key not in _TIMEOUT_FIELDS:
            raise CatalogFileError(f"{where}: unknown timeout '{key}'")
        values[_TIMEOUT_FIELDS[key]] = float(value)
    return values


def _model_values(
    entry: dict[str, Any], where: str, providers: dict[str, Provider]
) -> dict[str, Any]:
    provider_name = _require(entry, "provider", where)
    provider = providers.get(provider_name) or Provider.objects.filter(name=provider_name).first()
    if provider is None:
        raise CatalogFileError(f"{where}: unknown provider '{provider_name}'")
    values: dict[str, Any] = {
        "provider": provider,
        "upstream_model": entry.get("upstream_model") or entry["name"],
        "input_price_per_mtok": _price(
            entry.get("input_price_per_mtok"), f"{where}.input_price_per_mtok"
        ),
        "output_price_per_mtok": _price(
            entry.get("output_price_per_mtok"), f"{where}.output_price_per_mtok"
        ),
        "is_active": bool(entry.get("active", True)),
    }
    for name in ("cache_read_price_per_mtok", "cache_write_price_per_mtok"):
        if name in entry:
            values[name] = _price(entry[name], f"{where}.{name}")
    for name in ("context_window", "max_output_tokens"):
        if name in entry:
            values[name] = int(entry[name])
    if "capabilities" in entry:
        caps = set(entry["capabilities"])
        unknown = caps - set(_CAPABILITIES)
        if unknown:
            raise CatalogFileError(f"{where}: unknown capabilities {sorted(unknown)}")
        for cap, field_name in _CAPABILITIES.items():
            values[field_name] = cap in caps
    if "quality" in entry:
        quality = entry["quality"]
        if not isinstance(quality, dict):
            raise CatalogFileError(f"{where}: 'quality' must be a table of task = score")
        unknown = set(quality) - set(TASK_NAMES)
        if unknown:
            raise CatalogFileError(
                f"{where}: unknown tasks in quality {sorted(unknown)}; "
                f"tasks are {', '.join(TASK_NAMES)}"
            )
        values["quality"] = quality
    if "tasks" in entry:
        tasks = entry["tasks"]
        if not isinstance(tasks, list) or not set(tasks) <= set(TASK_NAMES):
            raise CatalogFileError(f"{where}: 'tasks' must be a list of {', '.join(TASK_NAMES)}")
        values["tasks"] = tasks
    return values


def _deactivate(queryset) -> int:
    count = 0
    for row in queryset.filter(is_active=True):
        row.is_active = False
        row.save(update_fields=["is_active", "updated_at"])
        count += 1
    return count


@transaction.atomic
def catalog_file_load(*, data: dict[str, Any], prune: bool = False) -> CatalogLoadResult:
    result = CatalogLoadResult()
    providers: dict[str, Provider] = {}
    for i, entry in enumerate(data.get("providers", [])):
        where = f"providers[{i}]"
        name = _require(entry, "name", where)
        values = _provider_values(entry, f"{where} ({name})")
        values["base_url"], note = base_url_normalize(values["kind"], values["base_url"])
        if note:
            result.normalized.append(f"{where} ({name}): {note}")
        existing = Provider.objects.filter(name=name).first()
        try:
            if existing is None:
                provider, created = provider_create(name=name, **values), True
            else:
                provider, created = provider_update(provider=existing, fields=values), False
        except ValidationError as exc:
            raise CatalogFileError(f"{where} ({name}): {_messages(exc)}") from exc
        providers[name] = provider
        result.created["providers"] += created
        result.updated["providers"] += not created

    models: dict[str, Model] = {}
    for i, entry in enumerate(data.get("models", [])):
        where = f"models[{i}]"
        name = _require(entry, "name", where)
        values = _model_values(entry, f"{where} ({name})", providers)
        try:
            # Through the catalog service: a price change becomes a dated price row, so
            # requests already made keep the price they were charged.
            model, created = model_upsert(name=name, **values)
        except ValidationError as exc:
            raise CatalogFileError(f"{where} ({name}): {_messages(exc)}") from exc
        models[name] = model
        result.created["models"] += created
        result.updated["models"] += not created

    route_names: list[str] = []
    for i, entry in enumerate(data.get("routes", [])):
        where = f"routes[{i}]"
        name = _require(entry, "name", where)
        strategy = entry.get("strategy", Strategy.FALLBACK)
        if strategy not in Strategy.values:
            raise CatalogFileError(f"{where}: strategy must be one of {', '.join(Strategy.values)}")
        steps = _require(entry, "steps", where)
        if not isinstance(steps, list) or not steps:
            raise CatalogFileError(f"{where}: 'steps' must be a non-empty list of model names")
        raw_options = entry.get("options", {}) or {}
        try:
            options = route_options_parse(raw_options)
        except RouteOptionsError as exc:
            raise CatalogFileError(f"{where} ({name}): {exc}") from exc
        if options.summarizer and not (
            options.summarizer in models or Model.objects.filter(name=options.summarizer).exists()
        ):
            raise CatalogFileError(
                f"{where} ({name}): unknown summarizer model '{options.summarizer}'"
            )
        default_message = entry.get("default_message", "")
        if not isinstance(default_message, str):
            raise CatalogFileError(f"{where} ({name}): 'default_message' must be text")
        route, created = Route.objects.update_or_create(
            name=name,
            defaults={
                "strategy": strategy,
                "description": entry.get("description", ""),
                "max_attempts": int(entry.get("max_attempts", max(3, len(steps)))),
                "default_message": default_message,
                "options": raw_options,
                "is_active": bool(entry.get("active", True)),
            },
        )
        wanted: list[tuple[int, int]] = []
        for step in steps:
            model_name, weight = (
                (step, 1)
                if isinstance(step, str)
                else (step.get("model"), int(step.get("weight", 1)))
            )
            model = models.get(model_name) or Model.objects.filter(name=model_name).first()
            if model is None:
                raise CatalogFileError(f"{where} ({name}): unknown model '{model_name}'")
            wanted.append((model.pk, weight))
        # Rewrite the chain only when it changed, so loading the same file twice leaves the
        # rows (and the audit log) alone.
        current = list(route.steps.order_by("position").values_list("model_id", "weight"))
        if current != wanted:
            for old_step in route.steps.all():
                old_step.delete()
            for position, (model_id, weight) in enumerate(wanted):
                RouteStep.objects.create(
                    route=route, position=position, model_id=model_id, weight=weight
                )
        route_names.append(name)
        result.created["routes"] += created
        result.updated["routes"] += not created

    if prune:
        # Row by row (save(), not QuerySet.update()) so each deactivation is audited.
        result.pruned["routes"] = _deactivate(Route.objects.exclude(name__in=route_names))
        result.pruned["models"] = _deactivate(Model.objects.exclude(name__in=list(models)))
        result.pruned["providers"] = _deactivate(Provider.objects.exclude(name__in=list(providers)))
    catalog_changed()
    return result
