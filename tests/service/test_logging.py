"""One JSON log line per request with a request id echoed in X-Request-ID; no input data."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
from _server import API_KEY, HEADERS, Server
from starlette.types import Receive, Scope, Send

from service.http.logging import JsonFormatter, RequestLogMiddleware

SCORE = "/v1/models/digits-mlp/score"


def line_of(server: Server, request_id: str) -> dict[str, object]:
    """The log line of ``request_id`` (it is written just after the response is sent)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in server.log_lines() if request_id in line]
        if lines:
            assert len(lines) == 1
            return lines[0]
        time.sleep(0.02)
    raise AssertionError(f"no log line for {request_id}")


def test_a_score_request_logs_one_json_line_without_its_data(server: Server) -> None:
    # Durations are logged with three decimals, so "13.3713" in the log can only be the data.
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
    assert "13.3713" not in server.log.read_text()  # also as float32 (13.37133693...)
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


def test_an_unexpected_error_is_a_500_that_keeps_its_request_id() -> None:
    """A bug in a route: a generic 500 with the request id, the traceback only in the log."""

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    observed: list[tuple[str, str, int]] = []
    app = RequestLogMiddleware(
        broken, observe=lambda m, e, code, _: observed.append((m, e, code)), known_model=bool
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("snnl.service")
    saved = logger.level, logger.handlers[:]
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/v1/models/x", headers={"X-Request-ID": "id-1"})

    try:
        response = asyncio.run(get())
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert response.headers["X-Request-ID"] == "id-1"
    assert [(r.getMessage(), r.fields["request_id"]) for r in records] == [  # type: ignore[attr-defined]
        ("unhandled error", "id-1"),
        ("request", "id-1"),
    ]
    assert "a bug" in JsonFormatter().format(records[0])
    assert observed == [("", "other", 500)]
