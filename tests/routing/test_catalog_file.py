from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from providers.models import Model, Provider
from routing.models import Route

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "catalog.toml"


@pytest.mark.django_db
def test_load_catalog_is_idempotent_and_keeps_exact_prices(capsys):
    call_command("load_catalog", str(EXAMPLE))
    first = capsys.readouterr().out
    call_command("load_catalog", str(EXAMPLE))
    second = capsys.readouterr().out

    assert "providers: 3 created" in first
    assert "providers: 0 created, 3 updated" in second
    assert Provider.objects.count() == 3
    assert Model.objects.get(name="gpt-4o-mini").input_price_per_mtok == Decimal("0.150000")
    route = Route.objects.get(name="chat-default")
    assert [s.model.name for s in route.steps.order_by("position")] == [
        "gpt-4o-mini",
        "claude-haiku",
    ]


@pytest.mark.django_db
def test_load_catalog_replaces_route_steps_and_json_works(tmp_path):
    call_command("load_catalog", str(EXAMPLE))
    changed = tmp_path / "c.json"
    changed.write_text(
        '{"routes": [{"name": "chat-default", "steps": ["claude-haiku"], "strategy": "fallback"}]}'
    )
    call_command("load_catalog", str(changed))
    route = Route.objects.get(name="chat-default")
    assert [s.model.name for s in route.steps.all()] == ["claude-haiku"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '[[models]]\nname="x"\nprovider="nope"\ninput_price_per_mtok="1"\noutput_price_per_mtok="1"',
            "unknown provider 'nope'",
        ),
        (
            '[[providers]]\nname="p"\nkind="openai"\nsecret="sk-live-123"',
            "secrets do not go in catalog files",
        ),
        ('[[providers]]\nname="p"\nkind="cohere"', "kind must be one of"),
        (
            '[[providers]]\nname="p"\nkind="mock"\n[[models]]\nname="m"\nprovider="p"\ninput_price_per_mtok="0.0000001"\noutput_price_per_mtok="1"',
            "at most 6 decimals",
        ),
        ("not toml = = =", "not valid"),
        ('[[routes]]\nname="r"\nsteps=["missing"]', "unknown model 'missing'"),
    ],
)
def test_load_catalog_rejects_bad_files_with_a_clear_message_and_changes_nothing(
    tmp_path, content, message
):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(CommandError, match=message):
        call_command("load_catalog", str(path))
    assert Provider.objects.count() == 0
    assert "sk-live-123" not in message


@pytest.mark.django_db
def test_seed_demo_prints_the_raw_key_last_and_stores_only_its_hash(capsys):
    from tenants.keys import api_key_hash
    from tenants.models import ApiKey

    call_command("seed_demo", "--quickstart", "--port", "8123")
    lines = capsys.readouterr().out.strip().splitlines()
    raw = lines[-1]
    assert raw.startswith("gw-")
    assert any("curl http://127.0.0.1:8123/v1/chat/completions" in line for line in lines)
    key = ApiKey.objects.get(key_hash=api_key_hash(raw))
    assert raw not in (key.prefix, key.key_hash)
    # A second quick start issues a fresh key and revokes the previous one.
    call_command("seed_demo", "--quickstart")
    raw2 = capsys.readouterr().out.strip().splitlines()[-1]
    assert raw2 != raw
    key.refresh_from_db()
    assert key.revoked_at is not None


@pytest.mark.django_db
def test_load_catalog_normalizes_base_urls_and_reports_it(capsys):
    call_command("load_catalog", str(EXAMPLE))
    out = capsys.readouterr().out
    # docs/examples/catalog.toml gives Anthropic in its SDK's convention (no /v1)
    assert Provider.objects.get(name="anthropic").base_url == "https://api.anthropic.com/v1"
    assert Provider.objects.get(name="openai").base_url == "https://api.openai.com/v1"
    [note] = [line for line in out.splitlines() if line.startswith("normalized")]
    assert "providers[1] (anthropic)" in note and "added '/v1'" in note
    call_command("load_catalog", str(EXAMPLE))  # the stored value stays the normalized one
    assert Provider.objects.get(name="anthropic").base_url == "https://api.anthropic.com/v1"
