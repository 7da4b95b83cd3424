"""Health, readiness, metrics, problem+json on every error, and configuration."""

from __future__ import annotations

import re

import httpx
import pytest

from gateway import config as config_module
from gateway.errors import all_error_types
from gateway.runtime import Runtime
from tests import REPOSITORY

ROOT = REPOSITORY


async def test_health_readiness_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200 and "gateway_snapshot_ready 1.0" in metrics.text


async def test_readiness_fails_when_the_snapshot_is_stale(runtime: Runtime, client: httpx.AsyncClient) -> None:
    runtime.snapshot.ready = False
    response = await client.get("/readyz")
    assert response.status_code == 503 and "snapshot reloading" in response.json()["problems"]


async def test_every_error_is_problem_json_without_internals(client: httpx.AsyncClient) -> None:
    for method, path in [("GET", "/nowhere"), ("DELETE", "/v1/datasets"), ("GET", "/v1/datasets"),
                         ("POST", "/v1/admin/members")]:
        response = await client.request(method, path)
        assert response.headers["content-type"] == "application/problem+json", path
        body = response.json()
        assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == response.status_code
        assert "Traceback" not in response.text
    assert (await client.delete("/v1/datasets")).status_code == 405


def test_configuration_is_validated_with_a_message_saying_what_to_do() -> None:
    with pytest.raises(config_module.ConfigError, match="GATEWAY_PORT"):
        config_module.load({"GATEWAY_PORT": "eighty"})
    with pytest.raises(config_module.ConfigError, match="postgresql://"):
        config_module.load({"GATEWAY_DATABASE_URL": "mysql://x"})
    with pytest.raises(config_module.ConfigError, match="unknown setting GATEWAY_DATABSE_URL"):
        config_module.load({"GATEWAY_DATABSE_URL": "postgresql://x"})
    assert config_module.load({}).embedded


def test_every_setting_metric_and_error_type_is_documented() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for setting in config_module.SETTINGS:
        assert f"`{setting.env}`" in readme, f"{setting.env} is not in the README"
    documented = set(re.findall(r"`(GATEWAY_[A-Z_]+)`", readme)) - {"GATEWAY_TEST_DATABASE_URL"}
    assert documented <= {s.env for s in config_module.SETTINGS}, "the README names a setting that does not exist"
    for error in all_error_types():
        assert f"`{error.slug}`" in readme, f"problem type {error.slug} is not in the README"
    from gateway import metrics

    for metric in metrics.REGISTRY.collect():
        assert f"`{metric.name}" in readme, f"metric {metric.name} is not in the README"


async def test_audit_and_response_metrics_move_with_traffic(client: httpx.AsyncClient) -> None:
    def sample(text: str, name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    before = (await client.get("/metrics")).text
    assert (await client.get("/v1/datasets")).status_code == 401  # audited like every request
    after = (await client.get("/metrics")).text
    assert sample(after, "gateway_audit_batch_events_count") > sample(before, "gateway_audit_batch_events_count")
    assert sample(after, 'gateway_responses_total{outcome="deny",status_class="4xx"}') > \
        sample(before, 'gateway_responses_total{outcome="deny",status_class="4xx"}')
