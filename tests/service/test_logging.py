"""One JSON log line per request with a request id echoed in X-Request-ID; no input data."""

from __future__ import annotations

import json
import logging
import time

from _server import API_KEY, HEADERS, Server

from service.logging import JsonFormatter

SCORE = "/v1/models/digits-mlp/score"


def line_of(server: Server, request_id: str) -> dict[str, object]:
    """The log line of ``request_id`` (waits briefly: it is written after the response)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in server.log_lines() if request_id in line]
        if lines:
            assert len(lines) == 1
            return lines[0]
        time.sleep(0.02)
    raise AssertionError(f"no log line for {request_id}")


def test_a_score_request_logs_one_json_line_without_its_data(server: Server) -> None:
    secret_value = 13.371337
    with server.client(headers=HEADERS) as client:
        response = client.post(SCORE, json={"inputs": [[secret_value] * 64] * 3})
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    assert len(request_id) == 32
    line = line_of(server, request_id)
    assert line["message"] == "request"
    assert line["level"] == "INFO"
    assert (line["method"], line["endpoint"], line["model"]) == ("POST", "score", "digits-mlp")
    assert (line["batch_size"], line["status"]) == (3, 200)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
    assert "13.37" not in server.log.read_text()
    assert API_KEY not in server.log.read_text()


def test_the_client_request_id_is_kept_and_errors_are_logged(server: Server) -> None:
    with server.client(headers={**HEADERS, "X-Request-ID": "client-id.42"}) as client:
        response = client.post(SCORE, json={"inputs": [[0] * 5]})
    assert response.status_code == 422
    assert response.headers["X-Request-ID"] == "client-id.42"
    line = line_of(server, "client-id.42")
    assert (line["status"], line["endpoint"], line["batch_size"]) == (422, "score", None)


def test_an_unsafe_client_request_id_is_replaced(server: Server) -> None:
    with server.client() as client:
        response = client.get("/healthz", headers={"X-Request-ID": 'x" injected'})
    assert response.headers["X-Request-ID"] != 'x" injected'
    assert len(response.headers["X-Request-ID"]) == 32


def test_json_formatter_fields() -> None:
    record = logging.LogRecord(
        "snnl.service", logging.INFO, __file__, 1, "hello %s", ("you",), None
    )
    record.fields = {"model": "m", "status": 200}
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello you"
    assert (line["level"], line["logger"], line["model"], line["status"]) == (
        "INFO",
        "snnl.service",
        "m",
        200,
    )
    assert line["time"].endswith("+00:00")
