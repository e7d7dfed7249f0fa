"""deploy/: Prometheus config and alerts (promtool checks and unit tests, and a real Prometheus
scraping the real service), the Grafana dashboard's queries, the Kubernetes manifests (kustomize
overlays rendered by kubectl, validated by kubernetes-validate), compose, and the Dockerfiles
(hadolint; the CPU image's package list covers everything serving imports)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from _prometheus import query, run_prometheus
from _server import HEADERS, Server

from service.settings import Settings, setting_env

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
DOCUMENTED_METRICS = {
    "snnl_requests_total", "snnl_request_duration_seconds", "snnl_queue_wait_seconds",
    "snnl_batch_size", "snnl_stage_duration_seconds", "snnl_samples_scored_total",
    "snnl_outliers_total", "snnl_soft_neighbor_score", "snnl_p_value", "snnl_queue_depth",
    "snnl_reference_points", "snnl_model_info", "snnl_requests_in_flight", "snnl_build_info",
    "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
    "process_max_fds", "snnl_drift_statistic", "snnl_drift_alarms_total",
}  # fmt: skip


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60)


def metric_names(expr: str) -> set[str]:
    """snnl_* and process_* names in a PromQL expression, histogram suffixes removed."""
    names = set(re.findall(r"\b(?:snnl|process)_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    config = promtool("check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", DEPLOY / "prometheus" / "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in rules.stdout


def alert_names() -> set[str]:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}


def test_every_alert_fires_in_a_promtool_unit_test() -> None:
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == alert_names()
    assert {"SnnlMemoryHigh", "SnnlCpuSaturated"} <= fired
    done = promtool("test", "rules", DEPLOY / "prometheus" / "alerts.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_and_dashboard_query_only_spec_metrics(tmp_path: Path) -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "snnl-dashboard.json").read_text())
    panel_exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    panel_exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    assert len(panel_exprs) >= 12
    for expr in exprs + panel_exprs:
        assert metric_names(expr) <= DOCUMENTED_METRICS, expr
    # Grafana's variables replaced, every panel query must parse as PromQL (promtool checks it).
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": expr.replace("$__rate_interval", "5m")
         .replace("$__interval", "1m").replace("$model", ".*")}
        for i, expr in enumerate(panel_exprs)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def render(overlay: str) -> list[dict[str, object]]:
    """The overlay's manifests as ``kubectl kustomize`` renders them."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, object]]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {str(doc["kind"]): doc for doc in docs}


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


