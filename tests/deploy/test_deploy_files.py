"""The deployment files validate offline: docker-compose.yml against the Compose
specification's schema (check-jsonschema's vendored copy), the Kubernetes manifests against the
API schemas (kubernetes-validate, strict), the Prometheus config and rules (promtool when
installed, as .ci/run does, and their structure in Python always), the Grafana dashboards
parse and query only metric names our /metrics page has. No Docker daemon exists here: the
image build itself is not run (docs/operations.md says so)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from django.test import Client, override_settings

from tests.conftest import METRICS_AUTH, ROOT

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.37.0"
PROMQL_PREFIXES = ("gateway_", "http_", "llm_", "cache_", "django_", "process_")


def _yaml_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_every_yaml_file_parses():
    paths = [ROOT / "docker-compose.yml", *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]
    assert len(paths) >= 10
    for path in paths:
        assert _yaml_docs(path), path


# -- compose --------------------------------------------------------------------------------
def _check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_matches_the_compose_specification():
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yml"
    broken.write_text(
        "services:\n  web:\n    image: x\n    healthcheck: {interval: 5s, retires: 3}\n"
    )
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode != 0


def test_compose_runs_every_role_with_healthchecks_and_a_durable_redis():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"web", "worker", "beat", "postgres", "redis", "prometheus", "grafana"} <= set(services)
    for name in ("web", "worker", "beat", "postgres", "redis", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis_cmd and "--appendonly yes" in redis_cmd
    assert (
        services["web"]["command"] == ["web"]
        and "WEB_CONCURRENCY" in services["web"]["environment"]
    )
    for name in ("web", "worker", "beat"):
        assert services[name]["env_file"][0]["path"] == ".env"
    prometheus_mounts = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus:/etc/prometheus" in prometheus_mounts
    grafana_mounts = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning" in grafana_mounts
    assert "./deploy/grafana/dashboards" in grafana_mounts


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_static_files():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert "collectstatic" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0:", "0\n")) and user[-1] != "0"
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    entry = (DEPLOY / "docker" / "entrypoint.sh").read_text()
    for role in ("web)", "worker)", "beat)", "migrate)"):
        assert role in entry
    assert "PROMETHEUS_MULTIPROC_DIR" in entry


# -- kubernetes -----------------------------------------------------------------------------
def _k8s_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend((path.name, doc) for doc in _yaml_docs(path))
    return docs


def test_kubernetes_manifests_validate_against_the_api_schemas():
    docs = _k8s_docs()
    kinds = {doc["kind"] for _, doc in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Job"} <= kinds
    for _name, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    listed = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
    for resource in listed:
        assert (DEPLOY / "k8s" / resource).exists(), resource


def test_kubernetes_validation_rejects_a_misspelt_field():
    name, doc = next((n, d) for n, d in _k8s_docs() if d["kind"] == "Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_deployments_for_web_worker_beat_with_probes_on_health_and_readiness():
    deployments = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for _, doc in _k8s_docs()
        if doc["kind"] == "Deployment"
    }
    assert set(deployments) == {"web", "worker", "beat"}
    web = deployments["web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/health"
    assert web["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert deployments["beat"]["spec"]["replicas"] == 1
    assert deployments["beat"]["spec"]["strategy"]["type"] == "Recreate"
    for doc in deployments.values():
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        refs = pod["containers"][0]["envFrom"]
        assert {"configMapRef", "secretRef"} <= {k for ref in refs for k in ref}


# -- metric names ---------------------------------------------------------------------------
@pytest.fixture
def exposed_metric_names(db, redis_url) -> set[str]:
    """Every sample name our /metrics page can show (families with their suffixes)."""
    with override_settings(GATEWAY_METRICS_TENANT_LABEL=True):
        text = Client().get("/metrics", headers=METRICS_AUTH).content.decode()
    names = {"up"}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    return names


def promql_metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {t for t in tokens if t == "up" or t.startswith(PROMQL_PREFIXES)}


def test_promql_name_extraction_ignores_functions_labels_and_ranges():
    names = promql_metric_names(
        'histogram_quantile(0.95, sum by (le, provider) (rate(gateway_x_bucket{a="llm_no"}[5m])))'
        " / on() up"
    )
    assert names == {"gateway_x_bucket", "up"}


def _rules() -> list[dict]:
    config = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


def test_prometheus_rules_are_well_formed_and_cover_the_required_alerts(exposed_metric_names):
    config = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    seen = set()
    for group in config["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert rule["alert"] not in seen, rule["alert"]
            seen.add(rule["alert"])
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"])
            assert rule["expr"].count("(") == rule["expr"].count(")")
            missing = promql_metric_names(rule["expr"]) - exposed_metric_names
            assert not missing, (rule["alert"], missing)
    required = {
        "GatewayHighErrorRate",
        "GatewayHighLatencyP95",
        "ProviderUnavailable",
        "ProviderBreakerOpen",
        "UsageBacklogGrowing",
        "UsageDrainLag",
        "UsageDrainStale",
        "CeleryBeatDown",
        "TenantBudgetThreshold",
    }
    assert required <= seen


def test_prometheus_scrape_config_points_at_the_gateway_and_its_rules():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gateway"]["metrics_path"] == "/metrics"
    assert jobs["gateway"]["static_configs"][0]["targets"] == ["web:8000"]
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).exists()


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (.ci/run installs it)"
)
def test_promtool_accepts_the_config_and_rules():
    for args in (
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
    ):
        result = subprocess.run(
            ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


# -- grafana --------------------------------------------------------------------------------
def test_grafana_dashboards_parse_and_query_only_exposed_metrics(exposed_metric_names):
    dashboards = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert len(dashboards) >= 2
    titles = []
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["panels"]
        for panel in dashboard["panels"]:
            titles.append(panel["title"].lower())
            for target in panel.get("targets", ()):
                assert target["datasource"]["uid"] == "gateway-prometheus"
                missing = promql_metric_names(target["expr"]) - exposed_metric_names
                assert not missing, (path.name, panel["title"], missing)
    for area in (
        "traffic",
        "latency",
        "first token",
        "error",
        "cost",
        "tenant",
        "provider",
        "cache",
    ):
        assert any(area in title for title in titles), area
    provisioning = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert provisioning["datasources"][0]["uid"] == "gateway-prometheus"


# -- the image's health check script --------------------------------------------------------
def _healthcheck(role: str, **env: str) -> int:
    import os

    return subprocess.run(
        [sys.executable, str(DEPLOY / "docker" / "healthcheck.py")],
        env={**os.environ, "GATEWAY_HEALTHCHECK_ROLE": role, **env},
        capture_output=True,
        timeout=60,
        check=False,
    ).returncode


@pytest.mark.live_server_process
def test_image_healthcheck_script_checks_web_and_beat(live_gateway, redis_url):
    import time

    import redis as redis_sync

    from tests.conftest import free_port

    with live_gateway() as base:
        assert _healthcheck("web", PORT=base.rsplit(":", 1)[1]) == 0
    assert _healthcheck("web", PORT=str(free_port())) == 1  # nothing listens
    client = redis_sync.Redis.from_url(redis_url)
    assert _healthcheck("beat", REDIS_URL=redis_url) == 1  # no heartbeat yet
    client.set("gw:beat:heartbeat", repr(time.time()))
    assert _healthcheck("beat", REDIS_URL=redis_url) == 0
    client.set("gw:beat:heartbeat", repr(time.time() - 600))
    assert _healthcheck("beat", REDIS_URL=redis_url) == 1


def test_entrypoint_runs_other_commands_without_the_web_metrics_directory(tmp_path):
    import os

    result = subprocess.run(
        [
            "sh",
            str(DEPLOY / "docker" / "entrypoint.sh"),
            sys.executable,
            "-c",
            "import os; print(os.getcwd(), os.environ.get('PROMETHEUS_MULTIPROC_DIR'))",
        ],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "absent")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    cwd, multiproc = result.stdout.split()
    assert Path(cwd) == ROOT and multiproc == "None"
