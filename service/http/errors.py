"""Exceptions mapped to HTTP status codes, all answered with one JSON body ``{"detail": str}``
(``{"error": str}`` on the Open Inference Protocol's ``/v2`` paths, as its clients expect).

The detail names the field (``inputs``, ``alpha``, ``model``, the body, a header) and what was
expected. ``snnl.errors.InputError`` (the data does not fit the model) is a 422,
``snnl.errors.UnavailableError`` (a shard of the reference is down) a 503. Anything else
unexpected becomes a 500 with a generic detail in ``service.http.logging.RequestLogMiddleware``
(the cause goes to the log, not to the client).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from snnl.errors import InputError, UnavailableError


class ServiceError(Exception):
    """An error answered with ``status`` and ``{"detail": detail}``."""

    status: int = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class MalformedRequest(ServiceError):
    """The body cannot be parsed: not JSON, not an .npy array, wrong content type."""

    status = 400


class Unauthorized(ServiceError):
    """No API key or a wrong one (only when keys are configured)."""

    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    """An operation that is off in this configuration (admin endpoints without API keys)."""

    status = 403


class UnknownModel(ServiceError):
    """The path names a model that the repository does not hold."""

    status = 404


class TooLarge(ServiceError):
    """The body exceeds ``max_request_bytes`` or the batch can never fit the queue."""

    status = 413


class UnsupportedMediaType(ServiceError):
    """A Content-Type other than JSON or ``application/x-npy``."""

    status = 415


class InvalidInput(ServiceError):
    """Parsed, but the wrong shape, dtype, NaN/inf, empty, or out of range."""

    status = 422


class Unavailable(ServiceError):
    """Overloaded (queue full, timed out) or not ready; clients may retry after ``retry_after``."""

    status = 503

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


V2_PREFIX = "/v2"


def error_response(
    path: str, detail: str, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``{"error": detail}`` under ``/v2`` (as v2 clients expect), else ``{"detail": detail}``."""
    key = "error" if path == V2_PREFIX or path.startswith(V2_PREFIX + "/") else "detail"
    return JSONResponse({key: detail}, status_code=status, headers=headers)


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def known_error(path: str, err: Exception) -> JSONResponse | None:
    """The answer to ``err`` raised while serving ``path`` when it is one of the service's
    errors (``ServiceError``, ``InputError`` 422, ``UnavailableError`` 503); None otherwise."""
    if isinstance(err, ServiceError):
        return error_response(path, err.detail, err.status, err.headers)
    if isinstance(err, InputError):
        return error_response(path, str(err), 422)
    if isinstance(err, UnavailableError):
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, framework ones included, with its status and ``error_response``."""

    async def _known_error(request: Request, err: Exception) -> JSONResponse:
        response = known_error(request.url.path, err)
        assert response is not None  # registered for the known error types only
        return response

    for kind in (ServiceError, InputError, UnavailableError):
        app.add_exception_handler(kind, _known_error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        detail = f"{_field(tuple(first['loc']))}: {first['msg']}"
        return error_response(request.url.path, detail, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(request.url.path, str(err.detail), err.status_code, err.headers)
