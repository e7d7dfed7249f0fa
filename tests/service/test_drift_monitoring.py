"""The drift monitor in the service (docs/drift.md): fed by score traffic (v1 and v2) only, its
state at GET /v1/models/{model}/drift, its metrics, the guarded reset, the reset on reload; and
two replicas, each alarming on its own share of a shifted stream, seen by a real Prometheus that
fires SnnlDriftDetected."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _prometheus import query, run_prometheus
from _server import HEADERS, Server, start_server
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from service.app import create_app
from service.settings import Settings

MODELS = Path(__file__).resolve().parents[2] / "models"
DRIFT = "/v1/models/digits-mlp/drift"
RESET = "/v1/models/digits-mlp/drift/reset"


def digits(n: int, start: int = 0) -> list[list[float]]:
    """In-distribution samples: scikit-learn's digits, as clients send them."""
    return load_digits().data[start : start + n].tolist()  # type: ignore[no-any-return]


def noise(n: int, seed: int) -> list[list[float]]:
    """A shift: uniform noise images with the digits' value range."""
    return np.random.default_rng(seed).uniform(0, 16, size=(n, 64)).tolist()


def drift_metrics(url: str, model: str = "digits-mlp") -> dict[str, float]:
    """{"alarms": snnl_drift_alarms_total, layer: snnl_drift_statistic} of ``model``."""
    text = httpx.get(f"{url}/metrics").text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "snnl_drift_alarms_total":
                found["alarms"] = sample.value
            elif sample.name == "snnl_drift_statistic":
                found[sample.labels["layer"]] = sample.value
    return found


def state(client: httpx.Client) -> dict[str, Any]:
    """The drift state, once the scoring thread has fed the last batch (it does so right after
    the requests have their answers)."""
    time.sleep(0.2)
    response = client.get(DRIFT)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_score_traffic_feeds_the_monitor_and_alarms_on_a_shift(server: Server) -> None:
    with server.client(headers=HEADERS) as client:
        reset = client.post(RESET)
        assert reset.status_code == 200, reset.text
        assert (reset.json()["samples"], reset.json()["statistic"]) == (0, 0.0)
        before = drift_metrics(server.url)
        layers = set(reset.json()["layers"])
        assert set(before) == {"alarms", "combined", *layers}

        # In distribution: v1 JSON and v2, every sample counted, no alarm.
        assert client.post("/v1/models/digits-mlp/score", json={"inputs": digits(150)}).is_success
        tensor = {"name": "inputs", "datatype": "FP32", "shape": [50, 64],
                  "data": np.ravel(digits(50, start=150)).tolist()}  # fmt: skip
        v2 = client.post("/v2/models/digits-mlp/infer", json={"inputs": [tensor]})
        assert v2.status_code == 200, v2.text
        calm = state(client)
        assert (calm["samples"], calm["alarms"], calm["last_alarm"]) == (200, 0, None)
        assert all(layer["samples"] == 200 for layer in calm["layers"].values())

        # Not score traffic: evaluate calls and refused requests.
        labels = load_digits().target[:20].tolist()
        assert client.post(
            "/v1/models/digits-mlp/evaluate", json={"inputs": digits(20), "labels": labels}
        ).is_success
        refused = client.post("/v1/models/digits-mlp/score", json={"inputs": [[0] * 63]})
        assert refused.status_code == 422
        refused = client.post(
            "/v1/models/digits-mlp/score", json={"inputs": [[1] * 64], "alpha": 2}
        )
        assert refused.status_code == 422
        assert state(client)["samples"] == 200

        # A shift: alarms, with the change point at or after the first shifted sample.
        assert client.post("/v1/models/digits-mlp/score", json={"inputs": noise(100, 0)}).is_success
        shifted = state(client)
        assert shifted["samples"] == 300 and shifted["alarms"] >= 1
        alarm = shifted["last_alarm"]
        assert 200 <= alarm["change_point"] <= alarm["sample"] < 300
        assert alarm["statistic"] >= shifted["threshold"] == 6.0
        after = drift_metrics(server.url)
        assert after["alarms"] - before["alarms"] == shifted["alarms"]
        assert after["combined"] == pytest.approx(shifted["statistic"])
        for name, layer in shifted["layers"].items():
            assert after[name] == pytest.approx(layer["statistic"])

        # The reset: state and gauges from zero, the counter keeps what it counted.
        assert httpx.post(f"{server.url}{RESET}").status_code == 401
        cleared = client.post(RESET).json()
        assert (cleared["samples"], cleared["alarms"], cleared["statistic"]) == (0, 0, 0.0)
        reset_metrics = drift_metrics(server.url)
        assert reset_metrics["alarms"] == after["alarms"]
        assert all(reset_metrics[layer] == 0.0 for layer in ("combined", *layers))


