"""KServe's own Python client (kserve 0.21, ``InferenceRESTClient``, protocol v2), unchanged,
against ``snnl serve``: probes, and infer with JSON and with binary tensors, all nine outputs
equal to the /v1 answer. The client runs in its own environment (``scripts/kserve-venv``, created
on first use: kserve pins protobuf 6, the project's environment has protobuf 7 for onnx)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from _server import API_KEY, HEADERS, Server
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[2]
SCALARS = ("prediction", "confidence", "nonconformity", "p_value", "outlier")
PER_LAYER = {
    "soft_neighbor_score": "soft_neighbor_score",
    "layer_p_value": "p_value",
    "same_class_neighbors": "same_class_neighbors",
    "neighbor_ids": "neighbors",
}


@pytest.fixture(scope="session")
def kserve_python() -> str:
    """The python of the KServe client's environment (created, or found current)."""
    done = subprocess.run(
        [ROOT / "scripts" / "kserve-venv"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"scripts/kserve-venv failed: {done.stderr[-3000:]}"
    return done.stdout.strip().splitlines()[-1]


def test_kserve_client_reaches_the_probes_and_infers_json_and_binary(
    server: Server, kserve_python: str, tmp_path: Path
) -> None:
    x = load_digits().data[:12].astype(np.float32)
    x[:2] = np.random.default_rng(0).uniform(0, 60, size=(2, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    client = Path(__file__).with_name("kserve_client.py")
    args = [server.url, API_KEY, "digits-mlp", tmp_path / "x.npy", tmp_path / "out.npz"]
    done = subprocess.run(
        [kserve_python, client, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert out["probes"].tolist() == [True, True, True]
    with server.client(headers=HEADERS) as http:
        response = http.post(
            "/v1/models/digits-mlp/score", json={"inputs": x.tolist(), "neighbors": 3}
        )
    assert response.status_code == 200, response.text
    records = response.json()["results"]
    expected = {name: np.array([r[name] for r in records]) for name in SCALARS}
    for name, field in PER_LAYER.items():
        expected[name] = np.array([[layer[field] for layer in r["layers"]] for r in records])
    for encoding in ("json", "binary"):
        got = {name.split(".", 1)[1]: out[name] for name in out.files if name.startswith(encoding)}
        assert sorted(got) == sorted(expected), encoding
        for name, values in expected.items():
            assert got[name].shape == values.shape, (encoding, name)
            if values.dtype.kind == "f":
                np.testing.assert_allclose(got[name], values, rtol=1e-9, err_msg=name)
            else:
                np.testing.assert_array_equal(got[name], values, err_msg=name)
        assert got["prediction"].dtype == np.int64 and got["outlier"].dtype == np.bool_
