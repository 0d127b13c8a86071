"""The catalog's orchestration fields (route options and default message, model quality and
tasks, the new strategies) through the file loader, the admin form and the snapshot, and a
catalog change reaching another process within a second."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from providers.models import Model
from routing.admin import RouteForm
from routing.models import Route
from routing.options import RouteOptionsError, route_options_parse
from routing.snapshot import snapshot_get
from tests.routing.support import mock_provider, model_on, route

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "catalog.toml"


@pytest.mark.django_db(transaction=True)
async def test_example_catalog_routes_carry_their_options_into_the_snapshot():
    from asgiref.sync import sync_to_async

    await sync_to_async(call_command)("load_catalog", str(EXAMPLE))
    snapshot = await snapshot_get()

    vote = snapshot.routes["classify-vote"]
    assert vote.strategy == "consensus"
    assert (vote.options.n, vote.options.min_agreement) == (3, 2)
    assert vote.options.similarity_threshold == 0.9
    auto = snapshot.routes["auto"]
    assert auto.strategy == "scored"
    assert auto.options.constraints.max_cost_usd == Decimal("0.05")
    assert (auto.options.on_context_overflow, auto.options.summarizer) == (
        "summarize",
        "gpt-4o-mini",
    )
    assert snapshot.routes["chat-balanced"].options.mode == "least_latency"
    assert snapshot.routes["chat-fastest"].strategy == "parallel"
    support = snapshot.routes["support-bot"]
    assert support.default_message.startswith("Our assistant is busy")
    assert support.options.max_total_wait_ms == 2000

    mini = snapshot.catalog.models["gpt-4o-mini"]
    assert mini.quality_for("sentiment") == 0.85
    assert mini.quality_for("unknown") is None
    assert mini.supports_json_mode
    small = snapshot.catalog.models["mock-small"]
    assert small.tasks == ("chat", "summarize", "sentiment")
    assert small.serves_task("chat") and not small.serves_task("code")
    assert mini.serves_task("code")  # no task list: a generalist


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("route_toml", "message"),
    [
        ('options = { n = "three" }', "options.n must be an integer"),
        ('options = { preference = "fastest" }', "options.preference must be one of"),
        ("options = { colour = 1 }", "unknown fields"),
        ('options = { on_context_overflow = "summarize" }', "needs options.summarizer"),
        (
            'options = { on_context_overflow = "summarize", summarizer = "ghost" }',
            "unknown summarizer model 'ghost'",
        ),
        ("options = { similarity_threshold = 1.5 }", "similarity_threshold must be in"),
        ("options = { weights = { cost = -1 } }", "weights must be >= 0"),
        ("options = { constraints = { max_cost_usd = -0.1 } }", "max_cost_usd must be >= 0"),
        ('options = { mode = "random" }', "options.mode must be one of"),
        ("default_message = 42", "'default_message' must be text"),
        ('strategy = "roulette"', "strategy must be one of"),
    ],
)
def test_catalog_file_rejects_bad_route_options_and_changes_nothing(tmp_path, route_toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[providers]]\nname="p"\nkind="mock"\n'
        '[[models]]\nname="m"\nprovider="p"\ninput_price_per_mtok="1"\noutput_price_per_mtok="1"\n'
        f'[[routes]]\nname="r"\nsteps=["m"]\n{route_toml}\n'
    )
    with pytest.raises(CommandError, match=message):
        call_command("load_catalog", str(path))
    assert not Route.objects.exists()
    assert not Model.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model_toml", "message"),
    [
        ("quality = { poetry = 0.5 }", "unknown tasks in quality"),
        ("quality = { code = 1.5 }", "must map task names to scores between 0 and 1"),
        ('tasks = ["code", "poetry"]', "'tasks' must be a list of"),
        ('capabilities = ["telepathy"]', "unknown capabilities"),
    ],
)
def test_catalog_file_rejects_bad_model_quality_and_tasks(tmp_path, model_toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[providers]]\nname="p"\nkind="mock"\n'
        '[[models]]\nname="m"\nprovider="p"\ninput_price_per_mtok="1"\noutput_price_per_mtok="1"\n'
        f"{model_toml}\n"
    )
    with pytest.raises(CommandError, match=message):
        call_command("load_catalog", str(path))
    assert not Model.objects.exists()


@pytest.mark.django_db
def test_route_admin_form_validates_options_with_the_same_rules():
    provider = mock_provider()
    model = model_on(provider, "m1")
    base = {"name": "r", "strategy": "consensus", "max_attempts": 3, "is_active": True}
    bad = RouteForm(data={**base, "options": '{"n": -1}', "default_message": ""})
    assert not bad.is_valid()
    assert "options.n must be an integer" in str(bad.errors["options"])
    good = RouteForm(data={**base, "options": '{"n": 3, "min_agreement": 2}'})
    assert good.is_valid(), good.errors
    assert model.pk


def test_route_options_defaults_and_hostile_values():
    assert route_options_parse(None).preference == "balanced"
    assert route_options_parse({}).on_context_overflow == "reject"
    for hostile in ([1, 2], "x", {"n": True}, {"constraints": {"max_cost_usd": "NaN"}}):
        with pytest.raises(RouteOptionsError):
            route_options_parse(hostile)


@pytest.mark.django_db(transaction=True)
async def test_a_route_added_by_another_process_resolves_at_once_here(settings, redis_url):
    """This process keeps its snapshot for 300 s; another process (a second client of the
    same Redis) adds a route and moves the shared config version, as the admin or the loader
    does on commit. The miss makes this process compare the version and reload."""
    from asgiref.sync import sync_to_async

    from routing.snapshot import snapshot_resolve
    from tenants.state import state_store_set
    from tenants.state.redis import RedisStateStore

    settings.GATEWAY_SNAPSHOT_TTL_SECONDS = 300
    settings.GATEWAY_STATE_BACKEND = "redis"
    state_store_set(None)
    provider = await sync_to_async(mock_provider)(latency_ms=0)
    model = await sync_to_async(model_on)(provider, "mock-fresh")
    assert await snapshot_resolve("fresh-route") is None
    assert await snapshot_resolve("mock-fresh") is not None

    await sync_to_async(route)("fresh-route", [model])
    other_process = RedisStateStore(url=redis_url, stream=settings.GATEWAY_USAGE_STREAM)
    try:
        other_process.config_version_bump()
    finally:
        await other_process.close()

    # The plain snapshot is still the old one (nothing else told this process)...
    assert (await snapshot_get()).resolve("fresh-route") is None
    # ...the endpoints' resolver reloads on a miss (version reads are at most every 50 ms).
    changed = time.monotonic()
    resolved = None
    while resolved is None and time.monotonic() - changed < 3:
        resolved = await snapshot_resolve("fresh-route")
    took = time.monotonic() - changed
    assert resolved is not None and resolved.targets[0].model.name == "mock-fresh"
    assert took < 1.0, f"seen after {took:.2f} s"


@pytest.mark.django_db(transaction=True)
async def test_unknown_names_do_not_turn_into_a_version_read_per_request(settings, redis_url):
    """A client spraying unknown model names costs at most one version read per 50 ms."""
    from routing.snapshot import snapshot_resolve
    from tenants.state import state_store, state_store_set

    settings.GATEWAY_STATE_BACKEND = "redis"
    state_store_set(None)
    reads = 0
    store = state_store()
    original = store.config_version_get

    async def counting():
        nonlocal reads
        reads += 1
        return await original()

    store.config_version_get = counting  # type: ignore[method-assign]
    started = time.monotonic()
    for i in range(200):
        assert await snapshot_resolve(f"no-such-model-{i}") is None
    elapsed = time.monotonic() - started
    assert reads <= 1 + elapsed / 0.05
