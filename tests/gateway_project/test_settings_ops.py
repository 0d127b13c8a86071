"""Operator settings: `.env` fills in what the environment does not set (the environment wins),
an optional rotating JSON log file, and `request.finished` naming the served model and
provider."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from django.test import AsyncClient

from tests.conftest import ROOT
from tests.factories import (
    ModelFactory,
    ProviderFactory,
    TenantFactory,
    api_key_create_for_test,
    route_create,
)


def _settings_in_subprocess(env: dict[str, str], code: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DEBUG"))}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "tests.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_dotenv_file_fills_unset_variables_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("GATEWAY_KEY_PREFIX=fromfile-\nGATEWAY_MAX_BODY_BYTES=12345\n# a comment\n")
    out = _settings_in_subprocess(
        {"GATEWAY_ENV_FILE": str(env_file), "GATEWAY_MAX_BODY_BYTES": "999"},
        "from django.conf import settings; "
        "print(settings.GATEWAY_KEY_PREFIX, settings.GATEWAY_MAX_BODY_BYTES)",
    )
    assert out.split() == ["fromfile-", "999"]


def test_a_missing_dotenv_file_is_not_an_error(tmp_path):
    out = _settings_in_subprocess(
        {"GATEWAY_ENV_FILE": str(tmp_path / "absent.env")},
        "from django.conf import settings; print(settings.GATEWAY_KEY_PREFIX)",
    )
    assert out.strip() == "gw-"


def test_log_file_setting_writes_rotating_json_lines_per_process(tmp_path):
    out = _settings_in_subprocess(
        {
            "GATEWAY_ENV_FILE": "",
            "GATEWAY_LOG_FILE": str(tmp_path / "gateway-{pid}.log"),
            "GATEWAY_LOG_FILE_MAX_BYTES": "400",
            "GATEWAY_LOG_FILE_BACKUPS": "2",
        },
        "import django, logging, os; django.setup(); "
        "log = logging.getLogger('gateway.test'); "
        "[log.info('ops.file_line', extra={'n': i}) for i in range(20)]; "
        "logging.shutdown(); print(os.getpid())",
    )
    pid = out.strip()
    current = tmp_path / f"gateway-{pid}.log"
    assert current.exists()
    assert (tmp_path / f"gateway-{pid}.log.1").exists()  # rotated by size
    assert not (tmp_path / f"gateway-{pid}.log.3").exists()  # only two backups kept
    lines = [json.loads(line) for line in current.read_text().splitlines()]
    assert lines and all(line["event"] == "ops.file_line" for line in lines)
    assert lines[-1]["n"] == 19


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.django_db(transaction=True)
async def test_request_finished_log_names_the_served_model_and_provider():
    from asgiref.sync import sync_to_async

    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    def world() -> str:
        provider = ProviderFactory(name="log-provider")
        model = ModelFactory(name="log-model", provider=provider)
        route_create(name="log-route", models=[model])
        _, raw = api_key_create_for_test(tenant=TenantFactory())
        return raw

    raw = await sync_to_async(world)()
    snapshot_invalidate()
    policy_cache_clear()
    capture = _Capture()
    logger = logging.getLogger("gateway")
    logger.addHandler(capture)
    try:
        response = await AsyncClient().post(
            "/v1/chat/completions",
            {"model": "log-route", "messages": [{"role": "user", "content": "hi"}]},
            content_type="application/json",
            headers={"Authorization": f"Bearer {raw}"},
        )
    finally:
        logger.removeHandler(capture)
    assert response.status_code == 200
    finished = [r for r in capture.records if r.getMessage() == "request.finished"]
    assert len(finished) == 1
    assert finished[0].model == "log-model" and finished[0].provider == "log-provider"
