"""``snnl.client`` and ``snnl score --url`` against a real ``snnl serve`` process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _server import API_KEY, SNNL, Server, blob_embeddings
from sklearn.datasets import load_digits

from snnl.client import Client, ServiceError


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return load_digits().data[:30].astype(np.float32)


def test_npy_and_json_bodies_give_the_same_scores(server: Server, x: np.ndarray) -> None:
    with Client(server.url, api_key=API_KEY) as client:
        assert client.ready()
        names = [model["name"] for model in client.models()]
        assert {"digits-mlp", "blobs"} <= set(names)
        npy = client.score("digits-mlp", x, alpha=0.2, neighbors=2)
        as_json = client.score("digits-mlp", x, alpha=0.2, neighbors=2, encoding="json")
        assert npy == as_json and len(npy) == len(x)
        assert len(npy[0]["layers"][0]["neighbors"]) == 2  # type: ignore[arg-type]
        layer = client.models()[names.index("blobs")]["layers"][0]["name"]
        embeddings, labels = blob_embeddings(20, seed=1)
        scored = client.score("blobs", embeddings={layer: embeddings})
        assert len(scored) == 20
        evaluation = client.evaluate("blobs", labels, embeddings={layer: embeddings})
        assert evaluation["size"] == 20
        assert client.model("digits-mlp")["manifest"]["name"] == "digits-mlp"


def test_refusals_raise_service_errors_with_the_detail(server: Server, x: np.ndarray) -> None:
    with Client(server.url, api_key=API_KEY) as client:
        with pytest.raises(ServiceError, match=r"HTTP 422: inputs: expected shape") as refused:
            client.score("digits-mlp", x[:, :10])
        assert refused.value.status == 422
    with Client(server.url) as anonymous, pytest.raises(ServiceError, match="HTTP 401"):
        anonymous.models()
    with Client("http://127.0.0.1:9", timeout=2) as nowhere:
        with pytest.raises(ServiceError, match="cannot reach") as unreachable:
            nowhere.models()
        assert unreachable.value.status == 0 and not nowhere.ready()


def snnl_score(*args: str | Path, key: str | None = API_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNNL_")}
    if key is not None:
        env["SNNL_API_KEY"] = key
    return subprocess.run(
        [SNNL, "score", *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_scores_through_the_service_as_it_does_locally(
    server: Server, repository: Path, x: np.ndarray, tmp_path: Path
) -> None:
    data = tmp_path / "x.npz"
    np.savez(data, x=x)
    remote = snnl_score("--url", server.url, "--model", "digits-mlp", data, "--batch-size", "7")
    local = snnl_score("--repository", repository, "--model", "digits-mlp", data, "--device", "cpu")
    assert remote.returncode == 0, remote.stderr
    assert local.returncode == 0, local.stderr
    remote_rows = [json.loads(line) for line in remote.stdout.splitlines()]
    local_rows = [json.loads(line) for line in local.stdout.splitlines()]
    assert len(remote_rows) == len(x)
    for got, want in zip(remote_rows, local_rows, strict=True):
        assert got["prediction"] == want["prediction"] and got["outlier"] == want["outlier"]
        np.testing.assert_allclose(got["p_value"], want["p_value"], rtol=1e-6)
    assert remote.stderr.strip() == local.stderr.strip()  # the same summary line
    refused = snnl_score("--url", server.url, "--model", "digits-mlp", data, key=None)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "HTTP 401" in refused.stderr
