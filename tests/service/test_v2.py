"""Open Inference Protocol v2 through the real ``tritonclient[http]`` against ``snnl serve``:
health, metadata, infer with JSON and with binary tensors (each answer equal to /v1's), errors."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from _server import API_KEY, HEADERS, Server, blob_embeddings
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException


def auth() -> dict[str, str]:
    """A fresh copy of the auth headers (tritonclient adds its own headers to the dict given)."""
    return dict(HEADERS)


SCALARS = ("prediction", "confidence", "nonconformity", "p_value", "outlier")
PER_LAYER = {
    "soft_neighbor_score": "soft_neighbor_score",
    "same_class_neighbors": "same_class_neighbors",
    "layer_p_value": "p_value",
}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as running:
        yield running


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    x = load_digits().data[:40].astype(np.float32)
    x[:5] = np.random.default_rng(0).uniform(0, 60, size=(5, 64)).astype(np.float32)
    return x


def v1_scores(server: Server, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with server.client(headers=auth()) as http:
        response = http.post(f"/v1/models/{model}/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def assert_equal_to_v1(result: triton.InferResult, records: list[dict[str, Any]]) -> None:
    """Every v2 output tensor holds the /v1 answer's values, row by row."""
    for name in SCALARS:
        expected = np.array([record[name] for record in records])
        np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-9, err_msg=name)
    for name, field in PER_LAYER.items():
        expected = np.array([[layer[field] for layer in r["layers"]] for r in records])
        np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-9, err_msg=name)
    assert result.as_numpy("prediction").dtype == np.int64
    assert result.as_numpy("outlier").dtype == np.bool_
    if "neighbors" in records[0]["layers"][0] and records[0]["layers"][0]["neighbors"]:
        expected = np.array([[layer["neighbors"] for layer in r["layers"]] for r in records])
        np.testing.assert_array_equal(result.as_numpy("neighbor_ids"), expected)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits-mlp", headers=auth())
    assert not client.is_model_ready("nope", headers=auth())
    server = client.get_server_metadata(headers=auth())
    assert server["name"] == "snnl" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("digits-mlp", headers=auth())
    assert meta["inputs"] == [{"name": "inputs", "datatype": "FP32", "shape": [-1, 64]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs["prediction"] == ("INT64", [-1])
    assert outputs["outlier"] == ("BOOL", [-1])
    assert outputs["layer_p_value"][0] == "FP64" and outputs["layer_p_value"][1][0] == -1
    blobs = client.get_model_metadata("blobs", headers=auth())
    assert all(tensor["shape"] == [-1, 16] for tensor in blobs["inputs"])


def test_infer_json_tensors_equal_v1(
    client: triton.InferenceServerClient, server: Server, samples: np.ndarray
) -> None:
    tensor = triton.InferInput("inputs", list(samples.shape), "FP32")
    tensor.set_data_from_numpy(samples, binary_data=False)
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in SCALARS]
    outputs += [triton.InferRequestedOutput(name, binary_data=False) for name in PER_LAYER]
    result = client.infer("digits-mlp", [tensor], outputs=outputs, headers=auth())
    assert result.get_response()["model_name"] == "digits-mlp"
    assert_equal_to_v1(result, v1_scores(server, "digits-mlp", {"inputs": samples.tolist()}))


def test_infer_binary_tensors_with_parameters_equal_v1(
    client: triton.InferenceServerClient, server: Server, samples: np.ndarray
) -> None:
    tensor = triton.InferInput("inputs", list(samples.shape), "FP32")
    tensor.set_data_from_numpy(samples)  # binary data
    result = client.infer(
        "digits-mlp", [tensor], headers=auth(), parameters={"alpha": 0.2, "neighbors": 3}
    )
    ids = result.as_numpy("neighbor_ids")
    assert ids.shape[0] == len(samples) and ids.shape[2] == 3
    records = v1_scores(
        server, "digits-mlp", {"inputs": samples.tolist(), "alpha": 0.2, "neighbors": 3}
    )
    assert_equal_to_v1(result, records)


def test_infer_compressed_both_ways(
    client: triton.InferenceServerClient, server: Server, samples: np.ndarray
) -> None:
    tensor = triton.InferInput("inputs", list(samples.shape), "FP32")
    tensor.set_data_from_numpy(samples)
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "digits-mlp", [tensor], headers=auth(),
            request_compression_algorithm=algorithm, response_compression_algorithm="gzip",
        )  # fmt: skip
        assert_equal_to_v1(result, v1_scores(server, "digits-mlp", {"inputs": samples.tolist()}))


