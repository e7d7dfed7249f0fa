"""deploy/: Prometheus config and alerts (promtool, and a real Prometheus scraping the real
service), the Grafana dashboard's queries, the Kubernetes manifests and the Dockerfiles."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from _server import HEADERS, Server

from service.settings import Settings, setting_env

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SPEC_METRICS = {
    "snnl_requests_total", "snnl_request_duration_seconds", "snnl_queue_wait_seconds",
    "snnl_batch_size", "snnl_stage_duration_seconds", "snnl_samples_scored_total",
    "snnl_outliers_total", "snnl_soft_neighbor_score", "snnl_p_value", "snnl_queue_depth",
    "snnl_reference_points", "snnl_model_info",
}  # fmt: skip


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60)


def metric_names(expr: str) -> set[str]:
    """snnl_* names in a PromQL expression, histogram suffixes removed."""
    names = set(re.findall(r"\bsnnl_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    config = promtool("check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", DEPLOY / "prometheus" / "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 6 rules found" in rules.stdout


def test_alerts_and_dashboard_query_only_spec_metrics(tmp_path: Path) -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "snnl-dashboard.json").read_text())
    panel_exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(panel_exprs) >= 12
    for expr in exprs + panel_exprs:
        assert metric_names(expr) <= SPEC_METRICS, expr
    # Grafana's variables replaced, every panel query must parse as PromQL (promtool checks it).
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": expr.replace("$__rate_interval", "5m")
         .replace("$model", ".*")} for i, expr in enumerate(panel_exprs)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_kubernetes_manifests_probe_the_right_endpoints() -> None:
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "kubernetes" / "service.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SNNL_PORT"] == "8000" and env["SNNL_HOST"] == "0.0.0.0"
    assert set(env) <= {setting_env(name) for name in Settings.model_fields}
    assert "memory" in container["resources"]["limits"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_serve_with_valid_settings(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text()
    assert 'CMD ["snnl", "serve"]' in text
    assert "/readyz" in text  # the HEALTHCHECK waits for warm models
    names = set(re.findall(r"\b(SNNL_[A-Z_]+)=", text))
    assert names and names <= {setting_env(name) for name in Settings.model_fields}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus(server: Server, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the session server every second, with deploy's alert rules."""
    target = server.url.removeprefix("http://")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def query(prometheus: str, promql: str) -> list[dict[str, object]]:
    try:
        body = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}).json()
    except httpx.TransportError:
        return []
    return body["data"]["result"] if body.get("status") == "success" else []


def test_a_real_prometheus_scrapes_the_service(server: Server, prometheus: str) -> None:
    with server.client(headers=HEADERS) as client:
        assert (
            client.post("/v1/models/digits-mlp/score", json={"inputs": [[1] * 64] * 7}).status_code
            == 200
        )
        scored = client.get("/metrics").text
    expected = next(
        float(line.split()[-1]) for line in scored.splitlines()
        if line.startswith('snnl_samples_scored_total{model="digits-mlp"}')
    )  # fmt: skip
    deadline = time.monotonic() + 90
    result: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        result = query(prometheus, 'snnl_samples_scored_total{model="digits-mlp", job="snnl"}')
        if result and float(result[0]["value"][1]) >= expected:  # type: ignore[index]
            break
        time.sleep(0.5)
    assert result, "Prometheus never stored snnl_samples_scored_total"
    assert float(result[0]["value"][1]) >= expected  # type: ignore[index]
    for name in (
        "snnl_model_info",
        "snnl_reference_points",
        "snnl_p_value_bucket",
        "snnl_queue_depth",
    ):
        assert query(prometheus, f'{name}{{model="digits-mlp"}}'), name
    rules = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    assert {rule["name"] for group in rules for rule in group["rules"]} >= {
        "SnnlDown",
        "SnnlOutlierRateHigh",
    }
    assert query(prometheus, 'up{job="snnl"} == 1')
