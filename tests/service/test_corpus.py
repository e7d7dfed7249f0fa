"""A hostile corpus against the real server: each request gets its 4xx naming the field (or, where
the data is legitimate after all, the correct answer), the process stays healthy, and the next
valid request is answered correctly. Shapes, dtypes, limits and .npy basics that tests/service/
test_routes.py and test_security.py already check are not repeated here."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from _server import HEADERS, Server

from snnl.model.detector import Detector

SCORE = "/v1/models/digits-mlp/score"
JSON = "application/json"
NPY = "application/x-npy"
ROW = [0.0] * 64
FIELDS = ("body", "inputs", "embeddings", "labels", "alpha", "neighbors", "model", "header")


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_with_header(header: bytes, data: bytes) -> bytes:
    """A version 1.0 .npy file with the header dict text ``header`` (padded as numpy does)."""
    padded = header + b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded + data


SAMPLES = np.random.default_rng(0).random((3, 64)).astype(np.float32)
HUGE_INT = b"1" + b"0" * 5000  # past Python's 4300-digit limit for int()

# (case, path, body: bytes as is / else JSON, content type, status, detail prefix)
REFUSED: list[tuple[str, str, Any, str, int, str]] = [
    ("integer of 5000 digits", SCORE, b'{"inputs": [[' + HUGE_INT + b"]]}", JSON, 400,
     "body: not valid JSON (Exceeds the limit (4300 digits)"),
    ("integer of 400 digits", SCORE, b'{"inputs": [[1' + b"0" * 400 + b", 0" * 63 + b"]]}", JSON,
     422,
     "inputs: expected real numbers (float32), got dtype object"),
    ("1e308", SCORE, {"inputs": [[1e308] * 64]}, JSON, 422, "inputs: NaN or inf"),
    ("-Infinity literal", SCORE, b'{"inputs": [[-Infinity' + b", 0" * 63 + b"]]}", JSON, 422,
     "inputs: NaN or inf"),
    ("null in a sample", SCORE, {"inputs": [[*ROW[:63], None]]}, JSON, 422,
     "inputs: expected real numbers (float32), got dtype object"),
    ("objects in a sample", SCORE, {"inputs": [[{"a": 1}] * 64]}, JSON, 422,
     "inputs: expected real numbers (float32)"),
    ("numbers as strings", SCORE, {"inputs": [["1.0"] * 64]}, JSON, 422,
     "inputs: expected real numbers (float32), got dtype <U3"),
    ("mixed strings and numbers", SCORE, {"inputs": [[1, "a", True, None] * 16]}, JSON, 422,
     "inputs: expected real numbers (float32)"),
    ("too deep samples", SCORE, {"inputs": [[[[[0.0]]]] * 64]}, JSON, 422,
     "inputs: expected shape (B, 64), got (1, 64, 1, 1, 1)"),
    ("inputs a number", SCORE, {"inputs": 3}, JSON, 422, "inputs: Input should be a valid list"),
    ("inputs a string", SCORE, {"inputs": "[[0]]"}, JSON, 422,
     "inputs: Input should be a valid list"),
    ("empty sample", SCORE, {"inputs": [[]]}, JSON, 422, "inputs: expected"),
    ("ragged embeddings", "/v1/models/blobs/score",
     {"embeddings": {"embedding": [[0.0] * 16, [0.0] * 15]}}, JSON, 422, "embeddings"),
    ("empty embeddings batch", "/v1/models/blobs/score", {"embeddings": {"embedding": []}}, JSON,
     422, "embeddings.embedding: expected shape (B, 16) with B >= 1"),
    ("layer named ../x", "/v1/models/blobs/score", {"embeddings": {"../x": [[0.0] * 16]}}, JSON,
     422, "embeddings: unknown layer '../x'"),
    ("alpha NaN", SCORE, b'{"inputs": [[0]], "alpha": NaN}', JSON, 422, "alpha:"),
    ("neighbors 10^30", SCORE, {"inputs": [ROW], "neighbors": 10**30}, JSON, 422, "neighbors:"),
    ("not UTF-8", SCORE, b'{"inputs": "\xff\xfe"}', JSON, 400, "body: not valid JSON"),
    ("empty body", SCORE, b"", JSON, 400, "body: not valid JSON"),
    ("duplicate keys, last wrong", SCORE, b'{"inputs": [[0]], "inputs": 1}', JSON, 422,
     "inputs: Input should be a valid list"),
    ("label 10^30", "/v1/models/digits-mlp/evaluate",
     {"inputs": [ROW, ROW], "labels": [10**30, 1]}, JSON, 422, "labels.0"),
    ("label null", "/v1/models/digits-mlp/evaluate", {"inputs": [ROW, ROW], "labels": [None, 1]},
     JSON, 422, "labels.0"),
    ("labels too few", "/v1/models/digits-mlp/evaluate", {"inputs": [ROW, ROW, ROW],
     "labels": [0, 1]}, JSON, 422, "labels: expected 3 labels"),
    # .npy: truncated, lying and hostile headers; object dtypes are refused without unpickling
    ("npy truncated header", SCORE, npy(SAMPLES)[:20], NPY, 400,
     "body: not a valid .npy array (EOF"),
    ("npy truncated data", SCORE, npy(SAMPLES)[:-10], NPY, 400,
     "body: not a valid .npy array (the header declares shape (3, 64)"),
    ("npy version 3", SCORE, b"\x93NUMPY\x03\x00" + npy(SAMPLES)[8:], NPY, 400,
     "body: not a valid .npy array (format version 3.0"),
    ("npy negative shape", SCORE,
     npy_with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 64), }", bytes(256)),
     NPY, 400, "body: not a valid .npy array"),
    ("npy header with code", SCORE,
     npy_with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 64), "
                     b"'x': __import__('os').system('false')}", bytes(256)), NPY, 400,
     "body: not a valid .npy array"),
    ("npy structured with an object field", SCORE,
     npy(np.zeros(2, dtype=[("a", "<f4"), ("b", "O")])), NPY, 400,
     "body: not a valid .npy array (object arrays are not accepted)"),
    ("npy complex", SCORE, npy(SAMPLES.astype(np.complex64)), NPY, 422,
     "inputs: expected real numbers (float32), got dtype complex64"),
    ("npy 0-d", SCORE, npy(np.float32(1)), NPY, 422, "inputs: expected a non-empty batch"),
    ("npy empty batch", SCORE, npy(np.zeros((0, 64), np.float32)), NPY, 422,
     "inputs: expected a non-empty batch"),
    # model names: traversal and encoded slashes never reach the file system
    ("../ in the model", "/v1/models/../score", {"inputs": [ROW]}, JSON, 404, ""),
    ("%2e%2e as the model", "/v1/models/%2e%2e/score", {"inputs": [ROW]}, JSON, 404,
     "model '..': not in the repository"),
    ("encoded slashes", "/v1/models/..%2F..%2Fetc%2Fpasswd/score", {"inputs": [ROW]}, JSON, 404,
     ""),
    ("NUL in the model", "/v1/models/digits-mlp%00/score", {"inputs": [ROW]}, JSON, 404,
     "model 'digits-mlp\\x00': not in the repository"),
    ("10 000-character model", "/v1/models/" + "a" * 10_000 + "/score", {"inputs": [ROW]}, JSON,
     404, "model 'aaaa"),
]  # fmt: skip

# Hostile-looking but legitimate: the answer must equal the detector's on the same float32 rows.
ACCEPTED: list[tuple[str, bytes, str]] = [
    ("npy Fortran order", npy(np.asfortranarray(SAMPLES)), NPY),
    ("npy big-endian", npy(SAMPLES.astype(">f4")), NPY),
    ("npy float64", npy(SAMPLES.astype(np.float64)), NPY),
    (
        "JSON in UTF-16 (detected as JSON allows)",
        json.dumps({"inputs": [ROW]}).encode("utf-16"),
        JSON,
    ),
    ("JSON subnormal numbers", json.dumps({"inputs": [[5e-324] * 64]}).encode(), JSON),
]


@pytest.fixture(scope="module")
def detector(repository: Path) -> Detector:
    return Detector.load(repository, "digits-mlp", device="cpu", threads=1)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client(headers=HEADERS) as http:
        yield http


def still_healthy(client: httpx.Client, detector: Detector) -> None:
    """/healthz is 200 and a valid request gets the detector's answer."""
    assert client.get("/healthz").status_code == 200
    response = client.post(SCORE, json={"inputs": SAMPLES.tolist()})
    assert response.status_code == 200
    assert response.json()["results"] == detector.score(SAMPLES).to_records()