def test_embedding_only_model_takes_one_tensor_per_layer(
    client: triton.InferenceServerClient, server: Server
) -> None:
    meta = client.get_model_metadata("blobs", headers=auth())
    x, _ = blob_embeddings(12, seed=3)
    tensors = []
    for spec in meta["inputs"]:
        tensor = triton.InferInput(spec["name"], list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        tensors.append(tensor)
    result = client.infer("blobs", tensors, headers=auth())
    body = {"embeddings": {spec["name"]: x.tolist() for spec in meta["inputs"]}}
    assert_equal_to_v1(result, v1_scores(server, "blobs", body))


def v2_post(server: Server, path: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with server.client() as http:
        return http.post(path, content=content, headers={**HEADERS, **headers})


def infer_body(data: list[Any], shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "inputs", "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (infer_body([1.0] * 63, [1, 63]), 422, "inputs: expected shape (B, 64)"),
        (infer_body([1.0] * 64, [1, 63]), 400, "shape [1, 63] needs 63 elements, got 64"),
        (infer_body(["a"], [1, 1], "BYTES"), 400, "inputs.inputs.datatype: expected one of"),
        ({"inputs": []}, 422, "inputs: List should have at least 1 item"),
        (
            {**infer_body([1.0] * 64, [1, 64]), "parameters": {"alpha": 2}},
            422,
            "parameters.alpha: Input should be less than 1",
        ),
        (
            {**infer_body([1.0] * 64, [1, 64]), "outputs": [{"name": "neighbor_ids"}]},
            400,
            "outputs.neighbor_ids: set parameters.neighbors",
        ),
        (
            {**infer_body([1.0] * 64, [1, 64]), "outputs": [{"name": "outlier_fdr"}]},
            400,
            "outputs.outlier_fdr: set parameters.fdr",
        ),
        (
            {**infer_body([1.0] * 64, [1, 64]), "parameters": {"guarantee": "x"}},
            422,
            "parameters.guarantee: Input should be 'marginal', 'class' or 'pac'",
        ),
        (
            {**infer_body([1.0] * 64, [1, 64]), "parameters": {"alpha": 0.001}},
            422,
            "alpha=0.001 is below 1/(n_cal + 1)",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]},
            422,
            "this model takes one tensor 'inputs'",
        ),
    ],
)
def test_bad_requests_answer_error_bodies(
    server: Server, body: dict[str, Any], status: int, message: str
) -> None:
    response = v2_post(server, "/v2/models/digits-mlp/infer", body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"]


def test_binary_sizes_must_account_for_the_body(server: Server) -> None:
    header = json.dumps(
        {"inputs": [{"name": "inputs", "shape": [2, 64], "datatype": "FP32",
                     "parameters": {"binary_data_size": 512}}]}
    ).encode()  # fmt: skip
    data = np.zeros((2, 64), dtype="<f4").tobytes()
    length = str(len(header))
    ok = v2_post(server, "/v2/models/digits-mlp/infer", header + data, **{
        "Inference-Header-Content-Length": length})  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["outputs"][0]["data"]) == 2  # no binary output asked: all JSON
    extra = v2_post(server, "/v2/models/digits-mlp/infer", header + data + b"x", **{
        "Inference-Header-Content-Length": length})  # fmt: skip
    assert extra.status_code == 400 and "1 bytes after the tensors" in extra.json()["error"]
    short = v2_post(server, "/v2/models/digits-mlp/infer", header + data[:-4], **{
        "Inference-Header-Content-Length": length})  # fmt: skip
    assert short.status_code == 400 and "runs past the body" in short.json()["error"]


