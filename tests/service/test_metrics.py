"""The documented metrics (docs/service.md), read from the running server's /metrics and moving
as requests arrive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _server import HEADERS, Server
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from service.http.metrics import ServiceMetrics, observe_many
from snnl import __version__
from snnl.model.detector import Detector

SCORE = "/v1/models/digits-mlp/score"
MODEL = {"model": "digits-mlp"}

# The documented metrics: family name (as the parser reports it), type, label names.
DOCUMENTED = {
    "snnl_requests": ("counter", {"model", "endpoint", "code"}),
    "snnl_request_duration_seconds": ("histogram", {"model", "endpoint"}),
    "snnl_queue_wait_seconds": ("histogram", {"model"}),
    "snnl_batch_size": ("histogram", {"model"}),
    "snnl_stage_duration_seconds": ("histogram", {"model", "stage"}),
    "snnl_samples_scored": ("counter", {"model"}),
    "snnl_outliers": ("counter", {"model"}),
    "snnl_soft_neighbor_score": ("histogram", {"model", "layer"}),
    "snnl_p_value": ("histogram", {"model"}),
    "snnl_queue_depth": ("gauge", {"model"}),
    "snnl_reference_points": ("gauge", {"model", "layer"}),
    "snnl_model_info": ("gauge", {"model", "version", "device", "backend"}),
    "snnl_drift_statistic": ("gauge", {"model", "layer"}),
    "snnl_drift_alarms": ("counter", {"model"}),
    "snnl_requests_in_flight": ("gauge", set()),
    "snnl_build_info": ("gauge", {"version"}),
}


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of every snnl_* sample."""
    with server.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("snnl_"):
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_every_metric_of_the_spec_with_its_type_and_labels(server: Server) -> None:
    with server.client() as client:
        client.post(SCORE, json={"inputs": [[0] * 64]}, headers=HEADERS)
        text = client.get("/metrics").text
    families = {
        f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("snnl_")
    }
    assert set(families) == set(DOCUMENTED)
    for name, (kind, labels) in DOCUMENTED.items():
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    assert "snnl_requests_total" in text and "snnl_samples_scored_total" in text


def test_observe_many_counts_exactly_as_observe_one_by_one() -> None:
    bulk, single = ServiceMetrics(), ServiceMetrics()
    rng = np.random.default_rng(0)
    # Values on the bucket bounds (a value equal to a bound counts in that bucket), between
    # them, below the first, above the last finite one, and NaN (counted in no bucket).
    values = np.concatenate(
        [rng.uniform(0, 1, 500), [0.0, 0.001, 0.05, 0.5, 1.0, 1.5, -1.0, float("nan")]]
    )
    for metrics, observe in (
        (bulk, lambda h, v: observe_many(h, v)),
        (single, lambda h, v: [h.observe(x) for x in v.tolist()]),
    ):
        observe(metrics.p_value.labels("m"), values)
        observe(metrics.p_value.labels("m"), values[:0])  # an empty batch changes nothing
        observe(metrics.p_value.labels("m"), values[:3])  # few values: observed one by one
        observe(metrics.soft_neighbor_score.labels("m", "h"), values[:-1])
        observe(metrics.queue_wait.labels("m"), values[:-1] / 100)

    def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[str, ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect()
            for s in family.samples
            if s.name.startswith("snnl_") and not s.name.endswith("_created")
        }

    got, expected = samples(bulk), samples(single)
    assert set(got) == set(expected)
    for key, count in expected.items():
        if key[0].endswith("_sum"):  # a different order of float additions
            assert np.isclose(got[key], count, equal_nan=True), key
        else:
            assert got[key] == count, key
    assert expected[("snnl_p_value_count", (("model", "m"),))] == len(values) - 1 + 3


def test_process_python_in_flight_and_build_info(server: Server) -> None:
    with server.client() as client:
        text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds"):
        assert families[name].samples[0].value > 0, name
    assert "python_gc_objects_collected" in families and "python_info" in families
    (build,) = families["snnl_build_info"].samples
    assert build.labels == {"version": __version__} and build.value == 1
    # The scrape itself is the one request in flight while /metrics renders.
    assert families["snnl_requests_in_flight"].samples[0].value >= 1


