"""The running app: readiness, many clients at once, overload and timeouts (real processes)."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _server import HEADERS, Server, start_server
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from snnl.model.detector import Detector

SCORE = "/v1/models/digits-mlp/score"


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def queue_depth(client: httpx.Client, model: str) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "snnl_queue_depth" and sample.labels["model"] == model:
                return sample.value
    raise AssertionError("no snnl_queue_depth sample")


def test_readiness_is_503_while_warming_up_and_200_after(repository: Path, tmp_path: Path) -> None:
    """A long warm-up (a real setting: full-size scoring calls per model) keeps /readyz at 503."""
    log = tmp_path / "log"
    with (
        start_server(repository, log, wait_ready=False, warmup_iterations="400") as s,
        s.client(headers=HEADERS) as client,
    ):
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"].startswith("not ready: ")
        assert ready.headers["Retry-After"] == "1"
        assert client.get("/healthz").status_code == 200
        score = client.post(SCORE, json={"inputs": [[0] * 64]})
        assert score.status_code == 503
        assert score.json()["detail"].startswith("not ready: ")
        assert client.get("/v1/models").status_code == 503
        assert client.get("/v1/models/nope").status_code == 404  # names are known at once
        deadline = time.monotonic() + 300
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        assert client.post(SCORE, json={"inputs": [[0] * 64]}).status_code == 200
    assert '"message": "model ready", "model": "digits-mlp"' in log.read_text()


def test_many_clients_get_their_own_results_bit_identical(server: Server, repository: Path) -> None:
    """32 threads, 8 requests each (1-40 samples, JSON or .npy, mixed alpha/neighbors): every
    response equals scoring that request alone with the Detector in this process."""
    detector = Detector.load(repository, "digits-mlp", device="cpu", threads=1)
    digits = load_digits().data.astype(np.float32)
    rng = np.random.default_rng(0)
    requests: list[tuple[np.ndarray, float | None, int, bool]] = []
    for _ in range(32 * 8):
        start = int(rng.integers(0, len(digits) - 40))
        x = digits[start : start + int(rng.integers(1, 41))]
        alpha = [None, None, None, 0.2][int(rng.integers(0, 4))]
        neighbors = [0, 0, 0, 3][int(rng.integers(0, 4))]
        requests.append((x, alpha, neighbors, bool(rng.integers(0, 2))))
    barrier = threading.Barrier(32)

    def client_thread(index: int) -> list[Any]:
        out = []
        with server.client(headers=HEADERS) as client:
            barrier.wait()
            for x, alpha, neighbors, as_npy in requests[index::32]:
                if as_npy:
                    query = {"neighbors": neighbors} | ({} if alpha is None else {"alpha": alpha})
                    response = client.post(
                        SCORE, params=query, content=npy(x),
                        headers={"Content-Type": "application/x-npy"},
                    )  # fmt: skip
                else:
                    body = {"inputs": x.tolist(), "alpha": alpha, "neighbors": neighbors}
                    response = client.post(SCORE, json=body)
                assert response.status_code == 200, response.text
                out.append(response.json()["results"])
        return out

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(client_thread, range(32)))
    for index in range(32):
        for (x, alpha, neighbors, _), got in zip(requests[index::32], answers[index], strict=True):
            assert got == detector.score(x, alpha=alpha, neighbors=neighbors).to_records()


@pytest.fixture(scope="module")
def tight_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server whose batches wait up to 1 s, with a 200-sample queue and a 0.9 s timeout."""
    log = tmp_path_factory.mktemp("tight") / "server.log"
    with start_server(
        repository, log, max_batch_size="128", max_batch_wait_ms="1000", max_queue="200",
        request_timeout_s="0.9",
    ) as running:  # fmt: skip
        yield running


def test_a_full_queue_is_503_with_retry_after_and_a_slow_result_times_out(
    tight_server: Server,
) -> None:
    """100 samples wait for a batch (1 s) longer than the timeout (0.9 s): while they wait, 101
    more do not fit the 200-sample queue (503 overloaded); then the 100 time out (503) and leave
    the queue. The overload check needs the 101 to arrive inside that 0.9 s window; on a machine
    too busy for that, the round is repeated (no outcome depends on how fast the machine is)."""
    waiting_body = {"inputs": np.zeros((100, 64)).tolist()}
    full_body = {"inputs": np.zeros((101, 64)).tolist()}
    with tight_server.client() as client, ThreadPoolExecutor(1) as pool:
        for _ in range(10):
            waiting = pool.submit(client.post, SCORE, json=waiting_body)
            while queue_depth(client, "digits-mlp") < 100 and not waiting.done():
                pass
            full = client.post(SCORE, json=full_body)
            timed_out = waiting.result()
            if "overloaded" in full.text:
                break
        assert queue_depth(client, "digits-mlp") == 0  # the timed-out request left the queue
    assert full.status_code == 503
    assert full.headers["Retry-After"] == "1"
    assert full.json() == {
        "detail": "model digits-mlp: overloaded, 100 of 200 queued samples (SNNL_MAX_QUEUE); "
        "retry later"
    }
    assert timed_out.status_code == 503
    assert timed_out.headers["Retry-After"] == "1"
    assert timed_out.json() == {
        "detail": "model digits-mlp: no result within 0.9 s (SNNL_REQUEST_TIMEOUT_S); retry later"
    }
