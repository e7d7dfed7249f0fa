"""API keys (constant-time comparison) and the request body limit (enforced while reading)."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.security import APIKeyHeader, HTTPBearer

from service.errors import MalformedRequest, TooLarge, Unauthorized

BEARER = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="Header 'Authorization: Bearer KEY'."
)
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="api_key", description="Header 'X-API-Key'."
)
"""The two ways to present a key, as OpenAPI security schemes (either one is enough)."""


def presented_key(request: Request) -> bytes | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; None when absent."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode()
    key = request.headers.get("x-api-key")
    return key.encode() if key else None


def check_api_key(request: Request, keys: tuple[bytes, ...]) -> None:
    """Refuse the request unless it presents one of ``keys`` (no keys configured: open).

    Every configured key is compared with ``hmac.compare_digest``, without stopping at a match,
    so the time taken does not tell which key or how much of it matched.
    """
    if not keys:
        return
    key = presented_key(request)
    if key is None:
        raise Unauthorized(
            "API key required: send header 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
        )
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(key, candidate)
    if not matched:
        raise Unauthorized("API key not accepted (header 'Authorization' or 'X-API-Key')")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes.

    A declared ``Content-Length`` above the limit is refused before reading; a chunked body is
    counted while it streams in, so a client can never make the server buffer more than ``limit``.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError as err:
            raise MalformedRequest(f"header Content-Length: not an integer: {declared!r}") from err
        if length > limit:
            raise TooLarge(f"body: {length} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body: more than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