def test_a_reload_starts_a_new_monitor(server: Server) -> None:
    with server.client(headers=HEADERS) as client:
        assert client.post("/v1/models/digits-mlp/score", json={"inputs": digits(30)}).is_success
        assert state(client)["samples"] >= 30
        loaded = client.post("/v2/repository/models/digits-mlp/load")
        assert loaded.status_code == 200, loaded.text
        assert state(client)["samples"] == 0
        blobs = client.get("/v1/models/blobs/drift").json()  # embedding-only models too
        assert blobs["model"] == "blobs" and blobs["n_calibration"] >= 1
        assert client.get("/v1/models/nope/drift").status_code == 404


def test_reset_needs_api_keys_configured_and_the_monitor_can_be_off() -> None:
    open_app = TestClient(create_app(Settings(model_repository=MODELS)))
    refused = open_app.post(RESET)
    assert refused.status_code == 403 and "API keys" in refused.json()["detail"]
    settings = Settings(
        model_repository=MODELS, device="cpu", warmup_iterations=1, drift_enabled=False
    )
    with TestClient(create_app(settings)) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        assert client.post("/v1/models/digits-mlp/score", json={"inputs": digits(5)}).is_success
        off = client.get(DRIFT)
        assert off.status_code == 404 and "SNNL_DRIFT_ENABLED=false" in off.json()["detail"]
        text = client.get("/metrics").text
        assert "snnl_drift_statistic{" not in text and "snnl_drift_alarms_total{" not in text


def round_robin(replicas: list[Server], samples: list[list[float]], size: int) -> None:
    """Score ``samples`` in requests of ``size``, each request to the next replica; then wait
    for the scoring threads to feed the monitors."""
    for start in range(0, len(samples), size):
        replica = replicas[(start // size) % len(replicas)]
        scored = httpx.post(f"{replica.url}/v1/models/digits-mlp/score",
                            json={"inputs": samples[start : start + size]})  # fmt: skip
        assert scored.is_success, scored.text
    time.sleep(0.2)


def test_two_replicas_each_alarm_on_their_share_and_the_alert_fires(tmp_path: Path) -> None:
    """Two `snnl serve` processes behind one (simulated) round-robin balancer, scraped by a real
    Prometheus with deploy's rules: an in-distribution stream raises no alarm in either; a shifted
    one raises an alarm in both, seen in each one's /drift and /metrics, and SnnlDriftDetected
    fires for the model."""
    settings = {"drift_ert": "100000", "warmup_iterations": "1", "max_batch_wait_ms": "1"}
    with (
        start_server(MODELS, tmp_path / "a.log", **settings) as a,
        start_server(MODELS, tmp_path / "b.log", **settings) as b,
        run_prometheus([a.url, b.url], tmp_path) as prometheus,
    ):
        replicas = [a, b]
        round_robin(replicas, load_digits().data[:1600].tolist(), 40)
        for replica in replicas:
            calm = httpx.get(f"{replica.url}{DRIFT}").json()
            assert (calm["samples"], calm["alarms"]) == (800, 0), calm
            assert drift_metrics(replica.url)["alarms"] == 0.0
        # Prometheus has seen both counters at 0, so increase() sees the first alarm.
        deadline = time.monotonic() + 60
        while len(query(prometheus, 'snnl_drift_alarms_total{job="snnl"} == 0')) < 2:
            assert time.monotonic() < deadline, "Prometheus never scraped both replicas"
            time.sleep(0.5)
        assert not query(prometheus, 'ALERTS{alertname="SnnlDriftDetected"}')

        round_robin(replicas, noise(200, seed=1), 20)
        for replica in replicas:
            drifted = httpx.get(f"{replica.url}{DRIFT}").json()
            assert drifted["samples"] == 900 and drifted["alarms"] >= 1, drifted
            assert drifted["last_alarm"]["change_point"] >= 800
            assert drift_metrics(replica.url)["alarms"] == drifted["alarms"]
        firing: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while not firing:
            assert time.monotonic() < deadline, "SnnlDriftDetected never fired"
            time.sleep(0.5)
            firing = query(prometheus, 'ALERTS{alertname="SnnlDriftDetected", alertstate="firing"}')
        assert firing[0]["metric"]["model"] == "digits-mlp"  # type: ignore[index]
        per_replica = query(prometheus, 'snnl_drift_alarms_total{model="digits-mlp"} > 0')
        assert len(per_replica) == 2
