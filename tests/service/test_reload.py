"""Reloading the repository of a running server: new, changed, removed and broken models, under
load, through the admin endpoints (Triton's shape), SIGHUP and polling. A new version is swapped
in whole: every answer comes from exactly the version it names, nothing is dropped."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _repo import clone
from _server import API_KEY, HEADERS, Server, blob_embeddings, start_server

from snnl.model.detector import Detector
from snnl.model.store import read_model_files, write_model

SCORE = "/v1/models/blobs/score"


def new_version(models: Path, name: str, version: str, factor: float) -> None:
    """Write version ``version`` of ``name`` (temperatures times ``factor``), as an exporter
    would: whole folder, atomically."""
    manifest, files = read_model_files(models, name)
    layers = [
        layer.model_copy(update={"temperature": layer.temperature * factor})
        for layer in manifest.layers
    ]
    write_model(models, manifest.model_copy(update={"version": version, "layers": layers}), files)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def versions(client: httpx.Client) -> dict[str, str]:
    return {m["name"]: m["version"] for m in client.get("/v1/models").json()["models"]}


@pytest.fixture(scope="module")
def models(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reload") / "models"
    shutil.copytree(repository, root)
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("reload-log") / "server.log"
    with start_server(
        models, log, api_keys=API_KEY, warmup_iterations="1", max_batch_wait_ms="20"
    ) as running:
        yield running


def test_a_new_version_is_swapped_in_under_load_and_nothing_is_dropped(
    server: Server, models: Path
) -> None:
    x_all, _ = blob_embeddings(400, seed=3)
    old = Detector.load(models, "blobs", device="cpu")
    stop = threading.Event()
    reloaded = threading.Event()
    # (rows, sent after the reload answered, status, version, results)
    answers: list[tuple[np.ndarray, bool, int, str, Any]] = []

    def client(index: int) -> None:
        rng = np.random.default_rng(index)
        with server.client(headers=HEADERS) as http:
            while not stop.is_set():
                start = int(rng.integers(0, 380))
                x = x_all[start : start + int(rng.integers(1, 20))]
                after = reloaded.is_set()
                response = http.post(SCORE, json={"embeddings": {"embedding": x.tolist()}})
                body = response.json()
                answers.append(
                    (x, after, response.status_code, body.get("version", ""), body.get("results"))
                )

    with ThreadPoolExecutor(6) as pool, server.client(headers=HEADERS) as admin:
        running = [pool.submit(client, i) for i in range(6)]
        wait_for(lambda: len(answers) >= 30, "load started")
        new_version(models, "blobs", "2", factor=2.0)
        reload = admin.post("/v1/admin/reload")
        reloaded.set()
        count = len(answers)
        wait_for(lambda: len(answers) >= count + 30, "load continued")
        stop.set()
        for future in running:
            future.result()
    assert reload.status_code == 200, reload.text
    index = {m["name"]: m for m in reload.json()["models"]}
    assert index["blobs"] == {"name": "blobs", "version": "2", "state": "READY", "reason": ""}
    assert index["digits-mlp"]["state"] == "READY"
    new = Detector.load(models, "blobs", device="cpu")
    detectors = {"1": old, "2": new}
    assert {status for _, _, status, _, _ in answers} == {200}
    assert {version for _, _, _, version, _ in answers} == {"1", "2"}
    assert {version for _, after, _, version, _ in answers if after} == {"2"}
    for x, _, _, version, results in answers:
        expected = detectors[version].score_embeddings({"embedding": x}).to_records()
        assert results == expected


def test_a_broken_new_version_never_serves_and_the_old_one_keeps_serving(
    server: Server, models: Path
) -> None:
    with server.client(headers=HEADERS) as client:
        serving = versions(client)["blobs"]
        manifest, files = read_model_files(models, "blobs")
        new_version(models, "blobs", "broken", factor=3.0)
        with (models / "blobs" / "reference.safetensors").open("ab") as f:
            f.write(b"half-copied")
        index = {m["name"]: m for m in client.post("/v1/admin/reload").json()["models"]}
        assert index["blobs"]["version"] == serving
        assert index["blobs"]["state"] == "READY"
        assert "sha256 does not match" in index["blobs"]["reason"]
        load = client.post("/v2/repository/models/blobs/load")
        assert load.status_code == 503
        assert "reference.safetensors: sha256 does not match" in load.json()["error"]
        x, _ = blob_embeddings(2, seed=4)
        score = client.post(SCORE, json={"embeddings": {"embedding": x.tolist()}})
        assert (score.status_code, score.json()["version"]) == (200, serving)
        fixed = manifest.model_copy(update={"version": "fixed"})
        write_model(models, fixed, files)  # rewritten whole: loads again
        load = client.post("/v2/repository/models/blobs/load")
        assert load.status_code == 200, load.text
        assert load.json() == {"name": "blobs", "version": "fixed", "state": "READY", "reason": ""}
    refused = [line for line in server.log_lines() if '"model refused"' in line]
    assert refused and all('"serving_version": "' in line for line in refused)


def test_models_added_unloaded_loaded_and_removed(
    server: Server, models: Path, repository: Path
) -> None:
    x, _ = blob_embeddings(2, seed=5)
    body = {"embeddings": {"embedding": x.tolist()}}
    with server.client(headers=HEADERS) as client:
        clone(repository / "blobs", models / "extra")
        index = {m["name"]: m for m in client.post("/v2/repository/index").json()}
        assert index["extra"]["state"] == "UNAVAILABLE"
        assert client.post("/v1/models/extra/score", json=body).status_code == 404
        load = client.post("/v2/repository/models/extra/load")
        assert load.json()["state"] == "READY"
        assert client.post("/v1/models/extra/score", json=body).status_code == 200
        unload = client.post("/v2/repository/models/extra/unload")
        assert unload.json()["state"] == "UNAVAILABLE"
        refused = client.post("/v1/models/extra/score", json=body)
        assert refused.status_code == 503
        assert "unloaded" in refused.json()["detail"]
        client.post("/v1/admin/reload")  # an unloaded model stays unloaded
        assert client.post("/v1/models/extra/score", json=body).status_code == 503
        assert client.post("/v2/repository/models/extra/load").status_code == 200
        shutil.rmtree(models / "extra")
        index = {m["name"]: m for m in client.post("/v1/admin/reload").json()["models"]}
        assert "extra" not in index
        assert client.post("/v1/models/extra/score", json=body).status_code == 404
        assert "extra" not in versions(client)
        for name in ("nope", "..%2Fblobs", "%2e%2e"):
            assert client.post(f"/v2/repository/models/{name}/load").status_code == 404
        assert client.post(SCORE, json=body).status_code == 200


def test_repository_control_needs_the_api_key(server: Server) -> None:
    with server.client() as client:
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/blobs/load",
            "/v2/repository/models/blobs/unload",
            "/v1/admin/reload",
        ):
            response = client.post(path, headers={"X-API-Key": "not-the-key-0123456789"})
            assert response.status_code == 401, path
        assert client.get("/readyz").json()["models"] == ["blobs", "digits-mlp"]


def test_sighup_reloads_changed_models(server: Server, models: Path) -> None:
    with server.client(headers=HEADERS) as client:
        new_version(models, "blobs", "hup", factor=1.5)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: versions(client)["blobs"] == "hup", "SIGHUP reload")


def test_polling_picks_up_a_changed_model(repository: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    clone(repository / "blobs", models / "blobs", seal=False)
    with (
        start_server(models, tmp_path / "log", repository_poll_s="0.2", warmup_iterations="1") as s,
        s.client() as client,
    ):
        new_version(models, "blobs", "polled", factor=1.5)
        wait_for(lambda: versions(client)["blobs"] == "polled", "polled reload")
