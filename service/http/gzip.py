"""Gzip responses for the clients that accept it; the others' requests pass straight through.

Starlette's ``GZipMiddleware`` compresses (responses of at least ``minimum_size`` bytes, as
``SNNL_GZIP_MIN_BYTES`` says). For a client without ``Accept-Encoding: gzip`` it would still build
a responder per request that re-normalizes its excluded content types and holds back the
response start (about a tenth of the event loop's time per 1-sample score, docs/performance.md);
here such a request goes on untouched, and its response gets ``Vary: Accept-Encoding`` (the
representation depends on that header whatever its size).
"""

from __future__ import annotations

from starlette.middleware.gzip import GZipMiddleware as StarletteGZip
from starlette.types import ASGIApp, Message, Receive, Scope, Send

VARY = (b"vary", b"Accept-Encoding")


class GZipMiddleware:
    """Pure ASGI: gzip for clients that accept it (Starlette's), pass-through for the others."""

    def __init__(self, app: ASGIApp, *, minimum_size: int) -> None:
        self.app = app
        self.gzip = StarletteGZip(app, minimum_size=minimum_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif _accepts_gzip(scope):
            await self.gzip(scope, receive, send)
        else:

            async def send_with_vary(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), VARY]
                await send(message)

            await self.app(scope, receive, send_with_vary)


def _accepts_gzip(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept-encoding":
            return b"gzip" in value
    return False