def test_the_served_version_answers_under_its_version_path(
    client: triton.InferenceServerClient, samples: np.ndarray
) -> None:
    version = client.get_model_metadata("digits-mlp", headers=auth())["versions"][0]
    assert client.is_model_ready("digits-mlp", model_version=version, headers=auth())
    assert not client.is_model_ready("digits-mlp", model_version=version + "0", headers=auth())
    meta = client.get_model_metadata("digits-mlp", model_version=version, headers=auth())
    assert meta["name"] == "digits-mlp"
    tensor = triton.InferInput("inputs", list(samples.shape), "FP32")
    tensor.set_data_from_numpy(samples)
    scored = client.infer("digits-mlp", [tensor], model_version=version, headers=auth())
    assert scored.as_numpy("p_value").shape == (len(samples),)
    with pytest.raises(InferenceServerException, match="is not served"):
        client.infer("digits-mlp", [tensor], model_version=version + "0", headers=auth())


def test_unknown_model_unknown_path_and_missing_key(
    client: triton.InferenceServerClient, server: Server
) -> None:
    tensor = triton.InferInput("inputs", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="not in the repository"):
        client.infer("nope", [tensor], headers=auth())
    with pytest.raises(InferenceServerException, match="API key required"):
        client.infer("digits-mlp", [tensor])
    with server.client() as http:
        missing = http.get("/v2/nothing/here", headers=auth())
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    assert API_KEY not in missing.text


def test_gzip_bomb_is_refused_before_it_inflates(server: Server) -> None:
    bomb = gzip.compress(b"0" * 20_000_000)  # 20 MB of zeros in ~20 kB; the limit is 1 MB
    response = v2_post(server, "/v2/models/digits-mlp/infer", bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "inflates to more than" in response.json()["error"]
    brotli = v2_post(server, "/v1/models/digits-mlp/score", b"x", **{"Content-Encoding": "br"})
    assert brotli.status_code == 415 and "Content-Encoding" in brotli.json()["detail"]


def test_v1_takes_gzip_json_and_answers_gzip_from_the_minimum_size(
    server: Server, samples: np.ndarray
) -> None:
    body = json.dumps({"inputs": samples.tolist()}).encode()
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    with server.client(headers={**HEADERS, "Accept-Encoding": "gzip"}) as http:
        zipped = http.post(
            "/v1/models/digits-mlp/score", content=gzip.compress(body), headers=headers
        )
        small = http.get("/healthz")
    assert zipped.status_code == 200 and zipped.headers["content-encoding"] == "gzip"
    assert zipped.json()["results"] == v1_scores(server, "digits-mlp", json.loads(body))
    assert "content-encoding" not in small.headers  # below SNNL_GZIP_MIN_BYTES


def test_infer_json_parameters_guarantee_and_fdr(server: Server, samples: np.ndarray) -> None:
    x = samples[:12]
    parameters = {"alpha": 0.2, "guarantee": "pac", "delta": 0.3, "fdr": 0.1}
    body = {**infer_body(x.ravel().tolist(), list(x.shape)), "parameters": parameters}
    response = v2_post(server, "/v2/models/digits-mlp/infer", body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    records = v1_scores(server, "digits-mlp", {"inputs": x.tolist(), **parameters})
    assert outputs["outlier_fdr"]["datatype"] == "BOOL" and outputs["outlier_fdr"]["shape"] == [12]
    assert outputs["outlier_fdr"]["data"] == [r["outlier_fdr"] for r in records]
    assert outputs["outlier"]["data"] == [r["outlier"] for r in records]
    plain = {**infer_body(x.ravel().tolist(), list(x.shape)), "parameters": {"alpha": 0.2}}
    names = [
        o["name"] for o in v2_post(server, "/v2/models/digits-mlp/infer", plain).json()["outputs"]
    ]
    assert "outlier_fdr" not in names and "outlier" in names
