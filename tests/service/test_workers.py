"""``snnl serve --workers 2``: two processes on one port. Readiness, metrics aggregation, API-key
rotation, reload (SIGHUP and the admin endpoint) and the SIGTERM drain hold for every worker.

Which worker answered is told by the ``X-Request-ID`` of its answer (each process draws its own
prefix); ``per_worker`` sends fresh connections until both workers have answered.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from _server import API_KEY, HEADERS, Server, blob_embeddings, start_server
from prometheus_client.parser import text_string_to_metric_families
from test_reload import new_version

WORKERS = 2
SCORE = "/v1/models/blobs/score"
KEY_A, KEY_B = (f"file-key-{c * 16}" for c in "ab")


def per_worker(server: Server, request: Callable[[httpx.Client], httpx.Response]) -> list:
    """One answer of each worker to ``request`` (each try on a new connection)."""
    answers: dict[str, httpx.Response] = {}
    for _ in range(400):
        with server.client() as client:
            response = request(client)
        answers.setdefault(response.headers["x-request-id"][:16], response)
        if len(answers) == WORKERS:
            return list(answers.values())
    raise AssertionError(f"only {len(answers)} of {WORKERS} workers answered 400 requests")


def until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def metrics(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(scope="module")
def models(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers") / "models"
    shutil.copytree(repository, root)
    return root


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workers-keys") / "api-keys"
    path.write_text(f"{KEY_A}\n")
    return path


@pytest.fixture(scope="module")
def server(models: Path, keys_file: Path) -> Iterator[Server]:
    with start_server(
        models, keys_file.parent / "server.log", workers=str(WORKERS), api_keys=API_KEY,
        api_keys_file=str(keys_file), warmup_iterations="1",
    ) as running:  # fmt: skip
        yield running


def blobs(n: int) -> dict[str, object]:
    x, _ = blob_embeddings(n, seed=3)
    return {"embeddings": {"embedding": x.tolist()}}


def blobs_versions(server: Server) -> set[str]:
    """The version of ``blobs`` that each worker serves."""
    answers = per_worker(server, lambda c: c.get("/v1/models", headers=HEADERS))
    return {m["version"] for a in answers for m in a.json()["models"] if m["name"] == "blobs"}


def test_every_worker_is_ready_and_serves(server: Server) -> None:
    answers = per_worker(server, lambda c: c.get("/readyz"))
    assert all(a.status_code == 200 for a in answers)
    assert all(a.json()["models"] == ["blobs", "digits-mlp"] for a in answers)


def test_metrics_add_up_over_workers(server: Server) -> None:
    before = metrics(server)
    first: list[httpx.Response] = []  # every request per_worker sends, also the ones it drops

    def score_three(client: httpx.Client) -> httpx.Response:
        first.append(client.post(SCORE, json=blobs(3), headers=HEADERS))
        return first[-1]

    answers = per_worker(server, score_three)
    sent = 3 * len(first)
    # more requests through both workers: every sample counts once, whichever worker scored it
    with ThreadPoolExecutor(4) as pool:
        extra = list(pool.map(lambda _: httpx.post(
            f"{server.url}{SCORE}", json=blobs(5), headers=HEADERS, timeout=60
        ), range(8)))  # fmt: skip
    assert len(answers) == WORKERS
    assert all(r.status_code == 200 for r in [*first, *extra])
    sent += 5 * len(extra)
    outliers = sum(r["outlier"] for a in [*first, *extra] for r in a.json()["results"])
    after = metrics(server)
    model = frozenset({("model", "blobs")})

    def moved(name: str) -> float:
        return after.get((name, model), 0.0) - before.get((name, model), 0.0)

    assert moved("snnl_samples_scored_total") == sent
    assert moved("snnl_outliers_total") == outliers
    assert moved("snnl_p_value_count") == sent
    assert after[("snnl_queue_depth", model)] == 0  # summed over live workers
    assert after[("snnl_requests_in_flight", frozenset())] >= 1  # this scrape
    info = [k for k in after if k[0] == "snnl_model_info" and ("model", "blobs") in k[1]]
    assert [after[k] for k in info] == [1.0]  # one series, not one per worker
    assert [v for (name, _), v in after.items() if name == "snnl_build_info"] == [1.0]


def test_keys_rotate_in_every_worker(server: Server, keys_file: Path) -> None:
    def status(key: str) -> Callable[[httpx.Client], httpx.Response]:
        return lambda c: c.post(SCORE, json=blobs(1), headers={"X-API-Key": key})

    assert all(a.status_code == 200 for a in per_worker(server, status(KEY_A)))
    keys_file.write_text(f"{KEY_B}\n")
    server.process.send_signal(signal.SIGHUP)  # also seen without it, within a second or so
    until(
        lambda: (
            all(a.status_code == 200 for a in per_worker(server, status(KEY_B)))
            and all(a.status_code == 401 for a in per_worker(server, status(KEY_A)))
        ),
        "rotation in every worker",
    )


def test_sighup_reloads_every_worker(server: Server, models: Path) -> None:
    new_version(models, "blobs", "hup", factor=1.5)
    server.process.send_signal(signal.SIGHUP)
    until(
        lambda: blobs_versions(server) == {"hup"},
        "SIGHUP reload of every worker",
    )


def test_a_reload_request_to_one_worker_reloads_every_worker(server: Server, models: Path) -> None:
    new_version(models, "blobs", "admin", factor=2.0)
    with server.client(headers=HEADERS) as client:
        response = client.post("/v1/admin/reload")
    assert response.status_code == 200, response.text
    assert {m["name"]: m["version"] for m in response.json()["models"]}["blobs"] == "admin"
    until(
        lambda: blobs_versions(server) == {"admin"},
        "admin reload of every worker",
    )


def test_sigterm_drains_every_worker_and_exits_0(repository: Path, tmp_path: Path) -> None:
    answers: list[int] = []
    resets: list[float] = []
    with start_server(
        repository, tmp_path / "log", workers=str(WORKERS), shutdown_drain_s="5",
        warmup_iterations="1", max_batch_wait_ms="100",
    ) as server:  # fmt: skip
        body = {"embeddings": {"embedding": np.zeros((2, 16)).tolist()}}
        run_dir = Path(re.search(r'"run_dir": "([^"]+)"', server.log.read_text()).group(1))
        assert (run_dir / "metrics").is_dir()

        def client() -> None:
            limits = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(base_url=server.url, timeout=60, limits=limits) as http:
                while True:
                    try:
                        answers.append(http.post(SCORE, json=body).status_code)
                    except httpx.ConnectError:
                        return
                    except httpx.TransportError:  # queued in the kernel when the socket closed
                        resets.append(time.monotonic())
                        return

        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(client) for _ in range(4)]
            until(lambda: len(answers) >= 8, "load")
            terminated = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            # during the drain, every worker answers 503 (each got SIGTERM from the parent)
            until(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, "503", 10)
            ready = [a.status_code for a in per_worker(server, lambda c: c.get("/readyz"))]
            assert server.process.wait(60) == 0, server.log.read_text()[-3000:]
            for future in running:
                future.result()  # no client saw anything but answers, then the end
    assert set(ready) == {503}
    assert set(answers) == {200}
    log = server.log.read_text()
    # Every score request a worker read was answered to its client: the workers' request log has
    # one line per request read. A connection still queued in the kernel when a listening socket
    # closes is reset unread; that can only happen after SIGTERM.
    received = [
        line
        for line in map(json.loads, (t for t in log.splitlines() if t.startswith("{")))
        if line.get("message") == "request" and line.get("endpoint") == "score"
    ]
    assert len(received) == len(answers), (len(received), len(answers), len(resets))
    assert all(reset > terminated for reset in resets)
    assert log.count("shutting down: readiness now 503") == WORKERS
    assert log.count("Finished server process") == WORKERS
    assert not run_dir.exists()  # the parent removed its folder