@pytest.mark.parametrize(
    ("case", "path", "body", "content_type", "status", "detail"), REFUSED,
    ids=[c[0] for c in REFUSED],
)  # fmt: skip
def test_a_hostile_request_gets_its_4xx_naming_the_field(
    client: httpx.Client, detector: Detector, case: str, path: str, body: Any,
    content_type: str, status: int, detail: str,
) -> None:  # fmt: skip
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=content, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    got = response.json()["detail"]
    assert got.startswith(detail), got
    if detail:
        assert got.split(":")[0].split(".")[0].split(" ")[0] in FIELDS, got
    still_healthy(client, detector)


@pytest.mark.parametrize(("case", "body", "content_type"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_a_legitimate_oddity_gets_the_correct_answer(
    client: httpx.Client, detector: Detector, case: str, body: bytes, content_type: str
) -> None:
    response = client.post(SCORE, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    if content_type == NPY:
        rows = np.load(io.BytesIO(body)).astype(np.float32).reshape(-1, 64)
    else:
        rows = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
    assert response.json()["results"] == detector.score(rows).to_records()
    still_healthy(client, detector)


def test_a_header_flood_leaves_the_process_healthy(
    client: httpx.Client, detector: Detector
) -> None:
    flood = {f"x-flood-{i}": "v" * 100 for i in range(2000)}  # 2000 headers, ~230 KB
    response = client.get("/healthz", headers=flood)
    assert response.status_code in (200, 400, 431)
    still_healthy(client, detector)


def test_a_body_sent_slowly_is_answered_and_blocks_no_one(
    server: Server, client: httpx.Client, detector: Detector
) -> None:
    """A body trickling in over ~2 s: other clients are served meanwhile, then it is answered."""
    address = urlsplit(server.url)
    body = json.dumps({"inputs": SAMPLES.tolist()}).encode()
    head = (
        f"POST {SCORE} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: {HEADERS['Authorization']}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((address.hostname, address.port), timeout=60) as slow:
        slow.sendall(head)
        pieces = [
            body[i : i + len(body) // 20 + 1] for i in range(0, len(body), len(body) // 20 + 1)
        ]
        for piece in pieces:
            slow.sendall(piece)
            still_healthy(client, detector)  # answered while the slow body is incomplete
            time.sleep(0.1)
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 OK"
    results = json.loads(rest.partition(b"\r\n\r\n")[2])["results"]
    assert results == detector.score(SAMPLES).to_records()
