"""Deployment files agree with the code: settings, ports, health paths, metrics, and the image's rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config as config_module
from gateway import metrics
from gateway.http.ops import routes as ops_routes

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SETTINGS = {s.env for s in config_module.SETTINGS}
METRICS = {m.name for m in metrics.REGISTRY.collect()}
OPS_PATHS = {r.path for r in ops_routes}


def k8s_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return documents


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_documents() if d["kind"] == kind]


def test_every_file_parses() -> None:
    for path in DEPLOY.rglob("*"):
        if path.suffix in (".yaml", ".yml"):
            assert list(yaml.safe_load_all(path.read_text())), path
        elif path.suffix == ".json":
            json.loads(path.read_text())


def test_every_environment_variable_named_in_deploy_files_exists() -> None:
    named = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            named |= set(re.findall(r"\bGATEWAY_[A-Z_]+\b", path.read_text()))
    assert named, "the deployment files set no GATEWAY_* variable"
    assert named <= SETTINGS, f"not settings of gateway/config.py: {sorted(named - SETTINGS)}"


def test_kubernetes_probes_ports_secret_and_migration_job() -> None:
    [deployment] = by_kind("Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    port = int(env["GATEWAY_PORT"]["value"])
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz", "/metrics"} <= OPS_PATHS
    assert env["GATEWAY_MASTER_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "lpd-gateway"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] == "/metrics"
    [service] = by_kind("Service")
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    [policy] = by_kind("NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == port
    assert by_kind("HorizontalPodAutoscaler") and by_kind("PodDisruptionBudget")
    [job] = by_kind("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["gateway", "migrate"]
    secret_keys = set(by_kind("Secret")[0]["stringData"])
    referenced = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e
                  and "secretKeyRef" in e["valueFrom"]}
    assert referenced <= secret_keys


def test_the_image_runs_unprivileged_without_build_tools_and_checks_its_health() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    final_stage = dockerfile.split("\nFROM ")[-1]
    assert final_stage.startswith("python:3.11-slim")
    assert re.search(r"^USER (?!root)\w+", final_stage, re.MULTILINE)
    assert "HEALTHCHECK" in final_stage and "/healthz" in final_stage
    assert not re.search(r"apt-get install|build-essential|gcc", final_stage)
    exposed = int(re.search(r"^EXPOSE (\d+)", final_stage, re.MULTILINE)[1])  # type: ignore[index]
    assert exposed == int(re.search(r"GATEWAY_PORT=(\d+)", final_stage)[1])  # type: ignore[index]


def test_compose_has_postgres_two_gateways_a_balancer_and_prometheus() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    gateways = [name for name, s in services.items() if name.startswith("gateway-")]
    assert len(gateways) == 2 and {"postgres", "loadbalancer", "prometheus", "migrate"} <= set(services)
    assert services["migrate"]["command"] == ["gateway", "migrate"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    port = int(services[gateways[0]]["environment"]["GATEWAY_PORT"])
    for name in gateways:
        assert f"server {name}:{port}" in nginx
    # The proxy bounds slow clients, which uvicorn alone does not (FIELD-NOTES "Servers").
    assert "client_header_timeout" in nginx and "client_body_timeout" in nginx
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(f"{name}:{port}" for name in gateways)


@pytest.mark.parametrize("source", ["prometheus/alerts.yml", "grafana/lpd-gateway.json"])
def test_alerts_and_dashboard_use_only_metrics_the_gateway_exports(source: str) -> None:
    text = (DEPLOY / source).read_text()
    used = {re.sub(r"_(bucket|count|sum|total)$", "", m) for m in re.findall(r"\bgateway_[a-z_]+", text)}
    exported = {re.sub(r"_total$", "", m) for m in METRICS}
    assert used and used <= exported, f"unknown metrics: {sorted(used - exported)}"


def test_alert_rules_cover_the_failures_operators_must_hear_of() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"GatewayAuditWriteFailing", "GatewayAuditWriterLag", "GatewayDatabaseUnreachable",
            "GatewayServerErrors", "GatewayQuotaDenialSpike", "GatewayRevocationPropagationLag"} <= names


def test_systemd_unit_serves_after_migrating_and_stops_gracefully() -> None:
    unit = (DEPLOY / "systemd" / "lpd-gateway.service").read_text()
    assert re.search(r"^ExecStart=\S*gateway serve$", unit, re.MULTILINE)
    assert re.search(r"^ExecStartPre=\S*gateway migrate$", unit, re.MULTILINE)
    assert "KillSignal=SIGTERM" in unit and re.search(r"^User=(?!root)", unit, re.MULTILINE)
