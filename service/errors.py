"""Exceptions mapped to HTTP status codes, all answered with one JSON body ``{"detail": str}``.

The detail names the field (``inputs``, ``alpha``, ``model``, the body, a header) and what was
expected. ``snnl.errors.InputError`` (the data does not fit the model) is a 422,
``snnl.errors.UnavailableError`` (a shard of the reference is down) a 503. Anything else
unexpected becomes a 500 with a generic detail in ``service.logging.RequestLogMiddleware`` (the
cause goes to the log, not to the client).
"""

from __future__ import annotations

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


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, framework ones included, as ``{"detail": str}`` with its status."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, err: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status, headers=err.headers)

    @app.exception_handler(InputError)
    async def _input_error(_: Request, err: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(UnavailableError)
    async def _unavailable(_: Request, err: UnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        detail = f"{_field(tuple(first['loc']))}: {first['msg']}"
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(err.detail)}, status_code=err.status_code, headers=err.headers
        )
