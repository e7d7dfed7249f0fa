"""Payload limits: the request body, read within ``max_request_bytes``, also when compressed.

``read_body`` is how a route reads its body. ``RequestDecompressionMiddleware`` (pure ASGI)
inflates a body sent with ``Content-Encoding: gzip`` (or ``deflate``, the zlib format, as
tritonclient sends it) before the route reads it, never to more than the limit. Responses are
compressed by ``service.http.gzip``.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.errors import MalformedRequest, TooLarge, error_response

# zlib's wbits: 16 + 15 reads the gzip format, 15 the zlib format ("Content-Encoding: deflate").
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RequestDecompressionMiddleware:
    """Inflate ``Content-Encoding: gzip | deflate`` request bodies, bounded by ``limit`` bytes.

    The compressed body may hold at most ``limit`` bytes and inflates to at most ``limit``
    bytes: zlib is asked for ``limit + 1`` bytes of output, so a gzip bomb costs at most that
    much memory before it is refused with 413. Other encodings get 415 naming the accepted ones,
    a corrupt or truncated stream 400. The route then sees the plain body, with its
    ``Content-Length`` and without ``Content-Encoding``.
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        encoding = _content_encoding(scope) if scope["type"] == "http" else None
        if encoding is None or encoding == "identity":
            await self.app(scope, receive, send)
            return
        try:
            body = self._inflate(encoding, await self._read(receive))
        except _Refused as refused:
            response = error_response(scope["path"], refused.detail, refused.status)
            await response(scope, receive, send)
            return
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name not in (b"content-encoding", b"content-length")
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for the disconnect
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, "body: the client disconnected before sending all of it")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise _Refused(413, f"body: more than the limit of {self.limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _inflate(self, encoding: str, data: bytes) -> bytes:
        wbits = _WBITS.get(encoding)
        if wbits is None:
            raise _Refused(
                415,
                f"header Content-Encoding: expected gzip, deflate or identity, got {encoding!r}",
            )
        inflater = zlib.decompressobj(wbits)
        try:
            body = inflater.decompress(data, self.limit + 1)
        except zlib.error as err:
            raise _Refused(400, f"body: not valid {encoding} data ({err})") from err
        if len(body) > self.limit or inflater.unconsumed_tail:
            raise _Refused(
                413, f"body: inflates to more than the limit of {self.limit} bytes ({encoding})"
            )
        if not inflater.eof:
            raise _Refused(400, f"body: truncated {encoding} data")
        return body


def _content_encoding(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-encoding":
            return value.decode("latin-1").strip().lower()
    return None


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
