"""Overload against a real server: a burst far beyond the queue gets only correct answers or 503 +
Retry-After, the service recovers by itself, and a client that disconnects takes its samples out of
the queue (they are never scored). The per-request timeout: tests/service/test_app.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from _server import Server, start_server
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from snnl.model.detector import Detector

SCORE = "/v1/models/digits-mlp/score"


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


@pytest.fixture(scope="module")
def slow_batches(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Batches wait up to 1 s to fill; 200 samples fit the queue."""
    log = tmp_path_factory.mktemp("overload") / "server.log"
    with start_server(
        repository, log, max_batch_size="128", max_batch_wait_ms="1000", max_queue="200",
        request_timeout_s="30", warmup_iterations="1",
    ) as running:  # fmt: skip
        yield running


def test_a_burst_gets_correct_answers_or_503_and_the_service_recovers(
    slow_batches: Server, repository: Path
) -> None:
    digits = load_digits().data.astype(np.float32)
    detector = Detector.load(repository, "digits-mlp", device="cpu", threads=1)
    barrier = threading.Barrier(30)

    def burst(index: int) -> tuple[np.ndarray, httpx.Response]:
        x = digits[index * 50 : index * 50 + 50]
        with slow_batches.client() as client:
            barrier.wait()
            return x, client.post(SCORE, json={"inputs": x.tolist()})

    with ThreadPoolExecutor(30) as pool:
        outcomes = list(pool.map(burst, range(30)))  # 1500 samples against a 200-sample queue
    codes = sorted(response.status_code for _, response in outcomes)
    assert set(codes) == {200, 503}, codes
    for x, response in outcomes:
        if response.status_code == 200:
            assert response.json()["results"] == detector.score(x).to_records()
        else:
            assert response.headers["Retry-After"] == "1"
            assert "overloaded" in response.json()["detail"]
    with slow_batches.client() as client:
        for start in range(0, 200, 50):  # the load is gone: every request is answered again
            x = digits[start : start + 50]
            response = client.post(SCORE, json={"inputs": x.tolist()})
            assert response.status_code == 200
            assert response.json()["results"] == detector.score(x).to_records()
        assert metric(client, "snnl_queue_depth", model="digits-mlp") == 0


def test_a_client_that_disconnects_leaves_the_queue_unscored(slow_batches: Server) -> None:
    """100 samples wait for their batch (1 s); the client hangs up: they leave the queue at once
    and are never scored (answered 499 in the log and metrics, which nobody reads)."""
    address = urlsplit(slow_batches.url)
    body = json.dumps({"inputs": np.zeros((100, 64)).tolist()}).encode()
    head = (
        f"POST {SCORE} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with slow_batches.client() as client:
        for _ in range(10):  # a round where the batch ran before the hang-up proves nothing
            scored = metric(client, "snnl_samples_scored_total", model="digits-mlp")
            gone = metric(client, "snnl_requests_total", model="digits-mlp", code="499")
            with socket.create_connection((address.hostname, address.port)) as sock:
                sock.sendall(head + body)
                while metric(client, "snnl_queue_depth", model="digits-mlp") < 100:
                    time.sleep(0.005)
            deadline = time.monotonic() + 30
            while (
                hung_up := metric(client, "snnl_requests_total", model="digits-mlp", code="499")
            ) == gone and metric(client, "snnl_samples_scored_total", model="digits-mlp") == scored:
                assert time.monotonic() < deadline, "the request was neither dropped nor scored"
                time.sleep(0.01)
            if hung_up == gone:
                continue  # the batch ran before the hang-up arrived: try again
            assert metric(client, "snnl_queue_depth", model="digits-mlp") == 0
            time.sleep(1.2)  # past the batch's wait: had the samples stayed, they were scored
            assert metric(client, "snnl_samples_scored_total", model="digits-mlp") == scored
            break
        else:
            raise AssertionError("the batch ran before the hang-up in every round")
        assert client.post(SCORE, json={"inputs": [[0.0] * 64]}).status_code == 200