@needs_kubectl
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kustomize_overlays_render_valid_manifests(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    kinds = by_kind(docs)
    assert set(kinds) == {
        "Deployment", "Service", "PersistentVolumeClaim", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy",
    }  # fmt: skip
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    checked = subprocess.run(
        [BIN / "kubernetes-validate", "--strict", "--quiet", rendered],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == ("snnl:cpu" if overlay == "cpu" else "snnl:cuda")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SNNL_DEVICE"] == ("cpu" if overlay == "cpu" else "cuda")
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert gpus == (None if overlay == "cpu" else "1")


def test_kubernetes_base_probes_volume_security_and_scaling() -> None:
    base = {
        str(doc["kind"]): doc
        for path in sorted((KUBERNETES / "base").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") != "Kustomization"
    }
    kustomization = yaml.safe_load((KUBERNETES / "base" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in (KUBERNETES / "base").glob("*.yaml") if p.name != "kustomization.yaml"
    )
    deployment, service = base["Deployment"], base["Service"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SNNL_PORT"] == "8000" and env["SNNL_HOST"] == "0.0.0.0"
    assert set(env) <= {setting_env(name) for name in Settings.model_fields}
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The model repository comes from the PVC, read-only, where SNNL_MODEL_REPOSITORY points.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": env["SNNL_MODEL_REPOSITORY"],
                                "readOnly": True}  # fmt: skip
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert claim == base["PersistentVolumeClaim"]["metadata"]["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        selector = base[kind]["spec"]["selector" if kind != "NetworkPolicy" else "podSelector"]
        assert selector["matchLabels"] == labels, kind
    assert (
        base["ServiceMonitor"]["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]
    )
    assert base["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "http"
    assert base["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "snnl"
    ingress = base["NetworkPolicy"]["spec"]["ingress"]
    assert [port["port"] for rule in ingress for port in rule["ports"]] == [8000]


def test_compose_binds_loopback_mounts_models_and_grafana_needs_a_login() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert any(v.endswith(":/srv/models:ro") for v in compose["services"]["snnl"]["volumes"])
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint_and_serve_with_valid_settings(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text()
    assert 'CMD ["snnl", "serve"]' in text
    assert re.search(r'HEALTHCHECK [^\n]*\\\n\s+CMD \["python"', text)  # exec form
    assert "/readyz" in text  # the HEALTHCHECK waits for warm models
    assert "COPY models" not in text  # the repository is a volume
    names = set(re.findall(r"\b(SNNL_[A-Z_]+)=", text))
    assert names and names <= {setting_env(name) for name in Settings.model_fields}
    assert "-r deploy/requirements-cpu.txt" in text or "requirements-cuda.txt" in text
    linted = subprocess.run(
        [BIN / "hadolint", DEPLOY / dockerfile], capture_output=True, text=True, timeout=60
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


SERVE_AND_SCORE = """
import importlib.metadata as md, json, sys
import numpy as np
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
settings = Settings(model_repository=sys.argv[1], device="cpu", warmup_iterations=1)
with TestClient(create_app(settings)) as client:
    while client.get("/readyz").status_code != 200:
        pass
    x = np.zeros((2, 64), dtype=np.float32).tolist()
    assert client.post("/v1/models/digits-mlp/score", json={"inputs": x}).status_code == 200
    body = {"inputs": [{"name": "inputs", "shape": [2, 64], "datatype": "FP32",
                        "data": sum(x, [])}]}
    assert client.post("/v2/models/digits-mlp/infer", json=body).status_code == 200
    assert client.get("/docs").status_code == 200
names = md.packages_distributions()
used = {dist for module in list(sys.modules) for dist in names.get(module.split(".")[0], [])}
print(json.dumps(sorted(used)))
"""


def _requirement_closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install, with all their (non-extra) dependencies."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    wanted = [Requirement(line) for line in requirements]
    seen: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for line in dist.requires or ():
            dependency = Requirement(line)
            marker = dependency.marker
            extras = requirement.extras or {""}
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras):
                wanted.append(dependency)
    return seen


def test_the_cpu_image_installs_everything_serving_imports() -> None:
    """Serve, score (v1, v2) and render /docs: every imported distribution is in the closure of
    deploy/requirements-cpu.txt (what the CPU image installs), and no training stack is."""
    lines = (DEPLOY / "requirements-cpu.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    closure = _requirement_closure(requirements)
    assert not closure & {"matplotlib", "scikit-learn", "mnist1d", "onnx", "onnxruntime-gpu"}
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_SCORE, str(ROOT / "models")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    used = {name.lower().replace("_", "-") for name in json.loads(done.stdout.splitlines()[-1])}
    # snnl itself is installed with --no-deps; onnxruntime-gpu stands in for onnxruntime here;
    # the rest are optional imports of installed packages, tried only when present (httpx's
    # command line tries rich; FastAPI tries OpenTelemetry, which Ray brings into the test env).
    optional = {"brotli", "charset-normalizer", "pygments", "rich"}
    optional |= {name for name in used if name.startswith("opentelemetry-")}
    missing = used - closure - {"snnl", "onnxruntime-gpu"} - optional
    assert not missing, f"serving imports {sorted(missing)}, not in deploy/requirements-cpu.txt"


@pytest.fixture
def prometheus(server: Server, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the session server every second, with deploy's alert rules."""
    with run_prometheus([server.url], tmp_path) as url:
        yield url


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
        "snnl_drift_alarms_total",
    ):
        assert query(prometheus, f'{name}{{model="digits-mlp"}}'), name

    # The drift alert's series, with the labels it groups by: one statistic per served layer and
    # one for the model's p-value (tests/service/test_drift_monitoring.py makes the alert fire).
    def layers(name: str) -> set[str]:
        found = query(prometheus, f'{name}{{model="digits-mlp", job="snnl"}}')
        return {str(r["metric"]["layer"]) for r in found}  # type: ignore[index]

    served = layers("snnl_reference_points")
    assert served and layers("snnl_drift_statistic") == {"combined", *served}
    rules = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    assert {rule["name"] for group in rules for rule in group["rules"]} >= {
        "SnnlDown",
        "SnnlOutlierRateHigh",
        "SnnlDriftDetected",
    }
    assert query(prometheus, 'up{job="snnl"} == 1')
