"""API keys and the request body limit, through the real server (conftest.py)."""

from __future__ import annotations

import json
import socket

import pytest
from _server import API_KEY, HEADERS, MAX_REQUEST_BYTES, Server

SCORE = "/v1/models/digits-mlp/score"
BODY = {"inputs": [[0] * 64]}
REQUIRED = "API key required: send header 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
NOT_ACCEPTED = "API key not accepted (header 'Authorization' or 'X-API-Key')"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, REQUIRED),
        ({"Authorization": "Bearer wrong-key-0123456789"}, NOT_ACCEPTED),
        ({"X-API-Key": API_KEY[:-1]}, NOT_ACCEPTED),
        ({"Authorization": f"Basic {API_KEY}"}, REQUIRED),
    ],
    ids=["none", "wrong bearer", "prefix of the key", "other scheme"],
)  # fmt: skip
def test_missing_or_wrong_key_is_401(server: Server, headers: dict[str, str], detail: str) -> None:
    with server.client() as client:
        for response in (
            client.post(SCORE, json=BODY, headers=headers),
            client.get("/v1/models", headers=headers),
            client.get("/v1/models/nope", headers=headers),  # no model names leak without a key
        ):
            assert response.status_code == 401
            assert response.json() == {"detail": detail}
            assert response.headers["WWW-Authenticate"] == "Bearer"


def test_either_header_carries_the_key(server: Server) -> None:
    with server.client() as client:
        assert client.post(SCORE, json=BODY, headers=HEADERS).status_code == 200
        assert client.post(SCORE, json=BODY, headers={"X-API-Key": API_KEY}).status_code == 200


def test_probes_and_metrics_need_no_key(server: Server) -> None:
    with server.client() as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200


def test_a_declared_body_over_the_limit_is_413_before_reading(server: Server) -> None:
    body = b"x" * (MAX_REQUEST_BYTES + 1)
    with server.client(headers=HEADERS) as client:
        response = client.post(SCORE, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    limit = MAX_REQUEST_BYTES
    assert response.json() == {
        "detail": f"body: {limit + 1} bytes exceeds the limit of {limit} bytes"
    }


def test_a_streamed_body_is_refused_at_the_limit_before_it_ends(server: Server) -> None:
    """Chunked upload (no Content-Length) that never ends: the server stops reading at the limit
    and answers 413 while the client is still sending, so it never buffers more than the limit."""
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        f"POST {SCORE} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"  # 64 KiB per chunk, no final 0-chunk
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        for _ in range(MAX_REQUEST_BYTES // 0x10000 + 1):
            sock.sendall(chunk)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
            data = sock.recv(65536)
            assert data, f"connection closed without a reply: {reply!r}"
            reply += data
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    body = rest.partition(b"\r\n\r\n")[2]
    assert json.loads(body) == {"detail": f"body: more than the limit of {MAX_REQUEST_BYTES} bytes"}


def test_a_body_at_the_limit_is_read(server: Server) -> None:
    body = b'{"inputs": [[' + b",".join([b"0"] * 64) + b"]]}"
    body += b" " * (MAX_REQUEST_BYTES - len(body))
    with server.client(headers=HEADERS) as client:
        response = client.post(SCORE, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
