"""Every endpoint and every error case, through a real ``snnl serve`` process (conftest.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _server import HEADERS, Server, blob_embeddings
from sklearn.datasets import load_digits

from service.api.routing import json_response
from service.api.schemas import EvaluateResponse, ModelDetail, ModelList, ScoreResponse
from snnl.errors import InputError
from snnl.evaluation.embeddings import evaluate_detector
from snnl.model.detector import Detector

NPY_TYPE = "application/x-npy"
NPY = {**HEADERS, "Content-Type": NPY_TYPE}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...]) -> bytes:
    """An .npy header (format 1.0) for float32 ``shape``, without the data."""
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data.astype(np.float32)


@pytest.fixture(scope="module")
def detector(repository: Path) -> Detector:
    return Detector.load(repository, "digits-mlp", device="cpu", threads=1)


@pytest.fixture(scope="module")
def blobs(repository: Path) -> Detector:
    return Detector.load(repository, "blobs", device="cpu", threads=1)


def post(
    server: Server, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    with server.client() as client:
        if isinstance(body, bytes):
            return client.post(path, content=body, headers=headers or NPY)
        return client.post(path, json=body, headers=headers or HEADERS)


def test_healthz_and_readyz(server: Server) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": ["blobs", "digits-mlp"], "unavailable": []}


def test_list_models(server: Server, detector: Detector) -> None:
    with server.client(headers=HEADERS) as client:
        body = client.get("/v1/models").json()
    models = {m["name"]: m for m in ModelList.model_validate(body).model_dump()["models"]}
    assert sorted(models) == ["blobs", "digits-mlp"]
    digits = models["digits-mlp"]
    assert digits["input_shape"] == [64]
    assert digits["embedding_only"] is False
    assert digits["classes"] == [str(i) for i in range(10)]
    assert [layer["name"] for layer in digits["layers"]] == list(detector.layers)
    assert digits["reference_size"] == detector.reference_sizes[detector.layers[0]]
    assert (digits["device"], digits["backend"]) == ("cpu", "onnxruntime")
    assert models["blobs"]["embedding_only"] is True
    assert models["blobs"]["input_shape"] is None
    assert models["blobs"]["backend"] == "none"


def test_get_model_manifest_and_calibration(server: Server, detector: Detector) -> None:
    with server.client(headers=HEADERS) as client:
        body = client.get("/v1/models/digits-mlp").json()
    ModelDetail.model_validate(body)
    assert body["manifest"] == detector.manifest.model_dump(mode="json")
    assert detector.calibration is not None
    assert body["calibration"] == detector.calibration.summary(
        detector.flag_rule(), len(detector.class_names)
    )
    assert body["calibration"]["size"] == detector.calibration.size


@pytest.mark.parametrize("n", [1, 500])
def test_score_json_matches_the_detector(
    server: Server, detector: Detector, digits: np.ndarray, n: int
) -> None:
    x = digits[:n]
    response = post(server, "/v1/models/digits-mlp/score", {"inputs": x.tolist()})
    assert response.status_code == 200
    body = response.json()
    ScoreResponse.model_validate(body)
    assert body["model"] == "digits-mlp"
    assert body["version"] == detector.version
    assert body["results"] == detector.score(x).to_records()


def test_score_nested_inputs_alpha_and_neighbors(
    server: Server, detector: Detector, digits: np.ndarray
) -> None:
    x = digits[10:13]
    nested = x.reshape(3, 8, 8)  # nested deeper than the model's (64,) input: refused
    response = post(server, "/v1/models/digits-mlp/score", {"inputs": nested.tolist()})
    assert response.status_code == 422
    assert response.json()["detail"] == "inputs: expected shape (B, 64), got (3, 8, 8)"
    response = post(
        server, "/v1/models/digits-mlp/score", {"inputs": x.tolist(), "alpha": 0.5, "neighbors": 4}
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert results == detector.score(x, alpha=0.5, neighbors=4).to_records()
    assert all(len(layer["neighbors"]) == 4 for r in results for layer in r["layers"])


def test_score_guarantee_and_fdr_in_json_and_query(
    server: Server, detector: Detector, digits: np.ndarray
) -> None:
    x = digits[40:70]
    for guarantee, delta in (("class", None), ("pac", 0.2), ("marginal", None)):
        body = {"inputs": x.tolist(), "alpha": 0.2, "guarantee": guarantee, "delta": delta}
        response = post(server, "/v1/models/digits-mlp/score", body)
        try:
            expected = detector.score(x, alpha=0.2, guarantee=guarantee, delta=delta)
        except InputError as err:  # class: a 3-epoch net may predict some class too rarely
            assert guarantee == "class"
            assert (response.status_code, response.json()["detail"]) == (422, str(err))
            continue
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert results == expected.to_records() and "outlier_fdr" not in results[0]
    response = post(server, "/v1/models/digits-mlp/score", {"inputs": x.tolist(), "fdr": 0.2})
    results = response.json()["results"]
    assert results == detector.score(x, fdr=0.2).to_records()
    assert all(isinstance(r["outlier_fdr"], bool) for r in results)
    path = "/v1/models/digits-mlp/score?alpha=0.2&guarantee=pac&delta=0.3&fdr=0.1"
    response = post(server, path, npy(x))
    assert response.status_code == 200, response.text
    expected = detector.score(x, alpha=0.2, guarantee="pac", delta=0.3, fdr=0.1)
    assert response.json()["results"] == expected.to_records()


def test_score_refuses_rules_the_calibration_cannot_support(
    server: Server, detector: Detector
) -> None:
    assert detector.calibration is not None
    n = detector.calibration.size
    for options, message in (
        (
            {"alpha": 0.001},
            f"alpha=0.001 is below 1/(n_cal + 1) = {1 / (n + 1):.3g} with n_cal={n}",
        ),
        ({"alpha": 0.005, "guarantee": "pac"}, f"guarantee='pac', but n_cal={n}"),
        ({"fdr": 0.0001}, f"fdr=0.0001 is below 1/(n_cal + 1) = {1 / (n + 1):.3g} with n_cal={n}"),
        ({"guarantee": "conditional"}, "guarantee: Input should be 'marginal', 'class' or 'pac'"),
        ({"delta": 1.5}, "delta: Input should be less than 1"),
    ):
        response = post(server, "/v1/models/digits-mlp/score", {"inputs": [ROW], **options})
        assert response.status_code == 422, (options, response.text)
        assert message in response.json()["detail"], response.json()["detail"]


def test_model_detail_shows_the_default_rule(server: Server, detector: Detector) -> None:
    with server.client() as client:
        detail = client.get("/v1/models/digits-mlp", headers=HEADERS).json()
        listed = client.get("/v1/models", headers=HEADERS).json()["models"]
    assert detail["manifest"]["guarantee"] == "marginal" and detail["manifest"]["delta"] is None
    assert detail["calibration"]["guarantee"] == "marginal"
    assert sum(detail["calibration"]["class_sizes"]) == detector.calibration.size  # type: ignore[union-attr]
    info = next(m for m in listed if m["name"] == "digits-mlp")
    assert info["guarantee"] == "marginal" and info["delta"] is None


def test_score_npy(server: Server, detector: Detector, digits: np.ndarray) -> None:
    x = digits[20:37]
    for array in (x, x.astype(np.float64), x.astype(np.int64)):
        response = post(server, "/v1/models/digits-mlp/score?alpha=0.2&neighbors=2", npy(array))
        assert response.status_code == 200, response.text
        assert response.json()["results"] == detector.score(x, alpha=0.2, neighbors=2).to_records()


def test_score_npy_ignores_other_query_parameters(
    server: Server, detector: Detector, digits: np.ndarray
) -> None:
    x = digits[:3]
    response = post(server, "/v1/models/digits-mlp/score?neighbors=1&trace=yes", npy(x))
    assert response.status_code == 200, response.text
    assert response.json()["results"] == detector.score(x, neighbors=1).to_records()


def test_the_orjson_answer_holds_the_values_json_dumps_wrote(
    detector: Detector, digits: np.ndarray
) -> None:
    content = {"model": "m", "version": "1", "results": detector.score(digits, neighbors=3)}
    content["results"] = content["results"].to_records()
    fast = json_response(content)
    assert fast.media_type == "application/json"
    assert json.loads(fast.body) == json.loads(json.dumps(content, allow_nan=False))


def test_records_are_plain_python_values_of_the_arrays(
    detector: Detector, digits: np.ndarray
) -> None:
    result = detector.score(digits[:40], neighbors=2)
    for i, record in enumerate(result.to_records()):
        assert type(record["prediction"]) is int and type(record["outlier"]) is bool
        assert record["confidence"] == float(result.confidence[i])
        assert record["nonconformity"] == float(result.nonconformity[i])
        assert record["p_value"] == float(result.p_value[i])
        assert record["outlier"] == bool(result.outlier[i])
        for j, layer in enumerate(record["layers"]):
            assert type(layer["soft_neighbor_score"]) is float
            assert layer["soft_neighbor_score"] == float(result.soft_neighbor_score[i, j])
            assert layer["same_class_neighbors"] == int(result.same_class_neighbors[i, j])
            assert layer["p_value"] == float(result.layer_p_value[i, j])
            assert result.neighbor_ids is not None
            assert layer["neighbors"] == [int(k) for k in result.neighbor_ids[i, j]]


def test_score_embedding_only_model(server: Server, blobs: Detector) -> None:
    e, _ = blob_embeddings(40, seed=7)
    response = post(server, "/v1/models/blobs/score", {"embeddings": {"embedding": e.tolist()}})
    assert response.status_code == 200
    expected = blobs.score_embeddings({"embedding": e}).to_records()
    assert response.json()["results"] == expected
    response = post(server, "/v1/models/blobs/score?neighbors=3", npy(e))
    assert response.status_code == 200
    expected = blobs.score_embeddings({"embedding": e}, neighbors=3).to_records()
    assert response.json()["results"] == expected


SCORE = "/v1/models/digits-mlp/score"
JSON = "application/json"
ROW = [0] * 64
ONE_OF = "body: Value error, give exactly one of 'inputs' and 'embeddings'"
NOT_FINITE = "inputs: NaN or inf (or a value beyond float32's range) in sample"
# (case, query, body (bytes: sent as is), content type, status, detail (a prefix for 'ragged'))
ERRORS: list[tuple[str, str, Any, str, int, str]] = [
    ("malformed json", "", b"{bad", JSON, 400,
     "body: not valid JSON (Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1))"),
    ("not an object", "", [1, 2], JSON, 400, "body: expected a JSON object, got list"),
    ("bad npy", "", b"garbage", NPY_TYPE, 400, "body: not a valid .npy array (no .npy header)"),
    ("pickled npy", "", npy(np.array([{"a": 1}], dtype=object)), NPY_TYPE, 400,
     "body: not a valid .npy array (object arrays are not accepted)"),
    ("npy header claims more", "", npy_header((10**9, 64)) + bytes(256), NPY_TYPE, 400,
     "body: not a valid .npy array (the header declares shape (1000000000, 64) of float32 "
     "(256000000000 bytes) but 256 bytes follow it)"),
    ("npy header claims less", "", npy_header((1, 64)) + bytes(512), NPY_TYPE, 400,
     "body: not a valid .npy array (the header declares shape (1, 64) of float32 (256 bytes) "
     "but 512 bytes follow it)"),
    ("json nested too deeply", "", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     JSON, 400, "body: JSON nested too deeply"),
    ("content type", "", b"x", "text/plain", 415,
     "header Content-Type: expected application/json or application/x-npy, got 'text/plain'"),
    ("both kinds", "", {"inputs": [ROW], "embeddings": {"fc1": [[0]]}}, JSON, 422, ONE_OF),
    ("neither", "", {"alpha": 0.1}, JSON, 422, ONE_OF),
    ("unknown field", "", {"inputs": [ROW], "beta": 1}, JSON, 422,
     "beta: Extra inputs are not permitted"),
    ("alpha range", "", {"inputs": [ROW], "alpha": 1.5}, JSON, 422,
     "alpha: Input should be less than 1"),
    ("neighbors type", "", {"inputs": [ROW], "neighbors": "x"}, JSON, 422,
     "neighbors: Input should be a valid integer, unable to parse string as an integer"),
    ("query with json", "?alpha=0.1", {"inputs": [ROW]}, JSON, 400,
     "query alpha/guarantee/delta/fdr/neighbors: with a JSON body give them in the body"),
    ("query fdr range", "?fdr=1", npy(np.zeros((1, 64))), NPY_TYPE, 422,
     "fdr: Input should be less than 1"),
    ("query alpha range", "?alpha=0", npy(np.zeros((1, 64))), NPY_TYPE, 422,
     "alpha: Input should be greater than 0"),
    ("query neighbors type", "?neighbors=x", npy(np.zeros((1, 64))), NPY_TYPE, 422,
     "neighbors: Input should be a valid integer, unable to parse string as an integer"),
    ("json utf-16", "", '{"inputs": 1}'.encode("utf-16"), JSON, 422,
     "inputs: Input should be a valid list"),
    ("empty batch", "", {"inputs": []}, JSON, 422,
     "inputs: expected a non-empty batch (B, 64), got shape (0,)"),
    ("wrong width", "", {"inputs": [[0] * 63]}, JSON, 422,
     "inputs: expected shape (B, 64), got (1, 63)"),
    ("ragged", "", {"inputs": [ROW, [0] * 63]}, JSON, 422,
     "inputs: expected a rectangular array of numbers"),
    ("strings", "", {"inputs": [["a"] * 64]}, JSON, 422,
     "inputs: expected real numbers (float32), got dtype <U1"),
    ("booleans", "", {"inputs": [[True] * 64]}, JSON, 422,
     "inputs: expected real numbers (float32), got dtype bool"),
    ("nan", "", b'{"inputs": [[NaN' + b", 0" * 63 + b"]]}", JSON, 422, f"{NOT_FINITE} 0"),
    ("inf npy", "", npy(np.full((2, 64), np.inf, dtype=np.float32)), NPY_TYPE, 422,
     f"{NOT_FINITE} 0"),
    ("beyond float32", "", {"inputs": [ROW, [1e39] * 64]}, JSON, 422, f"{NOT_FINITE} 1"),
    ("embeddings to a model", "", {"embeddings": {"fc1": [[0]]}}, JSON, 422,
     "inputs: required for this model (raw samples, not embeddings)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "query", "body", "content_type", "status", "detail"),
    ERRORS,
    ids=[e[0] for e in ERRORS],
)
def test_score_errors(
    server: Server, case: str, query: str, body: Any, content_type: str, status: int, detail: str
) -> None:
    headers = {**HEADERS, "Content-Type": content_type}
    with server.client() as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post(SCORE + query, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    got = response.json()["detail"]
    assert got.startswith(detail) if case == "ragged" else got == detail


def test_neighbors_beyond_the_reference_set_is_422(server: Server, blobs: Detector) -> None:
    e, _ = blob_embeddings(1, seed=1)
    n = blobs.reference_sizes["embedding"]
    response = post(server, f"/v1/models/blobs/score?neighbors={n + 1}", npy(e))
    assert response.status_code == 422
    assert response.json()["detail"] == f"neighbors: expected 0..{n}, got {n + 1}"


def test_embedding_model_errors(server: Server) -> None:
    cases = [
        ({"inputs": [[0] * 16]},
         "embeddings: required for this embedding-only model, not inputs"),
        ({"embeddings": {"other": [[0] * 16]}},
         "embeddings: unknown layer 'other'; expected ['embedding']"),
        ({"embeddings": {}},
         "embeddings: missing layer 'embedding'; expected ['embedding']"),
        ({"embeddings": {"embedding": [[0] * 15]}},
         "embeddings.embedding: expected shape (B, 16) with B >= 1, got (1, 15)"),
    ]  # fmt: skip
    for body, detail in cases:
        response = post(server, "/v1/models/blobs/score", body)
        assert response.status_code == 422
        assert response.json() == {"detail": detail}


def test_unknown_model_and_routes(server: Server) -> None:
    response = post(server, "/v1/models/nope/score", {"inputs": [[0] * 64]})
    assert response.status_code == 404
    assert response.json() == {
        "detail": "model 'nope': not in the repository (models: blobs, digits-mlp)"
    }
    with server.client(headers=HEADERS) as client:
        assert client.get("/v1/models/nope").status_code == 404
        assert client.get("/nothing").json() == {"detail": "Not Found"}
        assert client.get(SCORE).status_code == 405


def test_batch_larger_than_the_queue_is_413(server: Server) -> None:
    response = post(server, SCORE, npy(np.zeros((2049, 64), dtype=np.float32)))
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "inputs: 2049 samples exceed the per-model queue of 2048 samples (SNNL_MAX_QUEUE); "
        "send smaller requests"
    )


def test_openapi_documents_the_api_with_examples(server: Server) -> None:
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) >= {"/healthz", "/readyz", "/v1/models", "/v1/models/{model}",
                          "/v1/models/{model}/score", "/v1/models/{model}/evaluate"}  # fmt: skip
    body = paths["/v1/models/{model}/score"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-npy"}
    query = {
        p["name"]: p["schema"]
        for p in paths["/v1/models/{model}/score"]["post"]["parameters"]
        if p["in"] == "query"
    }
    alpha = next(kind for kind in query["alpha"]["anyOf"] if kind["type"] == "number")
    assert alpha["exclusiveMinimum"] == 0 and alpha["exclusiveMaximum"] == 1
    assert query["neighbors"]["minimum"] == 0 and query["neighbors"]["maximum"] == 1000
    example = body["application/json"]["schema"]["examples"][0]
    assert len(example["inputs"][0]) == 64
    response = spec["components"]["schemas"]["ScoreResponse"]
    assert response["examples"][0]["results"][0]["layers"]
    json.dumps(spec)


def test_evaluate_a_model(server: Server, detector: Detector, digits: np.ndarray) -> None:
    x, y = digits[:120], load_digits().target[:120]
    response = post(
        server, "/v1/models/digits-mlp/evaluate", {"inputs": x.tolist(), "labels": y.tolist()}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    EvaluateResponse.model_validate(body)
    expected = evaluate_detector(detector, y, x).to_dict()
    assert body == {"model": "digits-mlp", "version": detector.version, **expected}
    assert [layer["name"] for layer in body["layers"]] == list(detector.layers)
    by_name = post(
        server,
        "/v1/models/digits-mlp/evaluate",
        {"inputs": x.tolist(), "labels": [str(v) for v in y]},
    )
    assert by_name.json() == body


def test_evaluate_an_embedding_only_model(server: Server, blobs: Detector) -> None:
    e, y = blob_embeddings(60, seed=3)
    body = {"embeddings": {"embedding": e.tolist()}, "labels": y.tolist()}
    response = post(server, "/v1/models/blobs/evaluate", body)
    assert response.status_code == 200, response.text
    expected = evaluate_detector(blobs, y, {"embedding": e}).to_dict()
    assert response.json() == {"model": "blobs", "version": blobs.version, **expected}


def test_evaluate_errors(server: Server) -> None:
    path = "/v1/models/digits-mlp/evaluate"
    cases: list[tuple[Any, int, str]] = [
        ({"inputs": [ROW, ROW, ROW], "labels": [0, 1]}, 422,
         "labels: expected 3 labels (one per sample), got 2"),
        ({"inputs": [ROW, ROW], "labels": [0, "x"]}, 422,
         f"labels.1: unknown class name 'x'; classes {[str(i) for i in range(10)]}"),
        ({"inputs": [ROW, ROW], "labels": [0, 10]}, 422, "labels.1: class index 10 outside 0..9"),
        ({"inputs": [ROW], "labels": [0]}, 422,
         "labels: List should have at least 2 items after validation, not 1"),
        (npy(np.zeros((2, 64))), 415, "header Content-Type: evaluate takes application/json"),
        ({"inputs": [ROW] * 2049, "labels": [0] * 2049}, 413,
         "inputs: 2049 samples exceed the per-model evaluate limit of 2048 samples "
         "(SNNL_MAX_QUEUE); send smaller requests"),
    ]  # fmt: skip
    for body, status, detail in cases:
        response = post(server, path, body)
        assert response.status_code == status, response.text
        assert response.json() == {"detail": detail}
