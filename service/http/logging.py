"""Structured logs: one JSON line per request (never any input data) and a request id header.

The request id is the client's ``X-Request-ID`` when it is a short token, otherwise a new one;
it is echoed in the ``X-Request-ID`` response header and names the request's log line.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from prometheus_client import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.errors import error_response

logger = logging.getLogger("snnl.service")

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode()
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_QUIET_ENDPOINTS = frozenset({"healthz", "readyz", "metrics"})
# New ids: a random per-process prefix and a counter (32 hex digits, unique across replicas,
# without a system call per request as uuid4 makes).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)

RequestObserver = Callable[[str, str, int, float], None]
"""``(model, endpoint, status, seconds)`` called once per finished request."""


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object: time, level, logger, message and its ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str) -> None:
    """Send the service's logs to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's own log lines (start-up, errors) as JSON on stderr too; its access log is off."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False}},
    }


class RequestLogMiddleware:
    """Pure ASGI middleware, outermost: request id, in-flight gauge, one log line and the request
    metrics per HTTP request, and a generic 500 for an unexpected error.

    The model label is the path's ``{model}`` only when ``known_model`` accepts it (a client
    cannot create label values); the endpoint label is the matched route's name. Routes put the
    number of samples in ``request.state.batch_size``. ``in_flight`` counts the requests being
    handled (what an autoscaler on load reads).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        observe: RequestObserver,
        known_model: Callable[[str], bool],
        in_flight: Gauge | None = None,
    ) -> None:
        self.app = app
        self.observe = observe
        self.known_model = known_model
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER_BYTES, request_id.encode()),
                ]
            await send(message)

        if self.in_flight is not None:
            self.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug, not a bad request: the cause goes to the log, the client gets a generic 500
            # that still carries its request id.
            logger.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if started:
                raise
            error = error_response(scope["path"], "internal error", 500)
            await error(scope, receive, send_with_id)
        finally:
            if self.in_flight is not None:
                self.in_flight.dec()
            seconds = time.perf_counter() - start
            route = scope.get("route")
            endpoint = getattr(route, "name", None) or "other"
            model = scope.get("path_params", {}).get("model", "")
            model = model if self.known_model(model) else ""
            self.observe(model, endpoint, status, seconds)
            level = logging.DEBUG if endpoint in _QUIET_ENDPOINTS else logging.INFO
            if logger.isEnabledFor(level):
                fields = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "endpoint": endpoint,
                    "model": model,
                    "batch_size": state.get("batch_size"),
                    "status": status,
                    "duration_ms": round(seconds * 1000.0, 3),
                }
                logger.log(level, "request", extra={"fields": fields})


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER_BYTES:
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