def test_unit_interval_histograms_cover_zero_to_one() -> None:
    metrics = ServiceMetrics()
    metrics.p_value.labels("m").observe(0.5)
    metrics.soft_neighbor_score.labels("m", "h").observe(0.5)
    for family in metrics.registry.collect():
        if family.name in ("snnl_p_value", "snnl_soft_neighbor_score"):
            bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
            assert bounds[0] > 0 and bounds[-2] == 1.0 and bounds[-1] == float("inf")
            assert 0.05 in bounds  # the default alpha: the flag rate reads off the histogram


def test_model_gauges(server: Server, repository: Path) -> None:
    detector = Detector.load(repository, "digits-mlp", device="cpu", threads=1)
    samples = scrape(server)
    info = {
        "model": "digits-mlp",
        "version": detector.version,
        "device": "cpu",
        "backend": "onnxruntime",
    }
    assert value(samples, "snnl_model_info", **info) == 1
    for layer in detector.layers:
        assert (
            value(samples, "snnl_reference_points", layer=layer, **MODEL)
            == detector.reference_sizes[layer]
        )
    assert (
        value(samples, "snnl_model_info", model="blobs", version="1", device="cpu", backend="none")
        == 1
    )
    assert value(samples, "snnl_queue_depth", **MODEL) == 0


def test_a_score_request_moves_every_counter_by_what_it_scored(
    server: Server, repository: Path
) -> None:
    detector = Detector.load(repository, "digits-mlp", device="cpu", threads=1)
    x = load_digits().data[:300].astype(np.float32)
    x[:40] = np.random.default_rng(0).uniform(0, 60, size=(40, 64))  # some outliers
    before = scrape(server)
    with server.client(headers=HEADERS) as client:
        results = client.post(SCORE, json={"inputs": x.tolist()}).json()["results"]
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    outliers = sum(r["outlier"] for r in results)
    assert delta("snnl_samples_scored_total", **MODEL) == 300
    assert delta("snnl_outliers_total", **MODEL) == outliers
    assert delta("snnl_requests_total", endpoint="score", code="200", **MODEL) == 1
    assert delta("snnl_request_duration_seconds_count", endpoint="score", **MODEL) == 1
    # 300 samples with max batch 128: three chunks, scored in two or three batches.
    assert delta("snnl_queue_wait_seconds_count", **MODEL) == 3
    assert delta("snnl_batch_size_sum", **MODEL) == 300
    assert 2 <= delta("snnl_batch_size_count", **MODEL) <= 3
    batches = delta("snnl_batch_size_count", **MODEL)
    for stage in ("forward", "neighbors", "calibrate"):
        assert delta("snnl_stage_duration_seconds_count", stage=stage, **MODEL) == batches
        assert delta("snnl_stage_duration_seconds_sum", stage=stage, **MODEL) > 0
    assert delta("snnl_p_value_count", **MODEL) == 300
    flagged_alpha = sum(r["p_value"] <= 0.05 for r in results)
    assert delta("snnl_p_value_bucket", le="0.05", **MODEL) == flagged_alpha
    for j, layer in enumerate(detector.layers):
        assert delta("snnl_soft_neighbor_score_count", layer=layer, **MODEL) == 300
        below_half = sum(r["layers"][j]["soft_neighbor_score"] <= 0.5 for r in results)
        assert (
            delta("snnl_soft_neighbor_score_bucket", layer=layer, le="0.5", **MODEL) == below_half
        )
    assert value(after, "snnl_queue_depth", **MODEL) == 0


def test_errors_are_counted_by_code_and_unknown_models_get_no_label(server: Server) -> None:
    before = scrape(server)
    with server.client(headers=HEADERS) as client:
        assert client.post(SCORE, json={"inputs": [[0] * 63]}).status_code == 422
        assert client.post("/v1/models/some-unknown-name/score", json={}).status_code == 404
        assert (
            client.post(
                SCORE, json={"inputs": [[0] * 64]}, headers={"Authorization": "x"}
            ).status_code
            == 401
        )
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("snnl_requests_total", endpoint="score", code="422", **MODEL) == 1
    assert delta("snnl_requests_total", endpoint="score", code="401", **MODEL) == 1
    assert delta("snnl_requests_total", endpoint="score", code="404", model="") == 1
    assert delta("snnl_samples_scored_total", **MODEL) == 0
    assert not any("some-unknown-name" in str(labels) for _, labels in after)
